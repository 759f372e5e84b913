"""The PostgreSQL query store's pieces that need no server: the parameter style, the DDL's words,
the URL and the one-line errors (:mod:`projections.query_model.postgres`)."""

from __future__ import annotations

import psycopg
import pytest

from projections.query_model.find import STUDY_ORDER
from projections.query_model.postgres import (
    DEFAULT_SCHEMA,
    PostgresRefused,
    PostgresUnreachable,
    QueryStoreUrlError,
    connect_error,
    lock_key,
    parse_url,
    postgres_ddl,
    to_pyformat,
)
from projections.query_model.store import DDL
from streams.errors import OperatorError


@pytest.mark.parametrize(
    ("named", "pyformat"),
    [
        ("SELECT a WHERE b = :b AND c IN (:k0, :k1)", "SELECT a WHERE b = %(b)s AND c IN (%(k0)s, %(k1)s)"),
        ("INSERT INTO t (a_1) VALUES (:a_1)", "INSERT INTO t (a_1) VALUES (%(a_1)s)"),
        ("SELECT :x::text, y::int FROM t", "SELECT %(x)s::text, y::int FROM t"),  # casts stay
        ("SELECT 1 WHERE a LIKE 'x%' ESCAPE '\\'", "SELECT 1 WHERE a LIKE 'x%%' ESCAPE '\\'"),  # % in a literal
        ("SELECT 'it''s :not' , :yes", "SELECT 'it''s :not' , %(yes)s"),  # '' inside a literal
        ("SELECT E'\\'' || :p", "SELECT E'\\'' || %(p)s"),  # an escape string's \'
        ('SELECT 1 AS "a:b%" , :p', 'SELECT 1 AS "a:b%%" , %(p)s'),  # a quoted identifier
        ("SELECT 7 % 2 -- :c 100%\n, :d", "SELECT 7 %% 2 -- :c 100%%\n, %(d)s"),  # modulo, a comment
        ("SELECT /* :c % */ :d", "SELECT /* :c %% */ %(d)s"),
        ("SELECT a[1:2], :p", "SELECT a[1:2], %(p)s"),  # a slice is no parameter
        ("SELECT 1 WHERE x = :x AND y = :x", "SELECT 1 WHERE x = %(x)s AND y = %(x)s"),  # a name used twice
        ("", ""),
    ],
)
def test_named_parameters_become_pyformat(named: str, pyformat: str) -> None:
    assert to_pyformat(named) == pyformat


def test_the_ddl_for_postgresql() -> None:
    versions = postgres_ddl(DDL[0])
    assert "WITHOUT ROWID" not in versions and versions.endswith("version))")
    assert 'sop_uid TEXT COLLATE "C" NOT NULL' in versions and "received_at BIGINT NOT NULL" in versions
    newest = next(s for s in DDL if "qm_studies_newest" in s)
    assert postgres_ddl(newest).endswith("(study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid)")
    assert "COLLATE" not in postgres_ddl(newest)  # an index takes its columns' collation
    for statement in DDL:
        translated = postgres_ddl(statement)
        assert "ROWID" not in translated and translated.count("(") == translated.count(")")
    # the queries ask for the order the index gives, on both engines
    assert STUDY_ORDER.startswith("s.study_date DESC NULLS LAST, s.study_time DESC NULLS LAST")


def test_a_postgresql_url() -> None:
    url = parse_url("postgresql://cami:s%40cret@db1.example.local:6432/archive?sslmode=verify-full&schema=qm")
    assert (url.host, url.port, url.user, url.database) == ("db1.example.local", 6432, "cami", "archive")
    assert url.schema == "qm"
    assert "sslmode=verify-full" in url.conninfo and "schema" not in url.conninfo
    assert "password=s@cret" in url.conninfo  # for libpq, decoded
    assert "s%40cret" not in repr(url) and "s@cret" not in repr(url)
    plain = parse_url("postgres://cami@[::1]/cami")
    assert (plain.port, plain.schema, plain.address) == (5432, DEFAULT_SCHEMA, "[::1]:5432")
    assert "connect_timeout=10" in plain.conninfo
    assert parse_url("postgresql://cami@db/cami?connect_timeout=3").conninfo.count("connect_timeout") == 1
    assert plain.with_schema("cami_rebuild").schema == "cami_rebuild"
    assert lock_key("cami") == lock_key("cami") != lock_key("cami_rebuild")
    assert -(2**63) <= lock_key("cami") < 2**63


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://cami:secret@db:99999/cami", "port"),
        ("postgresql://cami:secret@bad_host/cami", "host"),
        ("postgresql:///cami", "no host"),
        ("mysql://cami:secret@db/cami", "postgresql://"),
        ("postgresql://cami@db/cami?password=secret", "PGPASSWORD"),
        ("postgresql://cami:secret@db/cami?schema=Bad-Name", "schema 'Bad-Name'"),
        ("postgresql://cami:secret@db/cami?schema=" + "a" * 60, "at most 55"),
        ("postgresql://cami:secret@db/cami?no_such_option=1", "no_such_option"),
        ("postgresql://cami:secret@db/cami?host=other", "before the path"),
        ("postgresql://cami:secret%zz@db/cami", "percent"),  # libpq names the bad token: not shown
    ],
)
def test_a_url_that_cannot_work_says_why_without_the_password(url: str, reason: str) -> None:
    with pytest.raises(QueryStoreUrlError, match=reason) as refused:
        parse_url(url)
    assert "secret" not in str(refused.value) and isinstance(refused.value, OperatorError | ValueError)


def test_connection_failures_are_one_line_naming_server_and_user() -> None:
    url = parse_url("postgresql://cami:secret@db1:5432/cami")

    def failed(message: str) -> OperatorError:
        return connect_error(psycopg.OperationalError(message), url)

    refused = failed(
        'connection failed: connection to server at "10.0.0.7", port 5432 failed: FATAL:  password authentication'
        ' failed for user "cami"'
    )
    assert isinstance(refused, PostgresRefused)
    assert "PostgreSQL at db1:5432, database cami refused the password of user 'cami'" in str(refused)
    assert "secret" not in str(refused)
    assert "PGPASSWORD" in str(failed("fe_sendauth: no password supplied"))
    assert "CREATE DATABASE cami OWNER cami" in str(failed('FATAL:  database "cami" does not exist'))
    assert "pg_hba.conf" in str(failed('FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "cami"'))
    down = failed(
        'connection failed: connection to server at "10.0.0.7", port 5432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    assert isinstance(down, PostgresUnreachable)
    assert str(down) == (
        "PostgreSQL at db1:5432, database cami does not answer (Connection refused): start the server or correct"
        " the address in CAMI_QUERY_STORE"
    )
    assert "TLS" in str(failed("server does not support SSL, but SSL was required"))
