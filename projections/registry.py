"""Every projection the archive maintains, by name (``cami workers``/``cami replay`` use this).

Each entry builds a :class:`streams.processing.Processor` whose class also declares ``ddl`` (the
CREATE statements of its tables) and ``tables`` (their names, for rebuilds); the ``query-model``
writes its own store instead (:mod:`projections.query_model.store`). Add a projection by adding one
line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from projections.analytics import Analytics
from projections.archive_index.fold import ArchiveIndex
from projections.audit.fold import AuditTrail
from projections.catalogue import EventCatalogue
from projections.monitoring.fold import Monitoring
from projections.orders.fold import Orders
from projections.query_model.fold import QueryModel
from streams.processing import Processor


@dataclass(frozen=True)
class ProjectionConfig:
    #: key of the HMAC that turns patient IDs into pseudonyms for analytics (never logged)
    pseudonym_key: bytes = b"cami-development-key-change-me"


Factory = Callable[[ProjectionConfig], Processor]

PROJECTIONS: dict[str, Factory] = {
    "catalogue": lambda config: EventCatalogue(),
    "audit": lambda config: AuditTrail(),
    "archive-index": lambda config: ArchiveIndex(),
    "query-model": lambda config: QueryModel(),
    "monitoring": lambda config: Monitoring(),
    "analytics": lambda config: Analytics(config.pseudonym_key),
    "orders": lambda config: Orders(),
}


def build(names: tuple[str, ...] = (), config: ProjectionConfig | None = None) -> list[Processor]:
    config = config or ProjectionConfig()
    unknown = set(names) - set(PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown projection(s) {sorted(unknown)}; known: {sorted(PROJECTIONS)}")
    return [factory(config) for name, factory in PROJECTIONS.items() if not names or name in names]
