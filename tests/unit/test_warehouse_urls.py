"""Warehouse URLs and the shared binding/error rules: pure functions, no engine, no server."""

from __future__ import annotations

import pytest

from projections.warehouse import (
    BACKENDS,
    ClickHouseUrl,
    WarehouseError,
    chdb_path_from_url,
    check_parameters,
    clickhouse_message,
    open_warehouse,
    parse_clickhouse_url,
)

# -- chdb:// -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("chdb:///var/lib/cami/warehouse", "/var/lib/cami/warehouse"),
        ("chdb:///var/lib/cami/warehouse/", "/var/lib/cami/warehouse"),
        ("chdb:///tmp/a/../b", "/tmp/b"),
        ("chdb:///data/with%20space", "/data/with space"),
        ("CHDB:///x", "/x"),
        ("chdb://", None),
    ],
)
def test_chdb_url_to_path(url: str, path: str | None) -> None:
    assert chdb_path_from_url(url) == path


@pytest.mark.parametrize(
    "url",
    [
        "chdb:relative/dir",  # not absolute
        "chdb://host/dir",  # a host is meaningless for an embedded engine
        "chdb:///",  # the root directory is never a data directory
        "chdb:///data?x=1",
        "chdb:///data#frag",
        "clickhouse:///data",
        "/just/a/path",
    ],
)
def test_bad_chdb_urls(url: str) -> None:
    with pytest.raises(ValueError):
        chdb_path_from_url(url)


# -- clickhouse:// and clickhouses:// ------------------------------------------------------------


def test_full_clickhouse_url() -> None:
    target = parse_clickhouse_url("clickhouse://cami:s3cr%40t@10.0.0.5:9123/archive?compress=false")
    assert target == ClickHouseUrl(
        host="10.0.0.5",
        port=9123,
        username="cami",
        password="s3cr@t",
        database="archive",
        secure=False,
        compress=False,
        options={},
    )


def test_defaults() -> None:
    target = parse_clickhouse_url("clickhouse://127.0.0.1")
    assert (target.host, target.port, target.username, target.password) == ("127.0.0.1", 8123, "default", "")
    assert target.database is None
    assert target.secure is False
    assert target.compress is False


def test_clickhouses_is_tls_on_8443() -> None:
    target = parse_clickhouse_url("clickhouses://reader@ch.region.local/analytics")
    assert target.secure is True
    assert target.port == 8443
    assert (target.username, target.database) == ("reader", "analytics")


def test_explicit_port_and_secure_option() -> None:
    assert parse_clickhouse_url("clickhouses://h:9440").port == 9440
    assert parse_clickhouse_url("clickhouse://h?secure=true").secure is True
    assert parse_clickhouse_url("clickhouse://h?secure=true").port == 8443


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("0", False),
        ("true", True),
        ("1", True),
        ("lz4", "lz4"),
        ("ZSTD", "zstd"),
        ("gzip", "gzip"),
    ],
)
def test_compress_option(value: str, expected: bool | str) -> None:
    assert parse_clickhouse_url(f"clickhouse://h/db?compress={value}").compress == expected


def test_client_options_are_typed() -> None:
    target = parse_clickhouse_url(
        "clickhouses://h/db?connect_timeout=5&send_receive_timeout=300&query_retries=0"
        "&verify=false&ca_cert=/etc/ssl/region.pem&client_name=cami-api"
    )
    assert target.options == {
        "connect_timeout": 5,
        "send_receive_timeout": 300,
        "query_retries": 0,
        "verify": False,
        "ca_cert": "/etc/ssl/region.pem",
        "client_name": "cami-api",
    }


def test_password_is_not_in_repr() -> None:
    target = parse_clickhouse_url("clickhouse://cami:topsecret@h/db")
    assert "topsecret" not in repr(target)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("clickhouse:///db", "needs a host"),
        ("clickhouse://h:notaport/db", "bad port"),
        ("clickhouse://h:99999/db", "bad port"),
        ("clickhouse://h/db/extra", "one database name"),
        ("clickhouse://h/db?compress=maybe", "true or false"),
        ("clickhouse://h/db?connect_timeout=soon", "integer"),
        ("clickhouse://h/db?user=x", "unknown clickhouse URL option 'user'"),
        ("clickhouse://h/db?compress=1&compress=0", "given twice"),
        ("clickhouse://h/db#x", "fragment"),
        ("http://h:8123/db", "not a clickhouse"),
    ],
)
def test_bad_clickhouse_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_clickhouse_url(url)


# -- open_warehouse dispatch ---------------------------------------------------------------------


def test_registry_maps_every_scheme() -> None:
    assert set(BACKENDS) == {"chdb", "clickhouse", "clickhouses"}


@pytest.mark.parametrize(
    "url",
    ["postgres://u:pw@h/db", "memory://", "clickhouse+http://h", "/var/lib/cami", "", "CH://h"],
)
def test_unknown_scheme_is_a_clear_value_error(url: str) -> None:
    with pytest.raises(ValueError, match="unknown warehouse URL scheme") as error:
        open_warehouse(url)
    assert "chdb://" in str(error.value) and "clickhouse://" in str(error.value)


def test_unknown_scheme_error_does_not_echo_a_password() -> None:
    with pytest.raises(ValueError) as error:
        open_warehouse("https://admin:hunter2@ch.example:8443/db")
    assert "hunter2" not in str(error.value)


def test_malformed_clickhouse_url_fails_before_any_connection() -> None:
    with pytest.raises(ValueError, match="unknown clickhouse URL option"):
        open_warehouse("clickhouse://127.0.0.1:1/db?bogus=1")


def test_malformed_chdb_url_fails_before_opening_an_engine() -> None:
    with pytest.raises(ValueError, match="chdb URL"):
        open_warehouse("chdb://relative")


# -- the rules both backends share ---------------------------------------------------------------


def test_parameters_must_be_placeholders() -> None:
    sql = "SELECT * FROM t WHERE a = {a:String} AND b IN {b:Array(UInt64)} AND at > {at:DateTime64(6, 'UTC')}"
    params = {"a": "x' OR 1=1 --", "b": [1, 2], "at": 0}
    assert check_parameters(sql, params) == params
    assert check_parameters("SELECT 1", None) == {}
    assert check_parameters("SELECT 1", {}) == {}
    with pytest.raises(WarehouseError, match=r"\['c'\]"):
        check_parameters(sql, {**params, "c": 1})
    with pytest.raises(WarehouseError, match="placeholder"):
        check_parameters("SELECT %(a)s", {"a": "x"})


def test_clickhouse_message_keeps_the_exception_text_only() -> None:
    http = RuntimeError(
        "Received ClickHouse exception, code: 60, server response: Code: 60. DB::Exception: "
        "Table default.x does not exist. (UNKNOWN_TABLE) (version 26.9.2.1) (for url http://h:8123)"
    )
    assert clickhouse_message(http) == "Code: 60. DB::Exception: Table default.x does not exist. (UNKNOWN_TABLE)"
    embedded = RuntimeError("Code: 62. DB::Exception: Syntax error. (SYNTAX_ERROR)")
    assert clickhouse_message(embedded) == "Code: 62. DB::Exception: Syntax error. (SYNTAX_ERROR)"
    assert clickhouse_message(ConnectionRefusedError("refused")) == "refused"
    assert clickhouse_message(ValueError()) == "ValueError"
