"""Rebuild projections while they keep answering: into shadow tables, then swapped in.

``cami replay`` (:mod:`projections.replay`) drops a projection's tables first, so viewers see
empty or partial answers until the rebuild ends. Here the live tables are left alone while the
rebuild runs:

1. **Shadows.** Each warehouse table ``t`` of a projection is created again as ``t__rebuild``
   (its own DDL with the name changed) and the rows go there; the query model is rebuilt into a
   second store beside the live one (:meth:`projections.query_model.store.QueryStore.shadow`).
   The projection's open dead letters are marked resolved, as in a plain rebuild: every event is
   applied again.
2. **Full pass.** The log is read from offset 0 to its end ``E0``, taken once the shadows exist.
3. **Catch-up passes.** Meanwhile the archive kept receiving; ``[E0, E1)`` is applied to the
   shadows, then ``[E1, E2)``..., until what came in during a pass is at most ``catch_up_until``
   events (or ``max_catch_ups`` passes ran: a log growing faster than the rebuild reads it).
4. **Swap.** Each warehouse table is exchanged with its shadow in one statement (``EXCHANGE
   TABLES``: both names always exist, a query sees the old rows or the new, never none) and the
   old rows are dropped; the query store's tables are refilled from the shadow in one
   transaction (readers see the old rows until it commits).
5. **Final pass.** The live processors kept writing the *old* tables until the swap; whatever
   they wrote after the last catch-up's end ``En`` is gone with them. So ``[En, now)`` is applied
   to the swapped-in tables. Rows are keyed by the event's log position, so the live processor
   writing some of the same events again leaves the same rows.

The live processors' consumer groups are not touched: they never stopped, and what they apply
again is absorbed by the tables' keys.

Stateful folds (the audit chain) start from nothing in the rebuild, exactly as in a plain one, so
they produce the same rows as the live fold did.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections import dead_letters
from projections.replay import (
    DEFAULT_BATCH,
    OwnStoreSink,
    RebuildResult,
    apply_scan,
    declared,
    table_rows,
)
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse, WarehouseError
from streams.log import EventLog
from streams.processing import DeadLetter, Processor, Row, Sink

log = logging.getLogger("cami.rebuild")

#: suffix of a shadow table's name
SHADOW = "__rebuild"
#: a catch-up pass that found at most this many new events is the last before the swap
CATCH_UP_UNTIL = 1_000
MAX_CATCH_UPS = 10

Offsets = dict[str, dict[int, int]]

# the table named by CREATE TABLE / ALTER TABLE / DROP TABLE [IF [NOT] EXISTS] <name>
_TABLE_NAME = re.compile(r"(\bTABLE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?)([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


def shadow_name(table: str) -> str:
    return f"{table}{SHADOW}"


def shadow_statement(statement: str, tables: Iterable[str]) -> str:
    """``statement`` (a projection's DDL) about the shadow of each of ``tables`` it names."""
    names = set(tables)

    def rename(match: re.Match[str]) -> str:
        name = match.group(2)
        return match.group(1) + (shadow_name(name) if name in names else name)

    return _TABLE_NAME.sub(rename, statement)


class ShadowSink:
    """Writes a projection's rows into the shadows of its tables."""

    def __init__(self, warehouse: Warehouse, ddl: Sequence[str], tables: Sequence[str]) -> None:
        for table in tables:
            warehouse.command(f"DROP TABLE IF EXISTS {shadow_name(table)}")  # left by an interrupted rebuild
        self._inner = WarehouseSink(warehouse, [shadow_statement(s, tables) for s in ddl])
        self._names = {t: shadow_name(t) for t in tables}

    def write(self, rows: Sequence[Row]) -> None:
        self._inner.write([Row(self._names.get(r.table, r.table), r.values) for r in rows])

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self._inner.write_dead_letters(letters)  # beside the live projection's: one table of letters


def exchange(warehouse: Warehouse, table: str, shadow: str) -> None:
    """``table`` now holds what ``shadow`` held; ``shadow`` is dropped with the old rows."""
    try:
        warehouse.command(f"EXCHANGE TABLES {table} AND {shadow}")
    except WarehouseError:
        # a database engine without atomic exchange (Ordinary): two renames in one statement
        warehouse.command(f"RENAME TABLE {table} TO {table}__old, {shadow} TO {table}")
        warehouse.command(f"DROP TABLE IF EXISTS {table}__old")
        return
    warehouse.command(f"DROP TABLE IF EXISTS {shadow}")


@dataclass
class Progress:
    """Where a rebuild while serving stands (read by the HTTP status and the CLI)."""

    projections: list[str]
    #: shadows, full, catch-up, swap, final, done, failed
    phase: str = "starting"
    #: events applied so far over every pass, and the events known to be ahead of the rebuild
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            elapsed = (self.finished or time.monotonic()) - self.started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = max(self.total - self.done, 0)
            return {
                "projections": self.projections,
                "phase": self.phase,
                "events_done": self.done,
                "events_total": self.total,
                "seconds": round(elapsed, 3),
                "events_per_second": round(rate, 1),
                "eta_seconds": round(left / rate, 1) if rate > 0 and self.finished is None else None,
                "error": self.error,
                "result": self.result,
            }

    def moved(self, *, phase: str | None = None, done: int = 0, more: int = 0) -> None:
        with self._lock:
            if phase is not None:
                self.phase = phase
                if phase in ("done", "failed"):
                    self.finished = time.monotonic()
            self.done += done
            self.total += more

    def ended(self, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._lock:
            self.result, self.error = result, error
            self.phase = "failed" if error else "done"
            self.finished = self.finished or time.monotonic()

    @property
    def running(self) -> bool:
        with self._lock:
            return self.finished is None


def rebuild_online(
    event_log: EventLog,
    warehouse: Warehouse,
    processors: Sequence[Processor],
    *,
    own_sinks: Mapping[str, OwnStoreSink] | None = None,
    batch_size: int = DEFAULT_BATCH,
    catch_up_until: int = CATCH_UP_UNTIL,
    max_catch_ups: int = MAX_CATCH_UPS,
    progress: Progress | None = None,
    before_swap: Callable[[], None] | None = None,
) -> RebuildResult:
    """Rebuild ``processors``' tables while the live ones keep answering (see module doc).
    ``own_sinks`` are the live sinks of projections whose tables live outside the warehouse
    (the query model): each gives a shadow of itself. ``before_swap`` is called once the
    shadows have caught up (tests use it to write while the swap is pending)."""
    started = time.perf_counter()
    progress = progress or Progress([p.name for p in processors])
    result = RebuildResult([p.name for p in processors])
    own = {p.name: own_sinks[p.name] for p in processors if own_sinks and p.name in own_sinks}
    tables = {p.name: declared(p, "tables") for p in processors if p.name not in own}
    ddl = {p.name: declared(p, "ddl") for p in processors if p.name not in own}

    progress.moved(phase="shadows")
    shadows: dict[str, Sink] = {}
    live: dict[str, Sink] = {}
    own_shadows: dict[str, OwnStoreSink] = {}
    try:
        for processor in processors:
            if processor.name in own:
                own_shadows[processor.name] = shadows[processor.name] = own[processor.name].shadow()
                live[processor.name] = own[processor.name]
            else:
                live[processor.name] = WarehouseSink(warehouse, ddl[processor.name])  # creates them on a first run
                shadows[processor.name] = ShadowSink(warehouse, ddl[processor.name], tables[processor.name])
            retried = dead_letters.resolve(warehouse, processor.name)
            if retried:
                result.retried_dead_letters[processor.name] = retried

        topics = list(dict.fromkeys(t for p in processors for t in p.topics))

        def done(n: int) -> None:
            progress.moved(done=n)

        def apply(starts: Offsets, ends: Offsets, sinks: Mapping[str, Sink], phase: str) -> None:
            progress.moved(phase=phase, more=_between(starts, ends))
            apply_scan(event_log, starts, ends, processors, sinks, result, batch_size, done)

        ends: Offsets = {t: event_log.end_offsets(t) for t in topics}
        apply({}, ends, shadows, "full")
        for _ in range(max_catch_ups):
            newer = {t: event_log.end_offsets(t) for t in topics}
            behind = _between(ends, newer)
            if behind == 0:
                break
            apply(ends, newer, shadows, "catch-up")
            ends = newer
            if behind <= catch_up_until:
                break
        if before_swap is not None:
            before_swap()

        progress.moved(phase="swap")
        for processor in processors:
            if processor.name in own:
                own[processor.name].swap_in(own_shadows.pop(processor.name))
            else:
                for table in tables[processor.name]:
                    exchange(warehouse, table, shadow_name(table))

        final = {t: event_log.end_offsets(t) for t in topics}
        apply(ends, final, live, "final")
        result.ends = final
    except BaseException:
        progress.moved(phase="failed")
        for sink in own_shadows.values():
            sink.discard()
        for names in tables.values():
            for table in names:
                # if the warehouse is what failed, the next rebuild drops the shadow first
                with contextlib.suppress(WarehouseError):
                    warehouse.command(f"DROP TABLE IF EXISTS {shadow_name(table)}")
        raise

    result.table_rows.update(table_rows(warehouse, processors, own, tables))
    result.seconds = time.perf_counter() - started
    progress.moved(phase="done")
    return result


def _between(starts: Offsets, ends: Offsets) -> int:
    return sum(
        max(end - starts.get(topic, {}).get(partition, 0), 0)
        for topic, per_partition in ends.items()
        for partition, end in per_partition.items()
    )


class RebuildRunning(RuntimeError):
    """A rebuild while serving is already running (one at a time: they would share shadows)."""


class OnlineRebuilds:
    """Rebuilds while serving, one at a time, each in a thread of the process that owns the
    warehouse and the query store (``cami serve``: the embedded ClickHouse directory can be
    opened by one process only). ``processors(names)`` builds fresh processors (the live ones keep
    their state); ``own_sinks(processors)`` gives the live sinks of those outside the warehouse."""

    def __init__(
        self,
        event_log: EventLog,
        warehouse: Callable[[], Warehouse],
        processors: Callable[[Sequence[str]], list[Processor]],
        own_sinks: Callable[[Sequence[Processor]], Mapping[str, OwnStoreSink]],
    ) -> None:
        self._event_log = event_log
        self._warehouse = warehouse
        self._processors = processors
        self._own_sinks = own_sinks
        self._lock = threading.Lock()
        self._current: Progress | None = None

    def current(self) -> Progress | None:
        return self._current

    def start(self, names: Sequence[str], batch_size: int = DEFAULT_BATCH) -> Progress:
        """Start rebuilding ``names`` (empty: every projection); ValueError for an unknown name."""
        processors = self._processors(names)
        with self._lock:
            if self._current is not None and self._current.running:
                raise RebuildRunning(f"a rebuild of {', '.join(self._current.projections)} is running")
            progress = self._current = Progress([p.name for p in processors])
        threading.Thread(
            target=self._run, args=(processors, progress, batch_size), name="cami-rebuild", daemon=True
        ).start()
        return progress

    def _run(self, processors: list[Processor], progress: Progress, batch_size: int) -> None:
        try:
            result = rebuild_online(
                self._event_log,
                self._warehouse(),
                processors,
                own_sinks=self._own_sinks(processors),
                batch_size=batch_size,
                progress=progress,
            )
        except Exception as exc:  # reported through the status, which the CLI polls
            log.exception("rebuild of %s failed", ", ".join(progress.projections))
            progress.ended(error=f"{type(exc).__name__}: {exc}")
        else:
            progress.ended(result=result.to_dict())
