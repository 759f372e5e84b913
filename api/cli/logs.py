"""Where ``cami``'s log lines go: stderr, as text for people or as one JSON object a line for a log
collector (``CAMI_LOG_FORMAT`` / ``log_format``), at ``CAMI_LOG_LEVEL`` / ``log_level``.

Levels: unset, ``info`` for the services (``cami serve``, ``cami workers``, ``cami agent run``)
and ``warning`` for the other commands; ``-v`` makes it at least ``info``. Above ``debug`` the
level is the archive's own loggers' (``cami.*``) and the web server's (``uvicorn.*``); the
libraries' (pynetdicom, botocore...) stay at ``warning`` (the HTTP clients' retries at ``error``),
unless ``-v`` (everything at ``info``, as before) or ``debug`` (everything).

JSON (:class:`JsonFormatter`): ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``message``, ``exc`` (the traceback) when there is one, and any fields given as ``extra``. The
lines a command writes on stderr for people (rich's console, a command's one-line error) become
objects of the logger ``cami.console`` too, so that every line there parses; an exception that
ends a thread is logged with its traceback in ``exc`` instead of printed.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from api.cli.output import console

#: the text format (as ``cami`` has always logged)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the loggers that follow the configured level (the rest stay at WARNING above DEBUG)
OWN_LOGGERS = ("cami", "uvicorn")
#: the logger of the lines commands print for people, in JSON mode
CONSOLE_LOGGER = "cami.console"
#: HTTP clients whose warnings repeat, with a traceback, what CAMI then says in one line naming
#: the backend and the fix (a ClickHouse server or S3 endpoint that does not answer): errors only,
#: unless ``-v`` or ``debug``
RETRYING_CLIENTS = ("urllib3.connectionpool", "clickhouse_connect")  # (clickhouse_connect sets "urllib3")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: attributes every LogRecord has: anything else on a record came as ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
#: extras that only repeat the message (uvicorn's coloured copy)
_NOT_EXTRA = frozenset({"color_message"})
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def rfc3339(created: float) -> str:
    """``2025-03-01T09:30:00.123Z``: a record's time, UTC, milliseconds."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object a record, on one line: time, level, logger, message, exc, the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in _NOT_EXTRA and not name.startswith("_") and name not in entry:
                entry[name] = value
        try:
            return json.dumps(entry, ensure_ascii=False, default=str, allow_nan=False)
        except ValueError:  # a NaN or an infinity among the extras: no JSON number
            return json.dumps({k: _finite(v) for k, v in entry.items()}, ensure_ascii=False, default=str)


def _finite(value: Any) -> Any:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


class ConsoleLines(io.TextIOBase):
    """stderr in JSON mode: each line written to it (rich's console, ``sys.stderr.write``) becomes a
    JSON object of :data:`CONSOLE_LOGGER` on the real stream; the log handler writes there itself."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter, level: int = logging.INFO) -> None:
        super().__init__()
        self._stream = stream
        self._formatter = formatter
        self._level = level
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # no colours, no cursor moves, no progress animation

    def fileno(self) -> int:
        return self._stream.fileno()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._emit(self._pending)
                self._pending = ""
            self._stream.flush()

    def _emit(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if not line.strip():
            return
        record = logging.LogRecord(CONSOLE_LOGGER, self._level, "", 0, line, None, None)
        self._stream.write(self._formatter.format(record) + "\n")
        self._stream.flush()


def configure_logging(
    level: str = "", log_format: str = "text", *, verbose: bool = False, service: bool = False
) -> Callable[[], None]:
    """Set up the root logger's one handler on stderr for a ``cami`` command; returns what undoes
    the parts that outlive logging (stderr and the thread hook in JSON mode)."""
    chosen = LEVELS[level] if level else (logging.INFO if service else logging.WARNING)
    if verbose:
        chosen = min(chosen, logging.INFO)
    everything = verbose or chosen <= logging.DEBUG
    stream = sys.stderr
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logging.basicConfig(level=chosen if everything else max(chosen, logging.WARNING), handlers=[handler], force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(chosen)
    for name in RETRYING_CLIENTS:
        logging.getLogger(name).setLevel(logging.NOTSET if everything else max(chosen, logging.ERROR))
    if log_format != "json":
        return lambda: None
    logging.captureWarnings(True)
    lines = ConsoleLines(stream, formatter)
    sys.stderr = lines
    soft_wrap = console.soft_wrap
    console.soft_wrap = True  # one message, one line: no wrapping at 80 columns
    thread_hook = threading.excepthook
    threading.excepthook = _log_thread_exception

    def undo() -> None:
        lines.flush()
        sys.stderr = stream
        console.soft_wrap = soft_wrap
        threading.excepthook = thread_hook
        logging.captureWarnings(False)

    return undo


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    logging.getLogger("cami").error("uncaught exception in %s", name, exc_info=exc_info)
