"""``cami workers``: the stream processors (Faust agents on Kafka with a ClickHouse server,
threads otherwise). With the embedded warehouse ``cami serve`` runs them itself; ``cami workers``
is then for a node that serves nothing, and cannot run beside it (the warehouse has one owner)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from api.bootstrap import bootstrap
from api.cli.output import console
from api.config import ConfigError, Settings
from streams.processing import EmbeddedRunner, Processor, Sink
from streams.sinks import JsonLinesSink


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("workers", help="run the stream processors (Faust on Kafka, threads on the embedded log)")
    p.add_argument("--processor", action="append", help="run only this processor (repeatable)")
    p.add_argument("--jsonl", help="write rows to this JSON-lines file instead of ClickHouse")
    p.add_argument("--loglevel", default="warning", help="Faust worker log level")
    p.set_defaults(func=cmd_workers)


def cmd_workers(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        if settings.production:  # the analytics pseudonyms are made here too
            settings.check_production()
    except ConfigError as exc:
        sys.stderr.write(f"cami workers: {exc}\n")
        return 1
    archive = bootstrap(settings)
    bindings: list[tuple[Processor, Sink]]
    if args.jsonl:
        sink = JsonLinesSink(Path(args.jsonl))
        bindings = [(p, sink) for p in archive.processors() if not args.processor or p.name in args.processor]
    else:
        bindings = archive.bindings(args.processor or ())
    if archive.runs_on_faust:
        from streams.faust_app import create_app, run_worker
        from streams.kafka import KafkaEventLog

        assert isinstance(archive.event_log, KafkaEventLog)
        app = create_app(
            archive.event_log.bootstrap, bindings, datadir=settings.home / "faust", names=archive.event_log.names
        )
        console.print(f"faust worker: {', '.join(p.name for p, _ in bindings)} on {archive.event_log.bootstrap}")
        run_worker(app, loglevel=args.loglevel)
        return 0
    runner = EmbeddedRunner(archive.event_log, bindings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runner.start()
    console.print(f"embedded workers: {', '.join(p.name for p, _ in bindings)} (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    runner.stop()
    archive.close()
    return 0
