"""Access to ClickHouse, where the read models live.

One interface, two backends that run the *same SQL*: embedded ClickHouse (chdb, the default)
and a ClickHouse server through clickhouse-connect. Parameters always travel separately from
the SQL text using ClickHouse's own ``{name:Type}`` placeholders, so no user input is ever
spliced into a statement.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class WarehouseError(Exception):
    """The statement failed (syntax, types, server unreachable...)."""


class WarehouseLocked(WarehouseError):
    """The embedded warehouse's directory is held by another process (chdb allows one)."""

    def __init__(self, path: str, holder: int | None = None) -> None:
        by = (
            f"another CAMI process (pid {holder}: a running cami serve?)"
            if holder
            else ("another CAMI process (a running cami serve?)")
        )
        super().__init__(
            f"the embedded warehouse {path} is in use by {by}. "
            "Only one process may open it: stop that process first, or let it answer (cami status and "
            "cami audit ask a running cami serve over HTTP); to run several processes on one warehouse, "
            "use a ClickHouse server (CAMI_CLICKHOUSE=clickhouse://...)"
        )
        self.path = path
        self.holder = holder


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None


class Warehouse(abc.ABC):
    backend: str = "?"

    @abc.abstractmethod
    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run DDL or any statement that returns no rows."""

    @abc.abstractmethod
    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        """Insert a batch; returns the number of rows written."""

    @abc.abstractmethod
    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        """Run a SELECT with ``{name:Type}`` parameters."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the session/connection."""

    def ping(self) -> None:
        """Raise :class:`WarehouseError` unless the warehouse answers a query now (readiness probes)."""
        if self.query("SELECT 1").scalar() != 1:
            raise WarehouseError("SELECT 1 did not answer 1")

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
