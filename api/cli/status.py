"""``cami status``: what each backend holds (events per topic, read-model rows, projection lag,
dead letters) and the organisations that sent in the last 24 hours, by name (the regional
directory; a code it does not know behind its marker); :func:`archive_state` is also what
``cami demo`` prints at its end."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table
from rich.text import Text

from api.bootstrap import bootstrap
from api.cli.output import out, print_json
from api.config import Settings
from projections import dead_letters
from projections.catalogue import DDL as CATALOGUE_DDL
from projections.monitoring import queries as monitoring
from projections.monitoring.fold import Monitoring
from projections.query_model.store import QueryStore
from projections.status import projection_lag
from schemas.organisations import OrganisationDirectory
from streams.topics import SOURCE_OF_TRUTH

#: how far back the organisations section looks
RECENT = timedelta(hours=24)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show each backend and what it holds")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_status)


def archive_state(settings: Settings) -> dict[str, Any]:
    """What each backend holds: events per topic, blob store reachability, read-model rows."""
    archive = bootstrap(settings)
    try:
        topics = {t: sum(archive.event_log.end_offsets(t).values()) for t in SOURCE_OF_TRUTH}
        lag = projection_lag(archive.event_log, archive.processors())
        catalogue = archive.warehouse
        catalogue.command(CATALOGUE_DDL)
        by_type = catalogue.query(
            "SELECT event_type, count() FROM (SELECT * FROM event_catalogue FINAL) GROUP BY event_type ORDER BY 1"
        ).rows
        # events a projection could not apply (it moved on after recording them): per projection,
        # how many are open and the first of them; `cami replay --projection NAME` retries them
        letters: dict[str, dict[str, Any]] = {
            name: {"open": count, "letters": dead_letters.open_letters(catalogue, name, limit=20)}
            for name, count in dead_letters.counts(catalogue).items()
        }
        return {
            "settings": settings.describe(),
            "organisations": _organisations(archive.organisations(), catalogue, str(settings.organisations_file)),
            "event_log": {"backend": archive.event_log.backend, "events_per_topic": topics},
            "blobs": {"backend": archive.blobs.backend},
            "projection_lag": lag,
            "dead_letters": letters,
            "clickhouse": {
                "backend": catalogue.backend,
                "catalogue_rows": {name: count for name, count in by_type},
            },
            "query_store": {"backend": archive.query_store.backend, "rows": _query_rows(archive.query_store)},
        }
    finally:
        archive.close()


def _query_rows(store: QueryStore) -> dict[str, int]:
    """Studies, series and instances (newest versions) the query store answers from."""
    [found] = store.select(
        "SELECT count(*) AS studies, coalesce(sum(series_count), 0) AS series,"
        " coalesce(sum(instance_count), 0) AS instances FROM qm_studies"
    )
    return {name: int(found[name]) for name in ("studies", "series", "instances")}


def _organisations(directory: OrganisationDirectory, warehouse: Any, where: str) -> dict[str, Any]:
    """The directory's size and each organisation seen in the last :data:`RECENT`, by name."""
    for statement in Monitoring.ddl:  # the tables exist before the first event is folded
        warehouse.command(statement)
    recent = []
    for row in monitoring.organisation_summary(warehouse, datetime.now(UTC) - RECENT):
        code = row["organisation"]
        recent.append(
            {
                "organisation": code,
                "organisation_name": directory.display(code),
                "organisation_known": directory.lookup(code) is not None,
                **{k: row.get(k, 0) for k in ("studies", "instances", "rejections")},
            }
        )
    sources = [o.source for o in directory.organisations.values()]
    return {
        "directory": where,
        "listed": sources.count("directory"),
        "from_senders": sources.count("senders"),
        "recent": recent,
    }


def cmd_status(args: argparse.Namespace) -> int:
    state = archive_state(Settings.from_env())
    if args.json:
        print_json(state)
        return 0
    render_state(state)
    return 0


def render_state(state: dict[str, Any]) -> None:
    table = Table(title="CAMI backbone")
    table.add_column("part")
    table.add_column("backend")
    table.add_column("where")
    table.add_column("holds")
    settings = state["settings"]
    events = state["event_log"]["events_per_topic"]
    table.add_row(
        "event log",
        state["event_log"]["backend"],
        settings["event_log"],
        ", ".join(f"{t}: {n}" for t, n in events.items()),
    )
    table.add_row("blob store", state["blobs"]["backend"], settings["blobs"], "")
    rows = state["clickhouse"]["catalogue_rows"]
    table.add_row(
        "ClickHouse",
        state["clickhouse"]["backend"],
        settings["clickhouse"],
        ", ".join(f"{t}: {n}" for t, n in rows.items()) or "no rows yet",
    )
    query = state.get("query_store")
    if query:
        held = ", ".join(f"{name}: {n}" for name, n in query["rows"].items())
        table.add_row("query store", query["backend"], settings.get("query_store", ""), held)
    for name, lags in state.get("projection_lag", {}).items():
        behind = sum(lags.values())
        table.add_row(f"projection {name}", "", "", f"lag {behind} events" if behind else "up to date")
    for name, letters in state.get("dead_letters", {}).items():
        first = letters["letters"][0] if letters["letters"] else {}
        where = f"{first.get('topic')}/{first.get('partition')}@{first.get('offset')}" if first else ""
        table.add_row(
            f"dead letters {name}",
            "",
            where,
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
