"""The one place the Kafka client's (librdkafka's) log lines and errors go.

While a broker is down librdkafka reports every reconnection attempt of every client (the
producer, the admin client, each consumer): dozens of lines a second. :class:`KafkaClientLog`
is handed to every client as its ``logger`` and ``error_cb`` and turns that into one line per
change of state, on the ``cami.kafka`` logger at WARNING::

    Kafka unreachable: no broker answers at 127.0.0.1:9092 (connection refused)
    Kafka reachable again after 12 s (127.0.0.1:9092 answers)

and, on a cluster where some brokers still answer::

    Kafka broker 127.0.0.1:9093 unreachable: connection refused (2 of 3 brokers answer)
    Kafka broker 127.0.0.1:9093 reachable again after 31 s

Before a broker has answered once (:meth:`KafkaClientLog.start`), reports are only recorded at
DEBUG: the event log waiting for its first broker says itself that it waits, and for how long.
After that, a report of a failure only raises a suspicion: a thread tries a TCP connection to
every broker it knows of once a second, and the brokers that refuse it (or do not answer within a
second) are the ones down; it stops once all answer again. So what is logged is what the brokers'
ports do, not how many clients noticed, and reports that librdkafka delivers late (a consumer's
queue is served only when it polls) change nothing. A broker that accepts connections but does not
work (hung, refusing TLS) is not seen here: the operations that need it fail with their own
errors. Everything else librdkafka says goes to DEBUG, but for fatal errors (ERROR) and other
errors (WARNING, the same error at most once in :data:`REPEAT_AFTER` seconds).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from schemas.addresses import AddressError, parse_host_port

log = logging.getLogger("cami.kafka")

#: seconds before the same non-connection error is logged again
REPEAT_AFTER = 300.0
#: seconds between two rounds of connection attempts while a broker is suspected down
PROBE_EVERY = 1.0
#: librdkafka errors that mean a broker could not be reached (handled by the state, not logged)
CONNECTION_ERRORS = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
    }
)

# "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)",
# "GroupCoordinator: 127.0.0.1:9092: Disconnected ...", "ssl://[::1]:9093/bootstrap: ..."
_BROKER_LINE = re.compile(
    r"^(?:\w*Coordinator: )?(?:\w+://)?(?P<address>\[[0-9A-Fa-f:.]+\]:\d+|[^\s:/\[\]]+:\d+)(?:/[\w-]+)?: (?P<what>.*)$"
)
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+\)\s*$")

#: ``probe(address)``: None when a TCP connection to ``host:port`` succeeds, else why not
Probe = Callable[[str], str | None]


def tcp_probe(address: str, timeout: float = 1.0) -> str | None:
    """Try a TCP connection to ``host:port`` (closed at once): None when it is accepted."""
    try:
        host, port = parse_host_port(address)
    except AddressError as exc:
        return str(exc)
    try:
        with socket.create_connection((host, port or 9092), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def parse_broker_line(text: str) -> tuple[str, str] | None:
    """``(host:port, reason)`` of a librdkafka line about a broker connection, else None."""
    match = _BROKER_LINE.match(text.strip())
    if match is None:
        return None
    return match.group("address"), reason_of(match.group("what"))


def reason_of(what: str) -> str:
    """librdkafka's account of a failed connection, short: ``connection refused``,
    ``disconnected: connection closed by peer``..."""
    what = _AFTER.sub("", what)
    if " failed: " in what:
        what = what.rsplit(" failed: ", 1)[1]
    what = what.split(": receive 0 after", 1)[0]
    return what[:1].lower() + what[1:] if what else "unreachable"


@dataclass
class _Broker:
    #: the last reason a client or the probe gave
    reason: str = ""
    #: since when it has been down (None: it answers)
    down_since: float | None = None


class KafkaClientLog:
    """``logger`` and ``error_cb`` of every client of one Kafka event log (see the module doc)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        logger: logging.Logger = log,
        probe: Probe = tcp_probe,
        clock: Callable[[], float] = time.monotonic,
        every: float = PROBE_EVERY,
        watch: bool = True,
        started: bool = False,
    ) -> None:
        """``watch``: start the thread that probes when a report comes in (else the caller runs
        the rounds, :meth:`check`); ``started``: a broker has answered (see :meth:`start`)."""
        self.bootstrap = bootstrap
        self._watching = watch
        self._log = logger
        self._probe = probe
        self._clock = clock
        self._every = every
        self._lock = threading.Lock()
        self._brokers: dict[str, _Broker] = {}
        for address in bootstrap.split(","):
            if address.strip():
                self._brokers[address.strip()] = _Broker()
        #: since when no broker has answered (None: at least one does)
        self._outage_since: float | None = None
        self._suspected = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors_logged: dict[tuple[int, str], float] = {}
        #: whether a broker has answered once: before, the log waiting for its first broker says
        #: what happens (reports are only recorded at DEBUG, nothing is probed)
        self.started = started

    # -- what librdkafka calls -------------------------------------------------------------------------
    def log(self, level: int, msg: str, *args: Any, **_: Any) -> None:
        """librdkafka's log line (``logger.log(level, "%s [%s] %s", facility, client, text)``)."""
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        self._log.debug("librdkafka: %s", text)
        facility = str(args[0]) if args else ""
        if facility == "FAIL" and len(args) >= 3:
            self._report(str(args[2]))

    def error(self, err: KafkaError) -> None:
        """librdkafka's error callback (``error_cb``)."""
        code = err.code()
        if code in CONNECTION_ERRORS:
            self._log.debug("librdkafka error: %s", err.str())
            self._report(err.str())
            return
        if err.fatal():
            self._log.error("Kafka client failed for good (%s): %s", err.name(), err.str())
            return
        now = self._clock()
        key = (code, err.str())
        with self._lock:
            last = self._errors_logged.get(key)
            if last is not None and now - last < REPEAT_AFTER:
                return
            self._errors_logged[key] = now
        self._log.warning("Kafka client error (%s): %s", err.name(), err.str())

    # -- what the event log tells it ---------------------------------------------------------------------
    def brokers(self, addresses: Iterable[str]) -> None:
        """The cluster's brokers as a metadata answer named them (``host:port``)."""
        with self._lock:
            for address in addresses:
                self._brokers.setdefault(address, _Broker())

    def start(self) -> None:
        """A broker has answered: from now on, changes are logged (before, reports are only
        recorded at DEBUG: the log waiting for its first broker says what happens)."""
        self.started = True

    def close(self) -> None:
        self._closed.set()
        self._suspected.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # -- state ---------------------------------------------------------------------------------------------
    def _report(self, text: str) -> None:
        """A client says a connection failed: suspect it (the probe decides)."""
        if not self.started or self._closed.is_set():
            return
        parsed = parse_broker_line(text)
        with self._lock:
            if parsed is not None:
                address, reason = parsed
                self._brokers.setdefault(address, _Broker()).reason = reason
            self._suspected.set()
            if self._thread is None and self._watching:
                self._thread = threading.Thread(target=self._watch, name="cami-kafka-watch", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        """Rounds of connection attempts (at most one per :data:`PROBE_EVERY`), until every broker
        answers and no new report came in."""
        while not self._closed.is_set():
            some_down = self.check()
            self._closed.wait(self._every)
            with self._lock:
                if not some_down and not self._suspected.is_set():
                    self._thread = None
                    return
        with self._lock:
            self._thread = None

    def check(self) -> bool:
        """One round: try every known broker, log what changed; True while some broker is down."""
        with self._lock:
            addresses = list(self._brokers)
        answers = {address: self._probe(address) for address in addresses}
        now = self._clock()
        lines: list[str] = []
        with self._lock:
            before = {a for a, b in self._brokers.items() if b.down_since is not None}
            for address, failure in answers.items():
                broker = self._brokers[address]
                if failure is None:
                    continue
                if broker.down_since is None:
                    broker.down_since = now
                    broker.reason = broker.reason or failure
            down = {a for a, answer in answers.items() if answer is not None}
            everyone = set(answers)
            came_back = sorted(before - down)
            went_down = sorted(down - before)
            if came_back:
                if self._outage_since is not None:
                    lines.append(
                        f"Kafka reachable again after {now - self._outage_since:.0f} s ({', '.join(came_back)} answers)"
                    )
                    self._outage_since = None
                else:
                    for address in came_back:
                        since = self._brokers[address].down_since or now
                        lines.append(f"Kafka broker {address} reachable again after {now - since:.0f} s")
            for address in came_back:
                self._brokers[address].down_since = None
                self._brokers[address].reason = ""
            if down and down == everyone and self._outage_since is None:
                self._outage_since = now
                reasons = "; ".join(sorted({self._brokers[a].reason for a in down}))
                lines.append(f"Kafka unreachable: no broker answers at {', '.join(sorted(down))} ({reasons})")
            elif went_down and down != everyone:
                answering = len(everyone) - len(down)
                for address in went_down:
                    reason = self._brokers[address].reason
                    lines.append(
                        f"Kafka broker {address} unreachable: {reason} ({answering} of {len(everyone)} brokers answer)"
                    )
            for address in everyone - down:
                self._brokers[address].reason = ""  # a stale report about a broker that answers
            self._suspected.clear()
        for line in lines:
            self._log.warning("%s", line)
        return bool(down)

    @property
    def down(self) -> list[str]:
        """The brokers found down by the last round."""
        with self._lock:
            return sorted(a for a, b in self._brokers.items() if b.down_since is not None)
