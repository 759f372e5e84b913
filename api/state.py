"""How each backend of the archive is doing (ok, degraded, down) and what it holds: events per
topic, read-model rows, projection lag, dead letters, and the organisations that sent in the last
24 hours, by name (the regional directory; a code it does not know behind its marker).
``cami status`` prints it, ``cami demo`` at its end, and ``GET /api/status`` answers it from a
running ``cami serve`` (which is how ``cami status`` learns it while the server holds the
embedded warehouse)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from api.bootstrap import Archive
from projections import dead_letters
from projections.catalogue import DDL as CATALOGUE_DDL
from projections.monitoring import queries as monitoring
from projections.monitoring.fold import Monitoring
from projections.query_model.store import QueryStore
from projections.warehouse import WarehouseError, WarehouseLocked
from schemas.organisations import OrganisationDirectory
from streams.health import DOWN, OK, Health
from streams.topics import SOURCE_OF_TRUTH

#: how far back the organisations section looks
RECENT = timedelta(hours=24)
#: what each backend is given to say how it is doing
HEALTH_TIMEOUT = 3.0


def redundancy(archive: Archive) -> dict[str, dict[str, str]]:
    """How the log and the blob store are doing (``ok``, ``degraded``: working with less redundancy
    than configured, e.g. a broker or a drive gone; ``down``), each with the line saying what was seen."""
    checks: dict[str, Callable[[], Health]] = {
        "event_log": lambda: archive.event_log.health(SOURCE_OF_TRUTH, HEALTH_TIMEOUT),
        "blobs": lambda: archive.blobs.health(HEALTH_TIMEOUT),
    }
    found: dict[str, dict[str, str]] = {}
    for name, check in checks.items():
        try:
            health = check()
        except Exception as exc:  # an unreachable backend is a state to report, not a crash
            health = Health.down(f"{type(exc).__name__}: {exc}")
        found[name] = {"status": health.status, "detail": health.detail}
    return found


def archive_state(archive: Archive) -> dict[str, Any]:
    """What each backend holds: events per topic, blob store reachability, read-model rows. A
    warehouse or query store that cannot be reached is reported as down, not raised: the operator
    asking is most likely asking because something is down (a locked embedded warehouse is
    raised: the caller asks the server that holds it)."""
    settings = archive.settings
    health = redundancy(archive)
    topics = {t: sum(archive.event_log.end_offsets(t).values()) for t in SOURCE_OF_TRUTH}
    lag = archive.projection_lag()
    state: dict[str, Any] = {
        "settings": settings.describe(),
        "organisations": None,
        "health": health,
        "event_log": {"backend": archive.event_log.backend, "events_per_topic": topics},
        "blobs": {"backend": archive.blobs.backend},
        "projection_lag": lag,
        "dead_letters": {},
        "clickhouse": {"backend": _warehouse_backend(settings.warehouse_url), "catalogue_rows": {}},
        "query_store": None,
    }
    try:
        state |= _warehouse_state(archive)
        health["warehouse"] = {"status": OK, "detail": f"{state['clickhouse']['backend']} answers"}
    except WarehouseLocked:
        raise
    except WarehouseError as exc:
        health["warehouse"] = {"status": DOWN, "detail": str(exc)}
    try:
        store = archive.query_store
        state["query_store"] = {"backend": store.backend, "rows": _query_rows(store)}
        health["query_store"] = {"status": OK, "detail": f"{store.backend} answers"}
    except Exception as exc:  # an unreachable store is reported like the other backends
        health["query_store"] = {"status": DOWN, "detail": f"{type(exc).__name__}: {exc}"}
    return state


def _warehouse_backend(url: str) -> str:
    return "chdb" if url.startswith("chdb:") else "clickhouse-http"


def _warehouse_state(archive: Archive) -> dict[str, Any]:
    """The parts read from the warehouse: catalogue rows, dead letters, the organisations."""
    settings = archive.settings
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
        "organisations": _organisations(archive.organisations(), catalogue, str(settings.organisations_file)),
        "dead_letters": letters,
        "clickhouse": {"backend": catalogue.backend, "catalogue_rows": {name: count for name, count in by_type}},
    }


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
