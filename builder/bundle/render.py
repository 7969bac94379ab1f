"""Jinja2 rendering of templates/: StrictUndefined, values quoted by filters."""
from __future__ import annotations

import json
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def _py(value) -> str:
    """A Python literal for value (str, int, float, bool, None, list, dict)."""
    return repr(value)


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
    env.filters.update(py=_py, comment=_comment, json=lambda v: json.dumps(v, sort_keys=True))
    return env.get_template(name).render(**values)
