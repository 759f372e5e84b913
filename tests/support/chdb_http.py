"""TEST-ONLY: a tiny ClickHouse HTTP endpoint in front of an embedded chdb engine.

    *** NOT A CLICKHOUSE SERVER. NEVER USE IT OUTSIDE TESTS. ***

Why it exists: the ``clickhouse://`` backend (``projections.warehouse.http_backend``) talks to a
ClickHouse server through clickhouse-connect, and its contract tests must run that real client
code path against a real ClickHouse engine. These machines have no usable ClickHouse server
package (Debian's ``clickhouse-server`` is 18.16, which clickhouse-connect cannot talk to) and no
Docker. chdb *is* the ClickHouse engine (same parser, same storage, same Native format), so this
module puts a minimal HTTP interface in front of it: clickhouse-connect sends exactly the bytes it
would send to a server, the engine executes them, and the answer goes back as a server would send
it. Nothing in the client is mocked; only the network front end of the server is replaced.

What it implements (enough for clickhouse-connect 1.12, as observed on the wire):

* ``GET /ping`` -> ``Ok.``; ``POST /`` (and ``GET /``) with the SQL in the ``query`` URL parameter
  and/or the body (joined by a newline, as the server does), or in a ``multipart/form-data`` body
  (clickhouse-connect switches to that when bound parameters are long);
* ``param_<name>`` values for ``{name:Type}`` placeholders, handed to chdb's own parameter binding;
* ClickHouse settings in URL parameters, applied with ``SET`` for the one request and restored
  afterwards; ``database`` (``USE``), ``default_format``, ``query_id`` are honoured; transport-only
  parameters (``session_id``, ``wait_end_of_query``, ...) are accepted and ignored;
* ``... FORMAT <fmt>`` answered in that format by chdb (``Native`` for clickhouse-connect queries);
* inserts ``INSERT INTO t (cols) FORMAT <fmt>\\n<data>``, including the chunked transfer encoding
  clickhouse-connect uses, executed as ``INSERT ... FROM INFILE '<tmp>' FORMAT <fmt>``;
* errors as HTTP 500 with the ClickHouse exception text and ``X-ClickHouse-Exception-Code``.

What it refuses, loudly: compressed request bodies (``Content-Encoding``, ``decompress=1``) and
ClickHouse-compressed responses (``compress=1``) get HTTP 501. Configure the client with
``compress=false``. Responses are never compressed, whatever ``Accept-Encoding`` says.

Limits: one chdb session for every client (no per-session state, no temporary tables across
requests); requests are executed one at a time; chdb locks its data directory to one process,
so the server normally runs in its own process (``ChdbHttpServer``), which also keeps the engine
of the process under test free for the embedded backend.

    python -m tests.support.chdb_http --path DIR [--host 127.0.0.1] [--port 0] [--exit-with-stdin]
                                     [--request-log FILE]

prints ``LISTENING <port>`` once it accepts connections and serves until SIGTERM/SIGINT (or, with
``--exit-with-stdin``, until its standard input closes, so it dies with the test process that
started it).
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# URL parameters that belong to the HTTP interface itself, not to the engine.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "wait_end_of_query",
        "buffer_size",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "role",
        "client_protocol_version",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
        "http_response_buffer_size",
        "add_http_cors_header",
    }
)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSERT_WITH_DATA = re.compile(
    rb"\A(?P<head>\s*INSERT\s+INTO\s.*?)\bFORMAT\s+(?P<fmt>[A-Za-z0-9_]+)[ \t]*(?:\r?\n|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_TRAILING_FORMAT = re.compile(rb"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*\Z", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code: (\d+)")
_UNSUPPORTED_METHOD = 1  # ClickHouse error code UNSUPPORTED_METHOD
_BAD_ARGUMENTS = 36


class RequestRefused(Exception):
    """A request this fixture deliberately does not handle (answered with 501)."""


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _clickhouse_message(exc: BaseException) -> str:
    text = str(exc)
    start = text.find("Code: ")
    return (text[start:] if start >= 0 else text).strip()


class ChdbEngine:
    """The chdb session behind the endpoint; one lock, one request at a time."""

    def __init__(self, path: str | None) -> None:
        from chdb import session

        open_session: Any = session.Session  # chdb is untyped
        self._session: Any = open_session(path if path else ":memory:")
        self._lock = threading.Lock()
        self._database = "default"
        # A server in this project runs in UTC; chdb would otherwise report the host's zone.
        self._session.query("SET session_timezone = 'UTC'", "TabSeparated")
        row = self._session.query("SELECT version(), timezone()", "TabSeparated").bytes()
        self.version, self.timezone = row.decode().strip().split("\t")

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def execute(
        self,
        sql: bytes,
        fmt: str,
        params: Mapping[str, str],
        settings: Mapping[str, str],
        database: str | None,
    ) -> Any:
        """Run one statement with per-request settings; returns chdb's result object."""
        for name in settings:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"Code: {_BAD_ARGUMENTS}. DB::Exception: invalid setting name {name!r}")
        with self._lock:
            if database and database != self._database:
                self._session.query(f"USE {_identifier(database)}", "TabSeparated")
                self._database = database
            saved = self._snapshot(settings)
            try:
                for name, value in settings.items():
                    self._session.query(f"SET {name} = {_sql_string(value)}", "TabSeparated")
                return self._session.query(sql.decode("utf-8", "surrogateescape"), fmt, params=dict(params))
            finally:
                self._restore(saved)

    def _snapshot(self, settings: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
        if not settings:
            return {}
        raw = self._session.query(
            "SELECT name, value, changed FROM system.settings WHERE name IN {names:Array(String)}",
            "JSONEachRow",
            params={"names": "[" + ", ".join(_sql_string(n) for n in settings) + "]"},
        ).bytes()
        saved = {name: ("", False) for name in settings}
        for line in raw.splitlines():
            row = json.loads(line)
            saved[row["name"]] = (row["value"], bool(row["changed"]))
        return saved

    def _restore(self, saved: Mapping[str, tuple[str, bool]]) -> None:
        for name, (value, changed) in saved.items():
            statement = f"SET {name} = {_sql_string(value)}" if changed else f"SET {name} = DEFAULT"
            with contextlib.suppress(Exception):  # a setting unknown to chdb cannot leak either
                self._session.query(statement, "TabSeparated")


def _read_chunked(stream: Any) -> bytes:
    body = bytearray()
    while True:
        size_line = stream.readline(65537)
        if not size_line:
            raise ValueError("connection closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        body += stream.read(size)
        stream.readline(65537)  # CRLF after the chunk


def _multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode("utf-8") if isinstance(payload, bytes) else str(payload)
        elif isinstance(name, str):
            raise RequestRefused("external data (file parts) is not supported by the test fixture")
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("CHDB_HTTP_LOG"):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if urlsplit(self.path).path.rstrip("/") == "/ping":
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        self._handle(b"")

    def do_POST(self) -> None:
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError as exc:
            self.close_connection = True  # the rest of the body is still on the wire
            self._error(400, _BAD_ARGUMENTS, f"Code: {_BAD_ARGUMENTS}. DB::Exception: bad request body: {exc}")
            return
        self._handle(body)

    def _handle(self, body: bytes) -> None:
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        try:
            self._refuse_compression(params)
            content_type = self.headers.get("Content-Type", "")
            if content_type.lower().startswith("multipart/form-data"):
                params.update(_multipart_fields(content_type, body))
                body = b""
            sql = params.get("query", "").encode()
            if sql and body:
                sql += b"\n" + body
            elif body:
                sql = body
            if not sql.strip():
                raise ValueError(f"Code: {_BAD_ARGUMENTS}. DB::Exception: Empty query. (BAD_ARGUMENTS)")
            self.server.log_request_text(sql, params)
            binds = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
            settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            self._execute(sql, params, binds, settings)
        except RequestRefused as exc:
            message = f"Code: {_UNSUPPORTED_METHOD}. DB::Exception: {exc}. (UNSUPPORTED_METHOD)"
            self._error(501, _UNSUPPORTED_METHOD, message)
        except Exception as exc:
            message = _clickhouse_message(exc)
            match = _ERROR_CODE.search(message)
            self._error(500, int(match.group(1)) if match else 1000, message)

    def _refuse_compression(self, params: Mapping[str, str]) -> None:
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding and encoding != "identity":
            raise RequestRefused(f"compressed request bodies (Content-Encoding: {encoding}); use compress=false")
        if params.get("decompress", "0") not in ("", "0"):
            raise RequestRefused("ClickHouse-compressed request bodies (decompress=1); use compress=false")
        if params.get("compress", "0") not in ("", "0"):
            raise RequestRefused("ClickHouse-compressed responses (compress=1); use compress=false")

    def _execute(
        self, sql: bytes, params: Mapping[str, str], binds: Mapping[str, str], settings: Mapping[str, str]
    ) -> None:
        engine = self.server.engine
        database = params.get("database") or None
        started = time.perf_counter_ns()
        insert = _INSERT_WITH_DATA.match(sql[:65536])
        headers = {
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Timezone": engine.timezone,
            "X-ClickHouse-Server-Display-Name": "chdb-http-test-fixture",
        }
        if insert is not None:
            data = sql[insert.end() :]
            written = 0
            if data:
                with tempfile.NamedTemporaryFile(suffix=".insert", delete=False) as tmp:
                    tmp.write(data)
                try:
                    head = insert.group("head").decode("utf-8", "surrogateescape").rstrip()
                    statement = f"{head} FROM INFILE {_sql_string(tmp.name)} FORMAT {insert.group('fmt').decode()}"
                    result = engine.execute(statement.encode(), "TabSeparated", binds, settings, database)
                    written = max(result.rows_written(), result.rows_read())
                finally:
                    os.unlink(tmp.name)
            headers["X-ClickHouse-Summary"] = _summary(written, 0, written, started)
            self._reply(200, b"", {**headers, "Content-Type": "text/plain; charset=UTF-8"})
            return

        trailing = _TRAILING_FORMAT.search(sql[-4096:])
        if trailing is not None:
            fmt = trailing.group(1).decode()
            result = engine.execute(sql, fmt, binds, settings, database)
            payload = result.bytes() or b""
            headers["X-ClickHouse-Format"] = fmt
        else:
            fmt = params.get("default_format") or "TabSeparated"
            if fmt in ("TabSeparated", "TSV"):
                # A server announces a result set by X-ClickHouse-Format even when it is empty;
                # with names, a result-producing statement always yields at least one line.
                result = engine.execute(sql, "TabSeparatedWithNames", binds, settings, database)
                payload = result.bytes() or b""
                if payload:
                    payload = payload.split(b"\n", 1)[1] if b"\n" in payload else b""
                    headers["X-ClickHouse-Format"] = fmt
            else:
                result = engine.execute(sql, fmt, binds, settings, database)
                payload = result.bytes() or b""
                headers["X-ClickHouse-Format"] = fmt
        headers["X-ClickHouse-Summary"] = _summary(result.rows_read(), result.bytes_read(), 0, started)
        content_type = (
            "application/octet-stream"
            if fmt in ("Native", "RowBinary", "Parquet", "Arrow")
            else ("text/plain; charset=UTF-8")
        )
        self._reply(200, payload, {**headers, "Content-Type": content_type})

    def _error(self, status: int, code: int, message: str) -> None:
        version = self.server.engine.version
        body = f"{message} (version {version})\n".encode()
        self._reply(
            status,
            body,
            {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": str(code)},
        )

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _summary(read_rows: int, read_bytes: int, written_rows: int, started_ns: int) -> str:
    return json.dumps(
        {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": "0",
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": "0",
            "elapsed_ns": str(time.perf_counter_ns() - started_ns),
        }
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: ChdbEngine, request_log: str | None = None) -> None:
        super().__init__(address, _Handler)
        self.engine = engine
        self.request_log = request_log
        self._log_lock = threading.Lock()

    def log_request_text(self, sql: bytes, params: Mapping[str, str]) -> None:
        """Append what arrived (statement text, URL/form parameters) for tests that inspect it."""
        if not self.request_log:
            return
        entry = {"sql": sql[:4096].decode("utf-8", "replace"), "params": dict(params)}
        with self._log_lock, open(self.request_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry, ensure_ascii=False) + "\n")


def make_server(path: str | None, host: str = "127.0.0.1", port: int = 0, request_log: str | None = None) -> _Server:
    """Open chdb on ``path`` (None: in memory) and bind; call ``serve_forever()`` to serve.

    Only for a process that uses no other chdb directory: chdb allows one per process.
    """
    return _Server((host, port), ChdbEngine(path), request_log)


class ChdbHttpServer:
    """Runs this module as a subprocess serving ``path`` on 127.0.0.1 and a free port."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        request_log: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        port: int = 0,
    ) -> None:
        self.path = str(path)
        #: 0: any free port; a fixed one lets a test stop the server and bring it back where its
        #: clients expect it (a warehouse outage)
        self.fixed_port = port
        self.request_log = str(request_log) if request_log is not None else None
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``clickhouse://`` URL of the endpoint (compression off: the fixture cannot read it)."""
        if self.port is None:
            raise RuntimeError("server not started")
        return f"clickhouse://default@127.0.0.1:{self.port}/default?compress=false"

    def start(self) -> ChdbHttpServer:
        if self._proc is not None:
            raise RuntimeError("already started")
        Path(self.path).mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        command = [sys.executable, "-u", "-m", "tests.support.chdb_http", "--path", self.path]
        command += ["--port", str(self.fixed_port)]
        command.append("--exit-with-stdin")
        if self.request_log:
            command += ["--request-log", self.request_log]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
        )
        self._proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        line = b""
        poller = select.poll()  # not select(): a long test session holds descriptors above 1023
        poller.register(proc.stdout, select.POLLIN)
        while time.monotonic() < deadline:
            if poller.poll(200):
                line = proc.stdout.readline()
                if line.startswith(b"LISTENING "):
                    self.port = int(line.split()[1])
                    return self
                if not line:
                    break
            elif proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"chdb HTTP fixture did not start (last output: {line!r})")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self.port = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ChdbHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TEST-ONLY ClickHouse HTTP endpoint over chdb")
    parser.add_argument("--path", default=None, help="chdb data directory (default: in memory)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--exit-with-stdin", action="store_true", help="stop when standard input is closed")
    parser.add_argument("--request-log", default=None, help="append each request's SQL and parameters (JSON lines)")
    args = parser.parse_args(argv)

    server = make_server(args.path, args.host, args.port, args.request_log)

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watch_parent() -> None:
        # Raw reads (not sys.stdin) so this thread holds no buffer lock at interpreter exit.
        while os.read(0, 4096):  # b"" once the parent closes our stdin or dies
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    if args.exit_with_stdin:
        threading.Thread(target=watch_parent, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
