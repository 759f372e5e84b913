"""PostgreSQL under the query store: what :class:`projections.query_model.store.PostgresQueryStore`
needs beside the row store's plain SQL, as :mod:`sqlite3` is what the SQLite store needs.

This module knows nothing of the query model's tables but the names it is handed; the store (in
:mod:`projections.query_model.store`, beside the SQLite one) imports it when a PostgreSQL URL is
opened, so psycopg is loaded only where it is used.

* **The URL.** ``postgresql://user:password@host:5432/database`` (``postgres://`` too): libpq's
  own URL, its options passed through (``?sslmode=verify-full&sslrootcert=...``), but for
  ``schema`` (default ``cami``), the schema the tables live in; ``PGPASSWORD`` and ``~/.pgpass``
  work as in every libpq client, so the password can stay out of the URL. :func:`parse_url`.
* **The SQL.** The row store writes named ``:parameters`` (sqlite3's style); psycopg takes
  ``%(name)s``: :func:`to_pyformat`. The DDL differs in three small ways: :func:`postgres_ddl`.
* **Connections.** :class:`PostgresEngine`: one writer connection, whose transactions take the
  store's advisory lock first (why, at :meth:`PostgresEngine.writing`), and a small pool of reader
  connections (autocommit: every SELECT sees what was committed when it began) for the threads
  that answer queries.
* **Errors.** A server that does not answer, a refused password, a missing database: one line
  naming the server, the user (never the password) and what to do
  (:class:`PostgresUnreachable`, :class:`PostgresRefused`, both :class:`streams.errors.OperatorError`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from schemas.addresses import AddressError, url_address
from streams.errors import OperatorError

SCHEMES = ("postgresql", "postgres")
#: the schema of the query store's tables when the URL names none
DEFAULT_SCHEMA = "cami"
#: a shadow store (a rebuild while serving) lives in the schema ``<schema>_rebuild``
SHADOW_SUFFIX = "_rebuild"
DEFAULT_PORT = 5432
#: seconds to wait for a connection when the URL sets no ``connect_timeout``
CONNECT_TIMEOUT = 10
#: reader connections one store holds at most (more threads reading at once wait for one)
READERS = 8
#: seconds a swap or reset keeps trying to take its tables from the readers
LOCK_TABLES_WITHIN = 300.0

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]*")
#: a schema name leaves room for the shadow's suffix within PostgreSQL's 63 characters
_MAX_SCHEMA = 63 - len(SHADOW_SUFFIX)

T = TypeVar("T")


class QueryStoreUrlError(ValueError, OperatorError):
    """A query store URL that cannot be used (one line, no password)."""


class PostgresUnreachable(OperatorError):
    """The PostgreSQL server did not answer: the message names its address."""


class PostgresRefused(OperatorError):
    """The server answered but will not let the store in (password, database, host rules,
    rights): the message names the server, the database and the user, never the password."""


# -- the URL -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostgresUrl:
    """A parsed query store URL: libpq's connection string and what messages name."""

    #: for libpq (the URL's options but ``schema``); holds the password when the URL has one
    conninfo: str = field(repr=False)
    host: str
    port: int
    user: str
    database: str
    schema: str

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def place(self) -> str:
        """Where the store is, for messages: ``PostgreSQL at host:port, database db``."""
        return f"PostgreSQL at {self.address}, database {self.database}"

    def with_schema(self, schema: str) -> PostgresUrl:
        return replace(self, schema=_schema(schema))


def parse_url(url: str) -> PostgresUrl:
    """``postgresql://[user[:password]@]host[:port]/database[?options]`` -> :class:`PostgresUrl`;
    :class:`QueryStoreUrlError` for a URL that cannot work (the message never holds the password)."""
    try:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in SCHEMES:
            raise AddressError("the scheme must be postgresql:// (or postgres://)")
        host, port = url_address(url)
    except AddressError as exc:
        raise QueryStoreUrlError(f"query store URL: {exc}") from None
    options = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    passed: list[tuple[str, str]] = []
    for name, value in options:
        if name == "schema":
            schema = value
        elif name == "password":
            raise QueryStoreUrlError(
                "query store URL: give the password as postgresql://user:password@host/..., or in PGPASSWORD,"
                " not as ?password="
            )
        elif name in ("host", "hostaddr", "port"):
            raise QueryStoreUrlError(f"query store URL: name the server before the path, not as ?{name}=")
        else:
            passed.append((name, value))
    without_schema = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(passed), ""))
    try:
        params = conninfo_to_dict(without_schema)
    except psycopg.ProgrammingError as exc:  # libpq's own check (an unknown option...)
        reason = _first_line(exc)
        for secret in {parts.password, unquote(parts.password or "")} - {None, ""}:
            reason = reason.replace(str(secret), "***")  # libpq may quote a malformed password
        raise QueryStoreUrlError(f"query store URL {_shown(url)}: {reason}") from None
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    params.setdefault("application_name", "cami")
    # as libpq, without a user in the URL: the system user's name (messages do not look at PGUSER)
    user = str(params.get("user") or pwd.getpwuid(os.getuid()).pw_name)
    database = str(params.get("dbname") or user)
    try:
        checked = _schema(schema)
    except ValueError as exc:
        raise QueryStoreUrlError(f"query store URL {_shown(url)}: {exc}") from None
    return PostgresUrl(make_conninfo("", **params), host, port or DEFAULT_PORT, user, database, checked)


def _schema(name: str) -> str:
    if not _SCHEMA_NAME.fullmatch(name) or len(name) > _MAX_SCHEMA:
        raise ValueError(
            f"schema {name!r} must be a lower-case SQL name (letters, digits, _) of at most {_MAX_SCHEMA} characters"
        )
    return name


def _shown(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        credentials, _, host = authority.rpartition("@")
        authority = f"{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else authority
    return f"{scheme}{sep}{authority}{slash}{path}"


# -- the SQL -------------------------------------------------------------------------------------------
_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """``sql`` with sqlite3's named parameters (``:name``) in psycopg's style (``%(name)s``).

    Outside quotes a ``:name`` becomes ``%(name)s``; ``::`` (a cast) stays; every ``%`` (a LIKE
    pattern written into the SQL, the modulo operator) becomes ``%%``, which psycopg sends as
    ``%``. Inside string literals (``'...'``, ``''`` for a quote; ``E'...'`` with backslash
    escapes), quoted identifiers (``"..."``) and comments (``--``, ``/* */``) nothing is a
    parameter; their ``%`` are doubled all the same, since psycopg reads the whole text."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "'" or ch == '"':
            escapes = ch == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            end = _closing(sql, i, ch, escapes)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("::", i):
            out.append("::")
            i += 2
        elif ch == ":" and i + 1 < n and _NAME_START.match(sql[i + 1]):
            name = _NAME.match(sql, i + 1)
            assert name is not None
            out.append(f"%({name.group()})s")
            i = name.end()
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _closing(sql: str, start: int, quote: str, escapes: bool) -> int:
    """The index after the quote that closes the literal or identifier opened at ``start``."""
    i = start + 1
    while i < len(sql):
        if escapes and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if sql.startswith(quote * 2, i):  # a doubled quote stands for one
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)  # unclosed: the server says so


_CLUSTERED = re.compile(r"\)\s*WITHOUT ROWID\s*$")
_TEXT = re.compile(r"\bTEXT\b")
_DESCENDING = re.compile(r"\bDESC\b")


def postgres_ddl(statement: str) -> str:
    """One of the row store's CREATE statements (SQLite's dialect) for PostgreSQL:

    * ``TEXT`` columns compare and sort by code point (``COLLATE "C"``), as SQLite's do: a prefix
      match is a range of the index, and every order is the same on both engines, whatever locale
      the database was created with;
    * no ``WITHOUT ROWID`` (a PostgreSQL table is a heap; the primary key is an index beside it);
    * a descending index column keeps NULLs last (``DESC NULLS LAST``), as SQLite orders them and
      as the queries ask, so the index still gives the order."""
    statement = _CLUSTERED.sub(")", statement)
    if statement.lstrip().upper().startswith("CREATE INDEX"):
        return _DESCENDING.sub("DESC NULLS LAST", statement)
    return _TEXT.sub('TEXT COLLATE "C"', statement)


def quoted(name: str) -> str:
    """An SQL identifier (the schema names here are checked lower-case names; quoted all the same)."""
    return '"' + name.replace('"', '""') + '"'


def lock_key(schema: str) -> int:
    """The advisory lock of the store in ``schema``: a signed 64-bit number from its name."""
    return int.from_bytes(hashlib.sha256(f"cami query store {schema}".encode()).digest()[:8], "big", signed=True)


# -- errors ----------------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def connect_error(exc: psycopg.OperationalError, url: PostgresUrl) -> OperatorError:
    """A failed connection as one line for the operator."""
    text = str(exc)
    lowered = text.lower()
    user = repr(url.user)
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        return PostgresRefused(
            f"{url.place} refused the password of user {user}: correct the password in CAMI_QUERY_STORE"
            f" (postgresql://{url.user}:PASSWORD@...) or PGPASSWORD, or set it on the server"
            f" (ALTER ROLE {url.user} PASSWORD ...)"
        )
    if "no password supplied" in lowered:
        return PostgresRefused(
            f"{url.place} asks user {user} for a password and none was given: put it in CAMI_QUERY_STORE"
            f" (postgresql://{url.user}:PASSWORD@...) or in PGPASSWORD (the environment file of the service)"
        )
    if "does not exist" in lowered and "database" in lowered:
        return PostgresRefused(
            f"{url.place} has no database {url.database!r}: create it (CREATE DATABASE {url.database}"
            f" OWNER {url.user}) or correct the database in CAMI_QUERY_STORE"
        )
    if "no pg_hba.conf entry" in lowered:
        return PostgresRefused(
            f"{url.place} does not let user {user} connect from this host (no pg_hba.conf entry): add a line"
            f" 'host {url.database} {url.user} <this host's address>/32 scram-sha-256' to the server's"
            " pg_hba.conf and reload it"
        )
    if "ssl" in lowered or "certificate" in lowered:
        return PostgresRefused(f"{url.place}: TLS failed ({_reason(text)}): check sslmode and the certificates")
    return PostgresUnreachable(
        f"{url.place} does not answer ({_reason(text)}): start the server or correct the address in CAMI_QUERY_STORE"
    )


def _reason(text: str) -> str:
    """libpq's reason, without its preamble ('connection to server at "h", port p failed:')."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else text
    reason = first.rsplit("failed:", 1)[-1].strip() or first
    return reason.removeprefix("FATAL:").strip().rstrip(".")


def privilege_error(exc: pg_errors.InsufficientPrivilege, url: PostgresUrl) -> OperatorError:
    return PostgresRefused(
        f"{url.place}: user {url.user!r} may not create the query store's schema {url.schema} or its tables"
        f" ({_first_line(exc)}): make the user the database's owner (ALTER DATABASE {url.database} OWNER TO"
        f" {url.user}) or GRANT CREATE ON DATABASE {url.database} TO {url.user}"
    )


# -- connections -----------------------------------------------------------------------------------------
Connection = psycopg.Connection[tuple[Any, ...]]


class Translating:
    """A connection that takes the row store's SQL (named ``:parameters``) as sqlite3 does."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, parameters: Mapping[str, Any] | None = None) -> psycopg.Cursor[tuple[Any, ...]]:
        # always a mapping: psycopg turns %% back into % only when it reads parameters
        return self.connection.execute(to_pyformat(sql), without_nul(parameters or {}))

    def executemany(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            with self.connection.cursor() as cursor:
                cursor.executemany(to_pyformat(sql), [without_nul(row) for row in rows])


def without_nul(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with NUL characters taken out of text: PostgreSQL's text cannot hold them
    (psycopg refuses the whole statement), and in a DICOM value they are padding some devices send,
    or a hostile query parameter; either way a batch must not be dead-lettered, nor a query answered
    500, for them."""
    return {name: _no_nul(value) for name, value in parameters.items()}


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list | tuple):
        return [_no_nul(item) for item in value]
    return value


class PostgresEngine:
    """The connections of one store (a schema of one database).

    Writers: one connection; each :meth:`writing` block is one transaction. Readers: up to
    :data:`READERS` connections, reused (a reader that failed is closed, not given back), in
    autocommit mode, without server-side prepared statements (a swap may replace the tables
    under them)."""

    def __init__(self, url: PostgresUrl, *, readers: int = READERS) -> None:
        self.url = url
        self.key = lock_key(url.schema)
        self._write_lock = threading.Lock()
        self._writer: Connection | None = None
        self._idle: list[Connection] = []
        self._idle_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(readers)
        self._closed = False

    def connect(self, *, reader: bool = False) -> Connection:
        try:
            connection = psycopg.connect(self.url.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise connect_error(exc, self.url) from None
        if reader:
            connection.prepare_threshold = None
        connection.execute("SELECT set_config('search_path', %s, false)", [quoted(self.url.schema)])
        return connection

    @contextmanager
    def writing(self) -> Iterator[Translating]:
        """One transaction on the writer connection, under the store's advisory lock.

        Why a lock and not SERIALIZABLE: ``apply`` reads what it then rewrites (the newest version
        of each SOP UID, every touched study from its instances, merge chains of any length), so
        two writers whose batches touch one study would have to see each other's rows. Under
        SERIALIZABLE such batches abort and are redone whole, again and again while several
        ``cami workers`` apply interleaved partitions of the same studies. ``pg_advisory_xact_lock``
        on the store's key, taken as the transaction's first statement, makes the writers of every
        process and host take turns instead: it is the only lock a writer waits for while holding
        none, so they never deadlock; it is released by the commit (or a rollback, or a dropped
        connection); and each transaction's statements then see everything committed before
        (READ COMMITTED), so none loses another's update. Readers take no advisory lock: they see
        the rows of the last commit. A store's shadow has its own key (its own schema)."""
        with self._write_lock:
            connection = self._begin()
            try:
                yield Translating(connection)
                connection.execute("COMMIT")
            except BaseException:
                self._roll_back(connection)
                raise

    def _begin(self) -> Connection:
        """BEGIN and the advisory lock; once more on a new connection if the one kept from the last
        transaction is gone (the server restarted since: nothing was done yet)."""
        for attempt in (1, 2):
            connection = self._writer
            reused = connection is not None and not connection.closed
            if connection is None or connection.closed:
                connection = self._writer = self.connect()
            try:
                connection.execute("BEGIN")
                connection.execute("SELECT pg_advisory_xact_lock(%s)", [self.key])
                return connection
            except psycopg.OperationalError:
                self._drop_writer()
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                self._roll_back(connection)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _roll_back(self, connection: Connection) -> None:
        if connection.closed or connection.broken:
            self._drop_writer()  # the next transaction opens another
            return
        try:
            connection.execute("ROLLBACK")
        except psycopg.OperationalError:
            self._drop_writer()

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def read(self, run: Callable[[Translating], T]) -> T:
        """``run`` on a reader connection; once more on a new one if a reused connection failed
        (the server restarted since it was opened)."""
        with self._slots:
            for attempt in (1, 2):
                connection = self._take()
                reused = connection is not None
                if connection is None:
                    connection = self.connect(reader=True)
                try:
                    result = run(Translating(connection))
                except psycopg.OperationalError:
                    connection.close()
                    if reused and attempt == 1:
                        self._drop_idle()
                        continue
                    raise
                except BaseException:
                    self._give_back(connection)
                    raise
                self._give_back(connection)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self) -> Connection | None:
        with self._idle_lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, connection: Connection) -> None:
        healthy = not connection.closed and connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._idle_lock:
            if healthy and not self._closed:
                self._idle.append(connection)
                return
        connection.close()

    def _drop_idle(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def lock_tables(self, db: Translating, tables: Sequence[str]) -> None:
        """Inside a :meth:`writing` transaction: take ``tables`` (those that exist) from every
        reader (ACCESS EXCLUSIVE) before they are dropped or replaced.

        All of them first, then the change: a reader that waits meanwhile finds the new tables
        when it gets them, never an old one beside a new one. A reader holding one of them while it
        waits for another that this transaction holds would be a deadlock, which PostgreSQL breaks
        by failing one side after ``deadlock_timeout``; so each try gives up well before that
        (``lock_timeout`` a fifth of it), lets that reader finish, and tries again."""
        connection = db.connection
        schema = self.url.schema
        existing = [
            str(row[0])
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)", [schema, list(tables)]
            ).fetchall()
        ]
        if not existing:
            return
        found = connection.execute("SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'").fetchone()
        patience = max(int(found[0]) // 5 if found else 200, 10)
        names = ", ".join(f"{quoted(schema)}.{quoted(t)}" for t in sorted(existing))
        deadline = time.monotonic() + LOCK_TABLES_WITHIN
        pause = 0.01
        while True:
            try:
                with connection.transaction():  # a savepoint: a try that times out is undone alone
                    connection.execute(f"SET LOCAL lock_timeout = {patience}")
                    connection.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
                break
            except pg_errors.LockNotAvailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        connection.execute("SET LOCAL lock_timeout = 0")

    def close(self) -> None:
        with self._write_lock:
            self._drop_writer()
        with self._idle_lock:
            self._closed = True
        self._drop_idle()
