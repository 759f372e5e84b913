"""Embedded ClickHouse (chdb): the default warehouse, the same SQL as the server.

The engine runs in this process on a data directory (``chdb:///abs/dir``) or in memory
(``chdb://``). chdb allows one data directory per process at a time and locks it against other
processes, so everything that reads or writes a given directory lives in one process.

Values cross the boundary in ClickHouse's Native format, encoded and decoded by clickhouse-connect's
own codec — the code the ``clickhouse://`` backend runs on the bytes a server sends. So a query
returns the *same Python values* on both backends by construction (ints, aware UTC datetimes,
``None`` for NULL, lists for arrays, ``Decimal``, ``UUID``...), and an insert accepts the same
Python values. Parameters are bound the same way too: clickhouse-connect formats each value as a
ClickHouse ``{name:Type}`` parameter and chdb's parameter binding parses it, so no value is ever
spliced into SQL text.

Inserts: ``DESCRIBE TABLE`` gives the column types, the rows are encoded to one Native payload
(a temporary file) and loaded with ``INSERT ... FROM INFILE ... FORMAT Native``.

The session always runs in UTC (``session_timezone``), like the servers of this project.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC
from typing import Any

from chdb import session as _chdb_session

# clickhouse-connect's Native codec and query context (1.x layout; the HTTP backend runs the same).
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver import ctypes as _ctypes
from clickhouse_connect.driver._backend.httpcommon import is_columns_only_query
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.exceptions import Error as ClickHouseConnectError
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.query import QueryContext
from clickhouse_connect.driver.query import QueryResult as NativeResult
from clickhouse_connect.driver.transform import NativeTransform

from projections.warehouse.base import QueryResult, Warehouse, WarehouseError, WarehouseLocked
from projections.warehouse.connection import check_parameters, clickhouse_message

# chdb ships no type information; these handles keep its untyped calls out of the strict check.
_Session: Any = _chdb_session.Session
_ResponseBuffer: Any = _ctypes.RespBuffCls

# The server's zone in this project, plus the settings clickhouse-connect applies to a server at
# connect time, so both backends parse strings into dates and times identically.
SESSION_SETTINGS: Mapping[str, str] = {
    "session_timezone": "UTC",
    "date_time_input_format": "best_effort",
    "cast_string_to_dynamic_use_inference": "1",
}


def qualified_table(table: str) -> str:
    """Quote a table name the way clickhouse-connect's ``insert`` does (``db.table`` kept as is)."""
    return table if "." in table else quote_identifier(table)


class _Bytes:
    """A one-chunk byte source for clickhouse-connect's response buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.last_message: bytes | None = None
        self.exception_tag: str | None = None

    @property
    def gen(self) -> Iterator[bytes]:
        if self.data:
            yield self.data

    def close(self) -> None:
        return None


def _query_context(sql: str, parameters: Mapping[str, Any]) -> QueryContext:
    # Same as clickhouse_connect's client.create_query_context for a UTC server with tz_mode="aware".
    return QueryContext(
        query=sql,
        parameters=dict(parameters) if parameters else None,
        server_tz=UTC,
        apply_server_tz=True,
        tz_mode="aware",
    )


def _engine_params(bind_params: Mapping[str, str]) -> dict[str, str]:
    return {(k[len("param_") :] if k.startswith("param_") else k): v for k, v in bind_params.items()}


def _held_elsewhere(path: str) -> bool:
    """Whether another process holds the directory's lock (the ClickHouse server's status file,
    locked with flock for as long as the engine runs)."""
    try:
        fd = os.open(os.path.join(path, "status"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _lock_holder(path: str) -> int | None:
    """The process holding the directory's lock, when it is another one (``/proc/locks`` names the
    pid of each flock by the locked file's device and inode); None when free, held by this
    process, or unknown (no ``/proc``)."""
    try:
        status = os.stat(os.path.join(path, "status"))
        with open("/proc/locks", encoding="ascii") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 4756 fe:00:9977895 0 EOF" (waiters: "1: -> FLOCK ...")
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            holder = int(fields[4])
            return holder if holder != os.getpid() else None
    return None


class ChdbWarehouse(Warehouse):
    backend = "chdb"

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        #: column types by table, as DESCRIBE TABLE gave them: asked once, not before every insert
        #: (a processor writes several tables per batch); forgotten on every command (DDL)
        self._types: dict[str, dict[str, str]] = {}
        # asked first: the engine would print its own "Cannot lock file" lines to stderr
        holder = _lock_holder(path) if path else None
        if path and holder is not None:
            raise WarehouseLocked(path, holder)
        try:
            self._session: Any = _Session(path if path else ":memory:")
        except Exception as exc:  # chdb raises RuntimeError for a locked/conflicting directory
            if path and _held_elsewhere(path):
                raise WarehouseLocked(path) from exc
            where = path or ":memory:"
            raise WarehouseError(f"cannot open chdb at {where}: {clickhouse_message(exc)}") from exc
        try:
            for name, value in SESSION_SETTINGS.items():
                self._session.query(f"SET {name} = '{value}'", "TabSeparated")
        except Exception as exc:
            self._session.close()
            raise WarehouseError(clickhouse_message(exc)) from exc

    def __repr__(self) -> str:
        return f"ChdbWarehouse({self.path!r})"

    # -- engine access -------------------------------------------------------------------------

    def _run(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> bytes:
        with self._lock:
            if self._session is None:
                raise WarehouseError("the warehouse is closed")
            try:
                result = self._session.query(sql, fmt, params=dict(params) if params else None)
            except Exception as exc:
                raise WarehouseError(clickhouse_message(exc)) from exc
        data = result.bytes()
        return bytes(data) if data else b""

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # -- Warehouse -----------------------------------------------------------------------------

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        context = self._context(sql, parameters)
        self._types.clear()
        self._run(str(context.final_query), "TabSeparated", _engine_params(context.bind_params))

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        context = self._context(sql, parameters)
        params = _engine_params(context.bind_params)
        final = str(context.final_query)
        if is_columns_only_query(context):
            # Like the HTTP client: a LIMIT 0 query yields no Native block, so ask for the header.
            meta = json.loads(self._run(f"{final}\n FORMAT JSON", "JSON", params))["meta"]
            return QueryResult(tuple(str(col["name"]) for col in meta), [])
        native = self._run(f"{final}\n FORMAT Native", "Native", params)
        try:
            result = NativeTransform.parse_response(_ResponseBuffer(_Bytes(native)), context)
            assert isinstance(result, NativeResult)  # use_numpy is off
            return QueryResult(tuple(result.column_names), [tuple(row) for row in result.result_rows])
        except ClickHouseConnectError as exc:
            raise WarehouseError(clickhouse_message(exc)) from exc

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if self._session is None:
            raise WarehouseError("the warehouse is closed")
        if not rows:
            return 0
        if not columns:
            raise WarehouseError(f"insert into {table}: no columns given")
        target = qualified_table(table)
        types = self._types.get(target) or self._column_types(target)
        unknown = [c for c in columns if c not in types]
        if unknown and target in self._types:  # changed since it was described: look again
            types = self._column_types(target)
            unknown = [c for c in columns if c not in types]
        self._types[target] = types
        if unknown:
            raise WarehouseError(f"insert into {table}: unknown columns {unknown}")
        col_list = ", ".join(quote_identifier(c) for c in columns)
        fd, payload = tempfile.mkstemp(prefix="cami-insert-", suffix=".native")
        try:
            with os.fdopen(fd, "wb") as out:
                encode_native(table, target, columns, types, rows, out)
            self._load(target, col_list, payload)
        finally:
            os.unlink(payload)
        return len(rows)

    def insert_native_file(self, table: str, columns: Sequence[str], path: str) -> None:
        """Load rows another process encoded with :class:`NativeFileWriter` (a rebuild lane)."""
        self._load(qualified_table(table), ", ".join(quote_identifier(c) for c in columns), path)

    def column_types(self, table: str) -> dict[str, str]:
        """Column -> ClickHouse type of ``table``'s insertable columns."""
        target = qualified_table(table)
        types = self._column_types(target)
        self._types[target] = types
        return dict(types)

    def _load(self, target: str, col_list: str, path: str) -> None:
        infile = path.replace("\\", "\\\\").replace("'", "\\'")
        self._run(f"INSERT INTO {target} ({col_list}) FROM INFILE '{infile}' FORMAT Native", "TabSeparated")

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _context(sql: str, parameters: Mapping[str, Any] | None) -> QueryContext:
        params = check_parameters(sql, parameters)
        try:
            return _query_context(sql, params)
        except ClickHouseConnectError as exc:
            raise WarehouseError(clickhouse_message(exc)) from exc

    def _column_types(self, target: str) -> dict[str, str]:
        described = self._run(f"DESCRIBE TABLE {target}", "JSONEachRow")
        types: dict[str, str] = {}
        for line in described.splitlines():
            row = json.loads(line)
            if row.get("default_type") not in ("ALIAS", "MATERIALIZED"):
                types[str(row["name"])] = str(row["type"])
        return types


def encode_native(
    table: str, target: str, columns: Sequence[str], types: Mapping[str, str], rows: Sequence[Sequence[Any]], out: Any
) -> None:
    """Write ``rows`` as ClickHouse Native data (no statement) into the file ``out``; a Python
    value that does not fit its column -> WarehouseError."""
    context = InsertContext(target, list(columns), [get_from_name(types[c]) for c in columns], data=rows, server_tz=UTC)
    errors: list[Exception] = []
    first = True
    try:
        for chunk in NativeTransform.build_insert(context, errors.append):
            if errors:
                break
            if first:  # the body starts "INSERT INTO ... FORMAT Native\n"; INFILE wants data only
                chunk = chunk[chunk.index(b"\n") + 1 :]
                first = False
            out.write(chunk)
    except Exception as exc:  # the encoder raises whatever a bad value provokes
        errors.append(exc)
    if errors:
        raise WarehouseError(f"insert into {table}: cannot encode rows: {errors[0]!r}") from errors[0]


class NativeFileWriter:
    """Encodes inserts for an embedded warehouse in another process: the table's column types
    are given (asked of the warehouse by its owner), the rows checked and encoded as
    :meth:`ChdbWarehouse.insert` does, and the owner loads the file
    (:meth:`ChdbWarehouse.insert_native_file`)."""

    def __init__(self, types: Mapping[str, Mapping[str, str]]) -> None:
        self._types = {table: dict(columns) for table, columns in types.items()}

    def write(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], out: Any) -> None:
        types = self._types.get(table)
        if types is None:
            raise WarehouseError(f"insert into {table}: no column types for it")
        unknown = [c for c in columns if c not in types]
        if unknown:
            raise WarehouseError(f"insert into {table}: unknown columns {unknown}")
        encode_native(table, qualified_table(table), columns, types, rows, out)
