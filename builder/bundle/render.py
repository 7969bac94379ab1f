"""Jinja2 rendering of templates/: StrictUndefined, values quoted by filters."""
from __future__ import annotations

import importlib.resources
import json
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


def _dq(value) -> str:
    """A double-quoted Dockerfile string (LABEL, ENV): JSON escapes, and `$` escaped so that
    the builder does not substitute variables into it."""
    return json.dumps(str(value), ensure_ascii=False).replace("$", "\\$")


def _yaml_str(value) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(str(value), ensure_ascii=False)


def _sh(value) -> str:
    """A POSIX shell word (single-quoted where needed)."""
    import shlex

    return shlex.quote(str(value))


def _json(value) -> str:
    """JSON (Dockerfile exec-form arrays)."""
    return json.dumps(value)


def _image_ref(value) -> str:
    """An image reference, refused if it could break out of its FROM line."""
    text = str(value)
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        raise ValueError(f"not an image reference: {text!r}")
    return text


def render(name: str, **values) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(comment=_comment, dq=_dq, yaml_str=_yaml_str, json=_json, image_ref=_image_ref, sh=_sh)
    return env.get_template(name).render(**values)
