"""The warehouse (ClickHouse, where read models live), opened from a URL.

    chdb:///abs/dir                      embedded ClickHouse on a data directory (the default)
    chdb://                              embedded ClickHouse in memory (gone at close)
    clickhouse://user:pass@host:8123/db  a ClickHouse server over HTTP (clickhouse-connect)
    clickhouses://user:pass@host:8443/db the same over TLS

One registry maps a scheme to its backend; backends are imported only when opened, so a
deployment that talks to a server never loads the embedded engine and vice versa.

This module also holds the two rules both backends share: parameters only ever travel as
``{name:Type}`` placeholders bound by ClickHouse (``check_parameters``), and an error carries the
ClickHouse exception text (``clickhouse_message``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from projections.warehouse.base import QueryResult, Warehouse, WarehouseError, WarehouseLocked

__all__ = [
    "ClickHouseUrl",
    "QueryResult",
    "Warehouse",
    "WarehouseError",
    "WarehouseLocked",
    "chdb_path_from_url",
    "check_parameters",
    "clickhouse_message",
    "open_warehouse",
    "parse_clickhouse_url",
]

from projections.warehouse.connection import (
    ClickHouseUrl,
    chdb_path_from_url,
    check_parameters,
    clickhouse_message,
    parse_clickhouse_url,
)


def _open_chdb(url: str) -> Warehouse:
    path = chdb_path_from_url(url)  # a malformed URL fails before the engine is loaded
    from projections.warehouse.chdb_backend import ChdbWarehouse

    return ChdbWarehouse(path)


def _open_clickhouse(url: str) -> Warehouse:
    parse_clickhouse_url(url)  # a malformed URL fails before the client library is loaded
    from projections.warehouse.http_backend import ClickHouseHttpWarehouse

    return ClickHouseHttpWarehouse(url)


BACKENDS: Mapping[str, Callable[[str], Warehouse]] = {
    "chdb": _open_chdb,
    "clickhouse": _open_clickhouse,
    "clickhouses": _open_clickhouse,
}


def open_warehouse(url: str) -> Warehouse:
    """Open the warehouse named by ``url`` (see the module docstring for the schemes)."""
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    opener = BACKENDS.get(scheme)
    if opener is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        shown = repr(scheme) if scheme else "missing"
        # The URL itself is not echoed: it may carry a password.
        raise ValueError(f"unknown warehouse URL scheme ({shown}); expected one of {known}")
    return opener(url)
