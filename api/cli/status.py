"""``cami status``: what each backend holds (:mod:`api.state`). When the embedded warehouse is
held by a running ``cami serve`` (one process may open it), the same state is asked of that
server over HTTP (``GET /api/status``, with the command line's local token) instead of failing."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from api.bootstrap import bootstrap
from api.cli.output import out, print_json
from api.cli.remote import ask_running_serve
from api.config import Settings
from api.state import archive_state
from projections.warehouse import WarehouseLocked


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show each backend and what it holds")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_status)


def local_state(settings: Settings) -> dict[str, Any]:
    """The state read from the backends by this process."""
    archive = bootstrap(settings)
    try:
        return archive_state(archive)
    finally:
        archive.close()


def current_state(settings: Settings) -> dict[str, Any]:
    """The state from the backends, or from the running server when it holds the warehouse."""
    try:
        return local_state(settings)
    except WarehouseLocked as exc:
        state, url = ask_running_serve(settings, "/api/status", held=exc)
        sys.stderr.write(f"(the embedded warehouse is held by the running cami serve: asked it at {url})\n")
        return dict(state)


def cmd_status(args: argparse.Namespace) -> int:
    state = current_state(Settings.from_env())
    if args.json:
        print_json(state)
        return 0
    render_state(state)
    return 0


#: how each state of a backend is shown
_SHOWN = {"ok": ("ok", "green"), "degraded": ("DEGRADED", "yellow"), "down": ("DOWN", "red")}


def render_health(state: dict[str, Any]) -> None:
    """One line per backend that is not ok (a broker or drive gone, a backend unreachable), so an
    operator sees what is degraded before the tables."""
    for part, label in (
        ("event_log", "event log"),
        ("blobs", "blob store"),
        ("warehouse", "ClickHouse"),
        ("query_store", "query store"),
    ):
        health = state.get("health", {}).get(part)
        if not health or health["status"] == "ok":
            continue
        shown, style = _SHOWN.get(health["status"], (health["status"], "red"))
        line = Text(f"{label}: ", style="bold")
        line.append(shown, style=f"bold {style}")
        line.append(f" - {health['detail']}")
        out.print(line)


def render_state(state: dict[str, Any]) -> None:
    render_health(state)
    table = Table(title="CAMI backbone")
    table.add_column("part")
    table.add_column("backend")
    table.add_column("where")
    table.add_column("state")
    table.add_column("holds")
    settings = state["settings"]
    health = state.get("health", {})

    def shown(part: str) -> Text:
        status = health.get(part, {}).get("status")
        if status is None:
            return Text("")
        label, style = _SHOWN.get(status, (status, "red"))
        return Text(label, style=style)

    events = state["event_log"]["events_per_topic"]
    table.add_row(
        "event log",
        state["event_log"]["backend"],
        settings["event_log"],
        shown("event_log"),
        ", ".join(f"{t}: {n}" for t, n in events.items()),
    )
    table.add_row("blob store", state["blobs"]["backend"], settings["blobs"], shown("blobs"), "")
    rows = state["clickhouse"]["catalogue_rows"]
    table.add_row(
        "ClickHouse",
        state["clickhouse"]["backend"],
        settings["clickhouse"],
        shown("warehouse"),
        ", ".join(f"{t}: {n}" for t, n in rows.items()) or "no rows yet",
    )
    query = state.get("query_store")
    if query:
        held = ", ".join(f"{name}: {n}" for name, n in query["rows"].items())
        table.add_row("query store", query["backend"], settings.get("query_store", ""), shown("query_store"), held)
    for name, lags in state.get("projection_lag", {}).items():
        behind = sum(lags.values())
        table.add_row(f"projection {name}", "", "", "", f"lag {behind} events" if behind else "up to date")
    for name, letters in state.get("dead_letters", {}).items():
        first = letters["letters"][0] if letters["letters"] else {}
        where = f"{first.get('topic')}/{first.get('partition')}@{first.get('offset')}" if first else ""
        table.add_row(
            f"dead letters {name}",
            "",
            where,
            "",
            f"{letters['open']} events not applied (cami replay --projection {name} retries them)",
        )
    out.print(table)
    organisations = state.get("organisations")
    if organisations:
        listed, named = organisations["listed"], organisations["from_senders"]
        title = f"Organisations, last 24 h ({listed} in {organisations['directory']}, {named} named by senders)"
        recent = Table(title=title)
        for column in ("organisation", "code", "studies", "instances", "rejections"):
            recent.add_column(column)
        for row in organisations["recent"]:
            recent.add_row(
                # Text, not markup: a name may hold brackets
                Text(row["organisation_name"], style="" if row["organisation_known"] else "yellow"),
                row["organisation"],
                str(row["studies"]),
                str(row["instances"]),
                str(row["rejections"]),
            )
        out.print(recent)
