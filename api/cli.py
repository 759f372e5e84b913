"""The ``cami`` command.

Exit codes: 0 success, 1 the operation failed (message on stderr), 2 usage error.
``--json`` prints machine-readable output on stdout for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from api.config import Settings

console = Console(stderr=True)
out = Console()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


# -- cami schemas ------------------------------------------------------------------------------
def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.registry import registry
    from streams.topics import topic_for

    rows: list[dict[str, Any]] = [
        {
            "event_type": name,
            "version": s.current.version,
            "fingerprint": s.current.fingerprint.hex(),
            "topic": topic_for(name),
            "released": s.frozen,
            "phi_fields": sorted(s.phi_fields),
        }
        for name, s in sorted(registry().events.items())
    ]
    if args.json:
        _print_json(rows)
        return 0
    table = Table(title="Event schemas (Avro single-object encoding)")
    for col in ("event type", "version", "fingerprint", "topic", "patient data fields"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["event_type"], str(r["version"]), r["fingerprint"], r["topic"], ", ".join(r["phi_fields"]))
    out.print(table)
    return 0


# -- cami status -------------------------------------------------------------------------------
def archive_state(settings: Settings) -> dict[str, Any]:
    """What each backend holds: events per topic, blob store reachability, read-model rows."""
    from api.bootstrap import bootstrap
    from projections import dead_letters
    from projections.status import projection_lag
    from streams.topics import SOURCE_OF_TRUTH

    archive = bootstrap(settings)
    try:
        topics = {t: sum(archive.event_log.end_offsets(t).values()) for t in SOURCE_OF_TRUTH}
        lag = projection_lag(archive.event_log, archive.processors())
        catalogue = archive.warehouse
        catalogue.command(_catalogue_ddl())
        by_type = catalogue.query(
            "SELECT event_type, count() FROM (SELECT * FROM event_catalogue FINAL) GROUP BY event_type ORDER BY 1"
        ).rows
        # events a projection could not apply (it moved on after recording them): per projection,
        # how many are open and the first of them; `cami replay --projection NAME` retries them
        letters: dict[str, dict[str, Any]] = {
            name: {"open": count, "letters": dead_letters.open_letters(catalogue, name, limit=20)}
            for name, count in dead_letters.counts(catalogue).items()
        }
        return {
            "settings": settings.describe(),
            "event_log": {"backend": archive.event_log.backend, "events_per_topic": topics},
            "blobs": {"backend": archive.blobs.backend},
            "projection_lag": lag,
            "dead_letters": letters,
            "clickhouse": {
                "backend": catalogue.backend,
                "catalogue_rows": {name: count for name, count in by_type},
            },
        }
    finally:
        archive.close()


def _catalogue_ddl() -> str:
    from projections.catalogue import DDL

    return DDL


def cmd_status(args: argparse.Namespace) -> int:
    state = archive_state(Settings.from_env())
    if args.json:
        _print_json(state)
        return 0
    _render_state(state)
    return 0


def _render_state(state: dict[str, Any]) -> None:
    table = Table(title="CAMI backbone")
    table.add_column("part")
    table.add_column("backend")
    table.add_column("where")
    table.add_column("holds")
    settings = state["settings"]
    events = state["event_log"]["events_per_topic"]
    table.add_row(
        "event log",
        state["event_log"]["backend"],
        settings["event_log"],
        ", ".join(f"{t}: {n}" for t, n in events.items()),
    )
    table.add_row("blob store", state["blobs"]["backend"], settings["blobs"], "")
    rows = state["clickhouse"]["catalogue_rows"]
    table.add_row(
        "ClickHouse",
        state["clickhouse"]["backend"],
        settings["clickhouse"],
        ", ".join(f"{t}: {n}" for t, n in rows.items()) or "no rows yet",
    )
    for name, lags in state.get("projection_lag", {}).items():
        behind = sum(lags.values())
        table.add_row(f"projection {name}", "", "", f"lag {behind} events" if behind else "up to date")
    for name, letters in state.get("dead_letters", {}).items():
        first = letters["letters"][0] if letters["letters"] else {}
        where = f"{first.get('topic')}/{first.get('partition')}@{first.get('offset')}" if first else ""
        table.add_row(
            f"dead letters {name}",
            "",
            where,
            f"{letters['open']} events not applied (cami replay --projection {name} retries them)",
        )
    out.print(table)


# -- cami demo ---------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from api.demo.run import run_demo

    settings = Settings.from_env()
    summary = run_demo(settings, console=console)
    state = archive_state(settings)
    if args.json:
        _print_json({"demo": summary, "state": state})
    else:
        _render_state(state)
        out.print(f"Demo data in [bold]{settings.home}[/bold]; run [bold]cami status[/bold] to see it again.")
    return 0


# -- cami workers ------------------------------------------------------------------------------
def cmd_workers(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap
    from api.config import ConfigError
    from streams.processing import EmbeddedRunner, Processor, Sink
    from streams.sinks import JsonLinesSink

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
    if archive.event_log.backend == "kafka":
        from streams.faust_app import create_app, run_worker
        from streams.kafka import KafkaEventLog

        assert isinstance(archive.event_log, KafkaEventLog)
        app = create_app(archive.event_log.bootstrap, bindings, datadir=settings.home / "faust")
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


# -- cami serve --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from api.bootstrap import bootstrap
    from api.config import ConfigError
    from streams.processing import EmbeddedRunner

    try:
        settings = Settings.from_env()
        if args.production and not settings.production:
            settings = replace(settings, production=True)
        if settings.production:
            settings.check_production()
    except ConfigError as exc:
        sys.stderr.write(f"cami serve: {exc}\n")
        return 1
    if args.dicom_tls_port is not None and not settings.tls.enabled:
        raise ValueError("--dicom-tls-port needs CAMI_TLS_CERT (and CAMI_TLS_KEY): see README, Configuration")
    archive = bootstrap(settings)
    scp = archive.storage_scp(port=args.dicom_port, tls_port=args.dicom_tls_port)
    runner = None
    if archive.event_log.backend == "embedded":
        # one process owns the embedded ClickHouse directory: the processors run here
        runner = EmbeddedRunner(archive.event_log, archive.bindings())
        runner.start()
    scp.start()
    from api.http import serve_http

    http = serve_http(archive)  # DICOMweb STOW-RS and the reports API, CAMI_HTTP_HOST:CAMI_HTTP_PORT
    senders = archive.senders()
    pilot = ", pilot mode: unknown callers accepted" if senders.accept_unknown else ""
    known = len(senders.senders)
    ports = ([f"{scp.port}"] if scp.plain else []) + ([f"{scp.tls_port} (TLS)"] if scp.tls_port is not None else [])
    where = f"{senders.ae_title} on {scp.host}:{', '.join(ports)}"
    console.print(f"CAMI DICOM (storage, commitment, Q/R) {where} ({known} senders{pilot})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"CAMI HTTP (DICOMweb, study pages, reports) on {http.url}")
    console.print(f"MIS link: {http.url}/study?patient=<PatientID>&study=<StudyInstanceUID>")
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    http.stop()
    scp.stop()
    if runner is not None:
        runner.stop()
    archive.close()
    return 0


#: modules that add their own subcommands with ``register(subparsers)``
COMMAND_MODULES: list[str] = ["api.import_command", "api.users_command", "api.replay_command", "api.audit_command"]


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cami",
        description="CAMI, the regional Central Archive of Medical Images (event-sourced DICOM archive).",
        epilog="Backends come from CAMI_EVENT_LOG, CAMI_BLOBS, CAMI_CLICKHOUSE (see README, Configuration).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (stderr)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="start the archive on embedded defaults with synthetic data and report it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="show each backend and what it holds")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("schemas", help="list event types, schema versions and fingerprints")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("workers", help="run the stream processors (Faust on Kafka, threads on the embedded log)")
    p.add_argument("--processor", action="append", help="run only this processor (repeatable)")
    p.add_argument("--jsonl", help="write rows to this JSON-lines file instead of ClickHouse")
    p.add_argument("--loglevel", default="warning", help="Faust worker log level")
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("serve", help="run the archive's network services (DICOM Storage SCP with commitment)")
    p.add_argument("--dicom-port", type=int, help="DICOM port (default CAMI_DICOM_PORT or 11112)")
    p.add_argument(
        "--dicom-tls-port", type=int, help="DICOM TLS port (default CAMI_DICOM_TLS_PORT or 2762; needs CAMI_TLS_CERT)"
    )
    p.add_argument(
        "--production",
        action="store_true",
        help="production mode (as CAMI_ENV=production): refuse to start with development secrets",
    )
    p.set_defaults(func=cmd_serve)

    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for people; the traceback only with -v
        if args.verbose:
            console.print_exception()
        console.print(f"[red]cami {args.command}: {type(exc).__name__}: {exc}[/red]")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
