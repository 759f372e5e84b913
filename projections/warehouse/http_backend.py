"""A ClickHouse server through clickhouse-connect (HTTP): ``clickhouse://`` and ``clickhouses://`` (TLS).

    clickhouse://user:password@host:8123/database?compress=false&connect_timeout=10

Parameters are bound server-side (``{name:Type}`` placeholders travel as ``param_<name>``);
inserts go through ``client.insert`` (Native format). Results are decoded with
``tz_mode="aware"``, so DateTime/DateTime64 values come back as timezone-aware datetimes, as
they do from the embedded backend. No session id is sent: the client is shared by threads, and
the warehouse keeps no per-session state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import clickhouse_connect

from projections.warehouse.base import QueryResult, Warehouse, WarehouseError
from projections.warehouse.connection import check_parameters, clickhouse_message, parse_clickhouse_url


class ClickHouseHttpWarehouse(Warehouse):
    backend = "clickhouse-http"

    def __init__(self, url: str) -> None:
        self.target = parse_clickhouse_url(url)
        self._closed = False
        t = self.target
        try:
            self._client: Any = clickhouse_connect.get_client(
                host=t.host,
                port=t.port,
                username=t.username,
                password=t.password,
                database=t.database,
                secure=t.secure,
                compress=t.compress,
                tz_mode="aware",
                autogenerate_session_id=False,
                show_clickhouse_errors="scrub",
                **t.options,
            )
        except Exception as exc:
            where = f"{'https' if t.secure else 'http'}://{t.host}:{t.port}"
            message = clickhouse_message(exc)
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, OSError):  # the socket's own reason
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, ConnectionRefusedError):
                message = "connection refused (is the ClickHouse server running there? check CAMI_CLICKHOUSE)"
            elif isinstance(cause, OSError) and "authentication" not in message.lower():
                message = f"{message} ({cause.strerror or cause}; check CAMI_CLICKHOUSE and the network)"
            raise WarehouseError(f"cannot connect to ClickHouse at {where}: {message}") from exc

    def __repr__(self) -> str:
        t = self.target
        return f"ClickHouseHttpWarehouse({t.username}@{t.host}:{t.port}/{t.database or ''})"

    def _check_open(self) -> None:
        if self._closed:
            raise WarehouseError("the warehouse is closed")

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        self._check_open()
        params = check_parameters(sql, parameters)
        try:
            self._client.command(sql, parameters=params or None)
        except Exception as exc:
            raise WarehouseError(clickhouse_message(exc)) from exc

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        self._check_open()
        params = check_parameters(sql, parameters)
        try:
            result = self._client.query(sql, parameters=params or None)
            return QueryResult(tuple(result.column_names), [tuple(row) for row in result.result_rows])
        except Exception as exc:
            raise WarehouseError(clickhouse_message(exc)) from exc

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        self._check_open()
        if not rows:
            return 0
        if not columns:
            raise WarehouseError(f"insert into {table}: no columns given")
        try:
            self._client.insert(table, rows, column_names=list(columns))
        except Exception as exc:
            raise WarehouseError(f"insert into {table}: {clickhouse_message(exc)}") from exc
        return len(rows)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()
