"""Jinja2 rendering of templates/: StrictUndefined, values quoted by filters."""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def _templates_dir() -> Path:
    """The templates/ folder of this installation.

    From a wheel (`pip install .`): builder/templates/, package data (pyproject.toml maps the
    package builder.templates to the top-level templates/). From a checkout on sys.path or an
    editable install, builder/ is the repository's own folder: templates/ beside it."""
    installed = importlib.resources.files("builder") / "templates"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "templates"


TEMPLATES = _templates_dir()


def _comment(value) -> str:
    """Safe inside a `#` comment: one line."""
    return " ".join(str(value).split())


def render(name: str, **values) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(comment=_comment)
    return env.get_template(name).render(**values)
