"""One warehouse contract, two backends: embedded chdb and a ClickHouse server over HTTP.

``clickhouse-http`` runs the real clickhouse-connect client against ``tests.support.chdb_http``
(a TEST-ONLY HTTP endpoint over the ClickHouse engine, see that module for why). Both backends
must return the *same Python values* for the same data: every expectation below is compared
with ``same()``, which also checks the exact type of each value (``1 == 1.0 == True`` would
otherwise hide a difference).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from projections.warehouse import QueryResult, Warehouse, WarehouseError, open_warehouse
from projections.warehouse.chdb_backend import ChdbWarehouse
from projections.warehouse.http_backend import ClickHouseHttpWarehouse
from tests.support.chdb_http import ChdbHttpServer
from tests.support.warehouses import WarehouseTarget

HOSTILE = "x' OR 1=1 --"

STRINGS = [
    "",
    "plain",
    "Иванов Иван Иванович",
    'O\'Brien "quoted" `backticked`',
    "back\\slash \\N \\' \\\\",
    "line\nbreak\r\ttab",
    "nul\x00byte",
    HOSTILE,
    "'); DROP TABLE studies; --",
    "emoji 🩻 and ЁЖЩ",
]

ROWS_DDL = """
CREATE TABLE rows (
    id UInt64,
    name String,
    note Nullable(String),
    at DateTime64(6, 'UTC'),
    day Date,
    tags Array(String),
    flag Bool,
    score Float64,
    big UInt64
) ENGINE = MergeTree ORDER BY id
"""
ROW_COLUMNS = ["id", "name", "note", "at", "day", "tags", "flag", "score", "big"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def same(actual: Any, expected: Any) -> bool:
    """Equal, with the same types all the way down (floats: NaN equals NaN)."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, float):
        return bool(actual == expected or (math.isnan(actual) and math.isnan(expected)))
    if isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected, strict=True))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)
    if isinstance(expected, datetime):
        return bool(actual == expected and actual.utcoffset() == expected.utcoffset())
    return bool(actual == expected)


def assert_same_rows(actual: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert same(got, want), f"\n got: {got!r}\nwant: {want!r}"


def sample_row(i: int) -> tuple[Any, ...]:
    """Row ``i`` of the batch, as inserted and as it must read back."""
    return (
        i,
        f"{STRINGS[i % len(STRINGS)]} #{i}",
        None if i % 3 == 0 else STRINGS[(i * 7) % len(STRINGS)],
        EPOCH + timedelta(days=19_000, microseconds=i * 1_000_003),
        date(2024, 1, 1) + timedelta(days=i % 400),
        [] if i % 5 == 0 else [STRINGS[i % len(STRINGS)], f"t{i}", "ё"],
        i % 2 == 0,
        i / 7 - 1000.0,
        2**64 - 1 - i,
    )


EDGE_ROWS = [
    (
        10**9,
        "",
        "",
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        date(1970, 1, 1),
        [""],
        False,
        -0.5,
        0,
    ),
    (
        10**9 + 1,
        "\\N",
        "NULL",
        datetime(2200, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        date(2149, 6, 6),
        ["'", '"', "\\", "\n"],
        True,
        math.inf,
        2**63,
    ),
    (
        10**9 + 2,
        "x",
        None,
        datetime(2024, 2, 29, 12, 0, tzinfo=UTC),
        date(2024, 2, 29),
        [],
        True,
        1e-300,
        2**63 - 1,
    ),
]


@pytest.fixture
def rows_table(warehouse: Warehouse) -> Iterator[str]:
    warehouse.command(ROWS_DDL)
    yield "rows"


# --------------------------------------------------------------------------------------------------
# DDL and engines


def test_mergetree_ddl_insert_and_count(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TABLE events (id UInt64, kind LowCardinality(String)) ENGINE = MergeTree ORDER BY id")
    assert warehouse.insert("events", ["id", "kind"], [(i, "CT" if i % 2 else "MR") for i in range(100)]) == 100
    result = warehouse.query("SELECT kind, count() AS n FROM events GROUP BY kind ORDER BY kind")
    assert result.columns == ("kind", "n")
    assert_same_rows(result.rows, [("CT", 50), ("MR", 50)])
    tables = warehouse.query("SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'events'")
    assert tables.scalar() == "MergeTree"


def test_inserts_follow_the_table_as_ddl_changes_it(warehouse: Warehouse) -> None:
    """Column types may be remembered between inserts, but never past a change of the table."""
    warehouse.command("CREATE TABLE evolving (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
    warehouse.insert("evolving", ["id", "name"], [(1, "one")])
    warehouse.command("ALTER TABLE evolving ADD COLUMN size UInt64 DEFAULT 0")
    warehouse.insert("evolving", ["id", "name", "size"], [(2, "two", 2_000)])
    assert warehouse.query("SELECT id, name, size FROM evolving ORDER BY id").rows == [
        (1, "one", 0),
        (2, "two", 2_000),
    ]
    warehouse.command("DROP TABLE evolving")
    warehouse.command("CREATE TABLE evolving (id UInt32, taken DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY id")
    with pytest.raises(WarehouseError):  # the column is gone
        warehouse.insert("evolving", ["id", "name"], [(3, "three")])
    warehouse.insert("evolving", ["id", "taken"], [(3, datetime(2026, 11, 30, 10, 0, tzinfo=UTC))])
    assert warehouse.query("SELECT id FROM evolving").rows == [(3,)]


def test_replacing_mergetree_final_keeps_latest_version(warehouse: Warehouse) -> None:
    warehouse.command(
        "CREATE TABLE study_index (study_uid String, status String, version UInt64) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY study_uid"
    )
    warehouse.command("SYSTEM STOP MERGES study_index")  # keep the duplicates visible without FINAL
    warehouse.insert(
        "study_index",
        ["study_uid", "status", "version"],
        [("1.2.3", "received", 1), ("1.2.4", "received", 1)],
    )
    warehouse.insert("study_index", ["study_uid", "status", "version"], [("1.2.3", "signed", 3), ("1.2.4", "draft", 2)])
    # A replayed (older) event arriving late must not win.
    warehouse.insert("study_index", ["study_uid", "status", "version"], [("1.2.3", "received", 1)])

    raw = warehouse.query("SELECT count() FROM study_index").scalar()
    assert raw == 5  # parts are not merged yet: FINAL is what deduplicates
    final = warehouse.query("SELECT study_uid, status, version FROM study_index FINAL ORDER BY study_uid")
    assert_same_rows(final.rows, [("1.2.3", "signed", 3), ("1.2.4", "draft", 2)])


def test_create_existing_table_is_a_warehouse_error(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TABLE once (x UInt8) ENGINE = MergeTree ORDER BY x")
    warehouse.command("CREATE TABLE IF NOT EXISTS once (x UInt8) ENGINE = MergeTree ORDER BY x")
    with pytest.raises(WarehouseError, match="TABLE_ALREADY_EXISTS"):
        warehouse.command("CREATE TABLE once (x UInt8) ENGINE = MergeTree ORDER BY x")


# --------------------------------------------------------------------------------------------------
# Batch insert and typed read-back


def test_batch_insert_reads_back_identical_python_values(warehouse: Warehouse, rows_table: str) -> None:
    batch = [sample_row(i) for i in range(20_000)]
    assert warehouse.insert(rows_table, ROW_COLUMNS, batch) == len(batch)
    assert warehouse.insert(rows_table, ROW_COLUMNS, EDGE_ROWS) == len(EDGE_ROWS)

    result = warehouse.query(f"SELECT {', '.join(ROW_COLUMNS)} FROM rows ORDER BY id")
    assert result.columns == tuple(ROW_COLUMNS)
    assert_same_rows(result.rows, batch + EDGE_ROWS)


def test_values_are_typed_like_clickhouse_connect(warehouse: Warehouse) -> None:
    result = warehouse.query(
        """
        SELECT
            toUInt8(255) AS u8, toInt64(-9223372036854775808) AS i64, toUInt64(18446744073709551615) AS u64,
            toInt128('-170141183460469231731687303715884105728') AS i128,
            toFloat32(0.5) AS f32, toFloat64(0.1) AS f64, toDecimal64('12.3456', 4) AS dec,
            'Пётр' AS s, toFixedString('ab', 3) AS fs, CAST(NULL, 'Nullable(String)') AS null_s,
            true AS b, toDate('2024-03-01') AS d, toDate32('1900-01-01') AS d32,
            toDateTime64('2024-03-01 10:20:30.123456', 6, 'UTC') AS dt64,
            toDateTime('2024-03-01 10:20:30', 'UTC') AS dt,
            toUUID('c0ffee00-0000-4000-8000-000000000001') AS uuid,
            [1, 2, 3] AS arr_u8, [['a'], []] AS nested,
            CAST([NULL, 'x'], 'Array(Nullable(String))') AS arr_null,
            map('k', 1) AS m, tuple(1, 'x') AS t, CAST('b', 'Enum8(\\'a\\' = 1, \\'b\\' = 2)') AS e,
            toLowCardinality('CT') AS lc
        """
    )
    expected = {
        "u8": 255,
        "i64": -(2**63),
        "u64": 2**64 - 1,
        "i128": -(2**127),
        "f32": 0.5,
        "f64": 0.1,
        "dec": Decimal("12.3456"),
        "s": "Пётр",
        "fs": b"ab\x00",
        "null_s": None,
        "b": True,
        "d": date(2024, 3, 1),
        "d32": date(1900, 1, 1),
        "dt64": datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=UTC),
        "dt": datetime(2024, 3, 1, 10, 20, 30, tzinfo=UTC),
        "uuid": UUID("c0ffee00-0000-4000-8000-000000000001"),
        "arr_u8": [1, 2, 3],
        "nested": [["a"], []],
        "arr_null": [None, "x"],
        "m": {"k": 1},
        "t": (1, "x"),
        "e": "b",
        "lc": "CT",
    }
    (row,) = result.dicts()
    assert list(row) == list(expected)
    for name, want in expected.items():
        assert same(row[name], want), f"{name}: got {row[name]!r}, want {want!r}"


def test_insert_accepts_bytes_and_null_into_string_columns(warehouse: Warehouse) -> None:
    warehouse.command(
        "CREATE TABLE blobs (id UInt8, raw String, maybe Nullable(String)) ENGINE = MergeTree ORDER BY id"
    )
    warehouse.insert("blobs", ["id", "raw", "maybe"], [(1, b"\x00\xff\xfe", None), (2, "текст".encode(), b"ok")])
    result = warehouse.query("SELECT id, hex(raw), length(raw), maybe FROM blobs ORDER BY id")
    assert_same_rows(result.rows, [(1, "00FFFE", 3, None), (2, "D182D0B5D0BAD181D182", 10, "ok")])


def test_empty_insert_writes_nothing(warehouse: Warehouse, rows_table: str) -> None:
    assert warehouse.insert(rows_table, ROW_COLUMNS, []) == 0
    assert warehouse.query("SELECT count() FROM rows").scalar() == 0


# --------------------------------------------------------------------------------------------------
# Parameters: bound by ClickHouse, never spliced


def test_hostile_string_parameter_is_matched_literally(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TABLE names (id UInt8, name String) ENGINE = MergeTree ORDER BY id")
    warehouse.insert("names", ["id", "name"], [(i, s) for i, s in enumerate(STRINGS)])

    for i, value in enumerate(STRINGS):
        found = warehouse.query("SELECT id, name FROM names WHERE name = {name:String}", {"name": value})
        assert_same_rows(found.rows, [(i, value)])

    # Had the value been spliced, "... = 'nomatch' OR 1=1 --'" would return every row.
    assert warehouse.query("SELECT id FROM names WHERE name = {name:String}", {"name": f"nomatch{HOSTILE}"}).rows == []
    echoed = warehouse.query("SELECT {v:String} AS v, {n:Nullable(String)} AS n", {"v": HOSTILE, "n": None})
    assert_same_rows(echoed.rows, [(HOSTILE, None)])


def test_injection_attempts_do_not_alter_the_statement(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TABLE victims (id UInt8, name String) ENGINE = MergeTree ORDER BY id")
    warehouse.insert("victims", ["id", "name"], [(1, "a"), (2, "b")])

    attempts = [
        "'; DROP TABLE victims; --",
        "a' OR '1'='1",
        "a\\' OR 1=1 --",
        "') UNION ALL SELECT 9, 'pwned' --",
    ]
    for attempt in attempts:
        found = warehouse.query(
            "SELECT id, name FROM victims WHERE name = {name:String} ORDER BY id", {"name": attempt}
        )
        assert found.rows == []
        listed = warehouse.query(
            "SELECT id FROM victims WHERE name IN {names:Array(String)}", {"names": ["a", attempt]}
        )
        assert_same_rows(listed.rows, [(1,)])
    # An identifier parameter names one table, quoted by ClickHouse: it cannot smuggle a statement.
    with pytest.raises(WarehouseError, match="UNKNOWN_TABLE"):
        warehouse.query("SELECT count() FROM {table:Identifier}", {"table": "victims; DROP TABLE victims"})
    assert warehouse.query("SELECT count() FROM {table:Identifier}", {"table": "victims"}).scalar() == 2
    assert warehouse.query("SELECT name FROM victims ORDER BY id").rows == [("a",), ("b",)]


def test_parameter_without_placeholder_is_refused(warehouse: Warehouse) -> None:
    # clickhouse-connect would format %(name)s client-side; the warehouse refuses instead.
    with pytest.raises(WarehouseError, match="placeholder"):
        warehouse.query("SELECT %(name)s", {"name": HOSTILE})
    with pytest.raises(WarehouseError, match="placeholder"):
        warehouse.command("SELECT 1", {"name": HOSTILE})


def test_typed_parameters_round_trip(warehouse: Warehouse) -> None:
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    result = warehouse.query(
        "SELECT {at:DateTime64(6, 'UTC')} AS at, {day:Date} AS day, {n:UInt64} AS n, {f:Float64} AS f, "
        "{b:Bool} AS b, {tags:Array(String)} AS tags, {s:String} AS s",
        {
            "at": at,
            "day": date(2024, 5, 6),
            "n": 2**64 - 1,
            "f": -2.5,
            "b": True,
            "tags": ["x'", "\\", "ё"],
            "s": "\\N",
        },
    )
    assert_same_rows(result.rows, [(at, date(2024, 5, 6), 2**64 - 1, -2.5, True, ["x'", "\\", "ё"], "\\N")])


def test_command_binds_parameters(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TABLE notes (id UInt64, text String) ENGINE = MergeTree ORDER BY id")
    warehouse.command("INSERT INTO notes (id, text) SELECT {id:UInt64}, {text:String}", {"id": 7, "text": HOSTILE})
    assert_same_rows(warehouse.query("SELECT id, text FROM notes").rows, [(7, HOSTILE)])


# --------------------------------------------------------------------------------------------------
# Errors


def test_sql_error_carries_the_clickhouse_message(warehouse: Warehouse) -> None:
    with pytest.raises(WarehouseError) as syntax:
        warehouse.query("SELEC 1")
    message = str(syntax.value)
    assert message.startswith("Code: 62. DB::Exception: Syntax error")
    assert "SYNTAX_ERROR" in message
    assert "(version" not in message and "for url" not in message

    with pytest.raises(WarehouseError, match=r"Code: 60\..*UNKNOWN_TABLE"):
        warehouse.query("SELECT * FROM no_such_table")
    with pytest.raises(WarehouseError, match="UNKNOWN_IDENTIFIER"):
        warehouse.query("SELECT no_such_column")
    with pytest.raises(WarehouseError, match="UNKNOWN_TABLE"):
        warehouse.command("DROP TABLE no_such_table")


def test_insert_errors_are_warehouse_errors(warehouse: Warehouse, rows_table: str) -> None:
    with pytest.raises(WarehouseError, match="UNKNOWN_TABLE"):
        warehouse.insert("no_such_table", ["id"], [(1,)])
    with pytest.raises(WarehouseError, match="no_such_column"):
        warehouse.insert(rows_table, ["id", "no_such_column"], [(1, 2)])
    with pytest.raises(WarehouseError):
        warehouse.insert(rows_table, ["id"], [("not a number",)])
    # Nothing of the failed batches was written.
    assert warehouse.query("SELECT count() FROM rows").scalar() == 0


def test_missing_parameter_value_is_a_warehouse_error(warehouse: Warehouse) -> None:
    with pytest.raises(WarehouseError, match=r"UNKNOWN_QUERY_PARAMETER|not set"):
        warehouse.query("SELECT {a:String}, {b:String}", {"a": "only a"})


# --------------------------------------------------------------------------------------------------
# Results


def test_empty_result(warehouse: Warehouse, rows_table: str) -> None:
    result = warehouse.query("SELECT id, name FROM rows WHERE id = {id:UInt64}", {"id": 1})
    assert result.rows == []
    assert result.dicts() == []
    assert result.scalar() is None
    # LIMIT 0 is how a caller asks for the columns of a result alone.
    header = warehouse.query("SELECT id, name FROM rows LIMIT 0")
    assert header.columns == ("id", "name") and header.rows == []


def test_dicts_and_scalar(warehouse: Warehouse) -> None:
    result = warehouse.query("SELECT number AS n, toString(number) AS s FROM system.numbers LIMIT 3")
    assert isinstance(result, QueryResult)
    assert result.dicts() == [{"n": 0, "s": "0"}, {"n": 1, "s": "1"}, {"n": 2, "s": "2"}]
    assert result.scalar() == 0
    assert warehouse.query("SELECT 42 AS answer").scalar() == 42


def test_concurrent_use_from_threads(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TABLE hits (thread UInt8, i UInt32, text String) ENGINE = MergeTree ORDER BY (thread, i)")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(10):
                warehouse.insert("hits", ["thread", "i", "text"], [(t, i, f"{HOSTILE}{t}/{i}")])
                got = warehouse.query(
                    "SELECT text FROM hits WHERE thread = {t:UInt8} AND i = {i:UInt32}", {"t": t, "i": i}
                )
                assert got.rows == [(f"{HOSTILE}{t}/{i}",)]
        except BaseException as exc:  # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert warehouse.query("SELECT count() FROM hits").scalar() == 60


# --------------------------------------------------------------------------------------------------
# Persistence and lifecycle


def test_data_survives_close_and_reopen(warehouse_target: WarehouseTarget) -> None:
    first = warehouse_target.open()
    first.command(ROWS_DDL)
    batch = [sample_row(i) for i in range(500)]
    first.insert("rows", ROW_COLUMNS, batch)

    warehouse_target.restart()  # chdb: session closed; clickhouse-http: the server process too

    second = warehouse_target.open()
    result = second.query(f"SELECT {', '.join(ROW_COLUMNS)} FROM rows ORDER BY id")
    assert_same_rows(result.rows, batch)


def test_closed_warehouse_refuses_work(warehouse_target: WarehouseTarget) -> None:
    warehouse = warehouse_target.open()
    warehouse.close()
    for attempt in (
        lambda: warehouse.query("SELECT 1"),
        lambda: warehouse.command("SELECT 1"),
        lambda: warehouse.insert("t", ["x"], [(1,)]),
    ):
        with pytest.raises(WarehouseError, match="closed"):
            attempt()
    warehouse.close()  # closing twice is harmless


# --------------------------------------------------------------------------------------------------
# Not parametrised: the two backends side by side, and backend-specific entry points


@pytest.mark.clickhouse_http
def test_both_backends_return_identical_values(tmp_path: Path) -> None:
    """The same statements on both backends at once; every value and type must match."""
    ddl = (
        "CREATE TABLE wide (id UInt32, s String, n Nullable(String), at DateTime64(6, 'UTC'), "
        "plain DateTime, d Date, tags Array(Nullable(String)), b Bool, f Float64, dec Decimal(18, 4), "
        "u UUID, lc LowCardinality(String), m Map(String, UInt64)) ENGINE = MergeTree ORDER BY id"
    )
    columns = ["id", "s", "n", "at", "plain", "d", "tags", "b", "f", "dec", "u", "lc", "m"]
    rows = [
        (
            i,
            STRINGS[i % len(STRINGS)],
            None if i % 2 else STRINGS[-1 - i % len(STRINGS)],
            EPOCH + timedelta(microseconds=i * 987_654_321_123),
            datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=i * 3_601),
            date(2000, 1, 1) + timedelta(days=i * 13),
            [STRINGS[i % len(STRINGS)], None],
            bool(i % 3),
            i * 0.1,
            Decimal(i) / Decimal(8),
            UUID(int=i * 2**64 + i),
            ["CT", "MR", "DX"][i % 3],
            {"k": i, "l": 2**63 + i},
        )
        for i in range(300)
    ]
    queries: list[tuple[str, dict[str, Any]]] = [
        ("SELECT * FROM wide ORDER BY id", {}),
        ("SELECT id, s FROM wide WHERE s = {s:String} ORDER BY id", {"s": HOSTILE}),
        (
            "SELECT lc, count(), min(at), max(d), sum(dec), groupArray(id)[1] FROM wide GROUP BY lc ORDER BY lc",
            {},
        ),
        ("SELECT id FROM wide WHERE at > {t:DateTime64(6, 'UTC')} ORDER BY id LIMIT 5", {"t": EPOCH}),
        ("SELECT * FROM wide WHERE id > 10000", {}),
    ]
    results: dict[str, list[QueryResult]] = {}
    chdb = ChdbWarehouse(str(tmp_path / "chdb"))
    try:
        with ChdbHttpServer(tmp_path / "http") as server:
            http = ClickHouseHttpWarehouse(server.url)
            try:
                for warehouse in (chdb, http):
                    warehouse.command(ddl)
                    warehouse.insert("wide", columns, rows)
                    results[warehouse.backend] = [warehouse.query(sql, params) for sql, params in queries]
            finally:
                http.close()
    finally:
        chdb.close()

    for (sql, _), embedded, served in zip(queries, results["chdb"], results["clickhouse-http"], strict=True):
        assert embedded.columns == served.columns, sql
        assert_same_rows(embedded.rows, served.rows)
    assert_same_rows([r[:2] for r in results["chdb"][0].rows], [r[:2] for r in rows])


def test_chdb_in_memory_url() -> None:
    with open_warehouse("chdb://") as warehouse:
        assert warehouse.backend == "chdb"
        warehouse.command("CREATE TABLE m (x UInt8) ENGINE = MergeTree ORDER BY x")
        warehouse.insert("m", ["x"], [(1,), (2,)])
        assert warehouse.query("SELECT sum(x) FROM m").scalar() == 3


def test_chdb_directory_is_one_per_process(tmp_path: Path) -> None:
    with open_warehouse(f"chdb://{tmp_path}/a"), pytest.raises(WarehouseError, match="cannot open chdb"):
        open_warehouse(f"chdb://{tmp_path}/b")


@pytest.mark.clickhouse_http
def test_http_parameters_travel_apart_from_the_sql(tmp_path: Path) -> None:
    """What reached the server: placeholders in the SQL text, the value only as param_<name>."""
    log = tmp_path / "requests.jsonl"
    with (
        ChdbHttpServer(tmp_path / "http", request_log=log) as server,
        open_warehouse(server.url) as warehouse,
    ):
        warehouse.command("CREATE TABLE t (name String) ENGINE = MergeTree ORDER BY name")
        warehouse.insert("t", ["name"], [(HOSTILE,), ("other",)])
        found = warehouse.query("SELECT count() FROM t WHERE name = {name:String}", {"name": HOSTILE})
        assert found.scalar() == 1
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    (select,) = [e for e in entries if "WHERE name = " in e["sql"]]
    assert "{name:String}" in select["sql"]
    assert "OR 1=1" not in select["sql"]
    assert select["params"]["param_name"].replace("\\'", "'") == HOSTILE
    (insert,) = [e for e in entries if e["sql"].startswith("INSERT")]
    assert insert["sql"].startswith("INSERT INTO `t` (`name`) FORMAT Native\n")


@pytest.mark.clickhouse_http
def test_unreachable_server_is_a_warehouse_error() -> None:
    with pytest.raises(WarehouseError, match=r"cannot connect to ClickHouse at http://127\.0\.0\.1:1:"):
        open_warehouse("clickhouse://default@127.0.0.1:1/default?connect_timeout=2")


@pytest.mark.clickhouse_http
def test_fixture_refuses_compressed_bodies(tmp_path: Path) -> None:
    with ChdbHttpServer(tmp_path / "http") as server:
        url = server.url.replace("compress=false", "compress=gzip")
        with open_warehouse(url) as warehouse:
            warehouse.command("CREATE TABLE z (x UInt8) ENGINE = MergeTree ORDER BY x")
            with pytest.raises(WarehouseError, match="UNSUPPORTED_METHOD"):
                warehouse.insert("z", ["x"], [(1,)])
