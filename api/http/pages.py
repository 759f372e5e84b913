"""The browser pages' HTML, from the Jinja2 templates in ``api/http/templates/`` (autoescaped).

Every value a template prints is HTML-escaped unless it is markup the templates made themselves,
so a patient name, a query or a ``next`` URL cannot become markup. The page data block is
``tojson``: JSON with ``<``, ``>``, ``&`` and ``'`` as ``\\u`` escapes, so nothing in it can
close its ``<script>`` element.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from api.http.assets import asset_url
from schemas.policy import Action, may

TEMPLATES = Path(__file__).parent / "templates"

_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    undefined=StrictUndefined,  # a value the route forgot is an error, not an empty string
    auto_reload=False,
)
# the page data as the script reads it: Cyrillic as is, dates and the like as their text
# the top bar offers the pages the user's role may open
_environment.globals["may"] = lambda role, action: may(role, Action(action))
_environment.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "default": str}
# what the top bar offers a role: ``may(user.role, "audit")`` (the policy table's own answer)
_environment.globals["may"] = lambda role, action: may(role, Action(action))


def _moment(value: Any) -> str:
    """A time as the audit pages show it: UTC to the second (milliseconds when they tell events apart)."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] + " UTC"
    return "" if value is None else str(value)


_environment.filters["moment"] = _moment
# ``asset("cami.js")``: the asset's fingerprinted URL (cached for a year; see api.http.assets)
_environment.globals["asset"] = asset_url


def render(template: str, /, **context: Any) -> str:
    """The template named ``template`` rendered with ``context`` (which may hold a ``name``)."""
    return _environment.get_template(template).render(**context)
