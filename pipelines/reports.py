"""HTML reports rendered from Jinja2 templates in `pipelines/templates/` (autoescaped), never from f-strings.

A module that renders a report names its template in a module-level constant ending in `.j2`
(`TEMPLATE = "dedup_clusters.html.j2"`): `llmops dvc-deps` reads those constants, so a stage whose report
template changes is rerun by DVC like one whose code changed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,  # a misspelled field fails the stage instead of rendering empty
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["escape_html"] = escape_html
    return env


def escape_html(value: Any):
    """The standard library's escaping (`&#x27;`, `&quot;`), where Jinja's own writes `&#39;`, `&#34;`: reports
    stay byte-identical to those written before the templates, so DVC does not see a change that is none."""
    import html

    from markupsafe import Markup

    return Markup(html.escape(str(value)))


def render(template: str, **context: Any) -> str:
    """The named template of `pipelines/templates/` rendered with `context`."""
    return _environment().get_template(template).render(**context)
