"""A real PostgreSQL server on loopback for tests: a thin driver over ``infra/postgres.sh``.

    server = PostgresServer()         # a directory under /tmp the postgres system user can enter
    server.start()                    # initdb on first use, a database ``cami`` and a user with a password
    store = PostgresQueryStore(server.url_for(schema="t_1234"))
    ...
    server.stop()                     # fast shutdown
    server.remove()                   # its directory, once stopped for good

Tests share one server per session (``tests/contract/conftest.py``) and keep apart by schema:
:meth:`PostgresServer.url_for` names a fresh one each time it is called without a name.

For the query model's contract tests on both engines: :class:`QueryStores` (a test's stores,
SQLite files or PostgreSQL schemas), :func:`project_into` (the live runner into a store),
:func:`snapshot` (every row), :func:`folded_batches` and :func:`apply_batches` (the sink's
batches, applied by a writer process of its own).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from projections.query_model.fold import QueryModel
from projections.query_model.store import TABLES, QueryModelSink, QueryStore, open_query_store
from streams import EventLog
from streams.processing import EmbeddedRunner, Row, Source, decode_records
from tests.support.servers import _START_TIMEOUT_S, ServerError, _ScriptServer, free_port


class PostgresServer(_ScriptServer):
    """PostgreSQL (Debian's package) started by ``infra/postgres.sh``: its own cluster in
    ``data_dir``, listening on 127.0.0.1 only, user ``cami`` with a password (scram-sha-256)."""

    script = "postgres.sh"
    log_files = ("postgres.out",)

    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        # as root the server runs as the postgres user, which cannot enter pytest's 0700 directories
        self._made_dir = data_dir is None
        directory = Path(tempfile.mkdtemp(prefix="cami-postgres-")) if data_dir is None else data_dir
        super().__init__(directory, port if port is not None else free_port(), "", 0)
        self.user = "cami"
        self.database = "cami"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def password(self) -> str:
        return (self.data_dir / "password").read_text(encoding="utf-8").strip()

    @property
    def url(self) -> str:
        """``postgresql://cami:PASSWORD@127.0.0.1:PORT/cami``."""
        return f"postgresql://{self.user}:{self.password}@{self.address}/{self.database}"

    def url_for(self, schema: str | None = None) -> str:
        """:attr:`url` naming a schema of the query store (a new one unless given)."""
        return f"{self.url}?schema={schema or 't_' + uuid.uuid4().hex[:12]}"

    def start(self) -> None:
        """Install if needed, start on ``data_dir`` and wait until the server takes connections."""
        self.install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["start", *self._dir_args(), "--port", str(self.port), "--user", self.user, "--database", self.database]
        proc = self._run(*args, timeout=_START_TIMEOUT_S)
        printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if printed != self.address:
            raise ServerError(
                self._describe(f"postgres.sh start printed {printed!r}, expected {self.address!r}", proc.stderr)
            )

    def remove(self) -> None:
        """Delete the server's directory (stopped first) when this object made it."""
        self.stop()
        if self._made_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.remove()  # as a context manager: stopped and, when made here, its directory gone


# -- query stores of either engine, for the contract tests ---------------------------------------------
class QueryStores:
    """The query stores one test opens, all of one engine: ``sqlite`` files in the test's
    directory, or ``postgresql`` schemas of the session's server (a fresh name per test). What
    :meth:`open` opened is closed, and a schema dropped, by :meth:`close`."""

    def __init__(self, engine: str, directory: Path, server: PostgresServer | None = None) -> None:
        if engine == "postgresql" and server is None:
            raise ValueError("a PostgreSQL store needs the server")
        self.engine = engine
        self.directory = directory
        self.server = server
        self._prefix = f"t_{uuid.uuid4().hex[:10]}_"
        self._opened: list[QueryStore] = []

    def url(self, name: str = "query") -> str:
        """The URL of the store called ``name`` (the same for every call with that name)."""
        if self.server is None:
            return f"sqlite://{self.directory / name}.db"
        return self.server.url_for(self._prefix + name)

    def open(self, name: str = "query") -> QueryStore:
        store = open_query_store(self.url(name))
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            if store.backend == "postgresql":
                store.discard()  # its schema: the server lives on for the session's other tests
            else:
                store.close()
        self._opened.clear()


def project_into(log: EventLog, store: QueryStore, *, group: str = "query-model", batch_size: int = 7) -> QueryStore:
    """The query model of what ``log`` holds, in ``store``, through the live runner (small batches)."""
    model = QueryModel()
    model.name = group
    EmbeddedRunner(log, [(model, QueryModelSink(store))], batch_size=batch_size).catch_up()
    return store


def snapshot(store: QueryStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store, in a stable order."""
    return {t: sorted((tuple(r.values()) for r in store.select(f"SELECT * FROM {t}")), key=repr) for t in TABLES}


def folded_batches(log: EventLog, batch_size: int) -> list[list[Row]]:
    """The query model's rows of everything ``log`` holds, batch by batch in log order (as a
    runner hands them to the sink)."""
    model = QueryModel()
    ends = {topic: log.end_offsets(topic) for topic in model.topics}
    batches: list[list[Row]] = []
    for records in log.scan(ends, batch_size):
        decoded, _ = decode_records([(Source(r.topic, r.partition, r.offset, r.value), r.value) for r in records])
        rows = [row for event, source in decoded for row in model.apply(event, source)]
        if rows:
            batches.append(rows)
    return batches


def apply_batches(url: str, batches: list[list[Row]], rounds: int = 1) -> None:
    """A writer process: open the store at ``url`` and apply ``batches`` in order, ``rounds`` times,
    through the query model's sink (one transaction each)."""
    store = open_query_store(url)
    try:
        sink = QueryModelSink(store)
        for _ in range(rounds):
            for rows in batches:
                sink.write(rows)
    finally:
        store.close()
