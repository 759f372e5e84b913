"""``cami replay``: drop projections' tables and rebuild them from offset 0 of the log.

The engine (what a rebuild does, dead letters, live processors' offsets) is
:mod:`projections.replay`; this module is the command around it: arguments, progress, the result.

In embedded mode the ClickHouse directory (chdb) is locked by the process that owns it, so a
running ``cami serve``/``cami workers`` must be stopped first (the command says so if it is not).

``--online`` rebuilds while the archive keeps serving instead: the running ``cami serve`` (which
owns the tables) rebuilds into shadow tables and swaps them in (:mod:`projections.rebuild_online`);
this command asks it to over HTTP (``POST /api/rebuilds``, an administrator's token) and follows
its progress until it is done.

Exit codes: 0 rebuilt; 1 failed (the tables may be partly rebuilt: run it again; online: the live
tables are untouched, run it again); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from api.cli.output import archive_url, count
from projections.replay import DEFAULT_BATCH, rebuild
from projections.warehouse import WarehouseError


# -- the command -------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="drop projections' tables and rebuild them from offset 0 of the event log",
        description=(
            "Drop the tables of the named projections (default: all), recreate them and rebuild them by "
            "replaying their topics from offset 0. Live processors' offsets are not disturbed; on the "
            "embedded log each rebuilt projection's group is moved forward to where the rebuild stopped."
        ),
        epilog="Exit codes: 0 rebuilt; 1 failed (run it again); 2 usage error.",
    )
    p.add_argument(
        "--projection",
        action="append",
        metavar="NAME",
        help="projection to rebuild (repeatable; 'all' or none given: every projection)",
    )
    p.add_argument("--batch-size", type=count(1), default=DEFAULT_BATCH, help="events per write (default %(default)s)")
    p.add_argument(
        "--lanes",
        type=count(0),
        default=0,
        help="read, decode and fold in this many worker processes, each over a share of the log's "
        "partitions (0: in this process; default %(default)s)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="rebuild inside the running `cami serve` into shadow tables, swapped in at the end: "
        "viewers keep their answers throughout (needs --token-file)",
    )
    p.add_argument(
        "--url",
        type=archive_url,
        help="with --online: the archive's HTTP address (default: from CAMI_HTTP_HOST/PORT/TLS)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="with --online: a file holding an administrator's bearer token ('-': read it from stdin)",
    )
    p.add_argument("--ca", metavar="FILE", help="with --online: the CA certificate to trust for HTTPS")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="draw a progress bar")
    p.set_defaults(func=cmd_replay)


def _progress_bar(console: Any, show: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("replay {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>10} ev/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    if args.online:
        return _replay_online(args)
    from rich.console import Console

    from api.bootstrap import bootstrap
    from api.config import Settings
    from projections.registry import PROJECTIONS, ProjectionConfig
    from projections.replay_lanes import Lanes

    console = Console(stderr=True, force_terminal=True if args.progress else None)
    names = tuple(n for n in (args.projection or ()) if n != "all")
    unknown = sorted(set(names) - set(PROJECTIONS))
    if unknown:
        console.print(f"cami replay: unknown projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}")
        return 2
    settings = Settings.from_env()
    archive = bootstrap(settings)
    try:
        processors = archive.processors(names)
        try:
            warehouse = archive.warehouse
        except WarehouseError as exc:
            raise RuntimeError(
                f"{exc} (in embedded mode stop `cami serve`/`cami workers` first: they own the ClickHouse directory)"
            ) from exc
        show = console.is_terminal if args.progress is None else bool(args.progress)
        progress = _progress_bar(console, show)
        task = progress.add_task(", ".join(p.name for p in processors), total=None, rate="-")
        began = time.perf_counter()
        done = 0

        def start(total: int) -> None:
            progress.update(task, total=total)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - began, 1e-9)
            progress.update(task, advance=n, rate=f"{rate:,.0f}")

        with progress:
            result = rebuild(
                archive.event_log,
                warehouse,
                processors,
                batch_size=args.batch_size,
                on_start=start,
                on_progress=advance,
                own_sinks=archive.own_sinks(processors),
                lanes=Lanes(
                    settings.event_log_url,
                    settings.warehouse_url,
                    args.lanes,
                    ProjectionConfig(pseudonym_key=settings.pseudonym_key),
                    settings.query_store_url,
                )
                if args.lanes
                else None,
            )
    finally:
        archive.close()
    return _report(result.to_dict(), args.json)


def _report(result: dict[str, Any], as_json: bool, how: str = "from offset 0") -> int:
    """The rebuild's result (:meth:`projections.replay.RebuildResult.to_dict`) as a table, or JSON."""
    from rich.console import Console
    from rich.table import Table

    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
        return 0
    table = Table(title=f"Rebuilt {', '.join(result['projections'])} {how}")
    table.add_column("table")
    table.add_column("rows written", justify="right")
    table.add_column("rows now", justify="right")
    for name, rows in result["table_rows"].items():
        table.add_row(name, str(result["rows_written"].get(name, 0)), str(rows))
    Console().print(table)
    retried, failing, aligned = result["retried_dead_letters"], result["dead_letters"], result["aligned_groups"]
    Console().print(
        f"{result['events']} events in {result['seconds']:.1f} s ({result['events_per_second']:,.0f} events/s)"
        + (f", {result['undecodable']} undecodable skipped" if result["undecodable"] else "")
        + (f"; dead letters retried: {sum(retried.values())}" if retried else "")
        + ("; still failing (dead letters): " + ", ".join(f"{p} {n}" for p, n in failing.items()) if failing else "")
        + (f"; live groups moved to the rebuild's end: {', '.join(aligned)}" if aligned else "")
    )
    return 0


# -- online: inside the running ``cami serve`` ---------------------------------------------------
#: seconds between two looks at the running rebuild's progress
POLL = 0.5


def _replay_online(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    from api.cli.remote import default_url, read_token

    console = Console(stderr=True, force_terminal=True if args.progress else None)
    if args.token_file is None:
        console.print("cami replay --online: --token-file is needed (an administrator's token: cami users add)")
        return 2
    try:
        token = read_token(args.token_file)
    except OSError as exc:
        console.print(f"cami replay --online: cannot read the token file: {exc}")
        return 2
    if token is None:
        console.print("cami replay --online: the token file is empty")
        return 2
    names = [n for n in (args.projection or ()) if n != "all"]
    url = (args.url or default_url()).rstrip("/")
    show = console.is_terminal if args.progress is None else bool(args.progress)
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, verify=args.ca or True, timeout=30.0
    ) as client:
        try:
            answer = client.post("/api/rebuilds", json={"projections": names, "batch_size": args.batch_size})
            if answer.status_code != 202:
                console.print(f"cami replay --online: {url} answered {answer.status_code}: {_detail(answer)}")
                return 2 if answer.status_code in (400, 401, 403, 409) else 1
            state = answer.json()
            progress = _progress_bar(console, show)
            task = progress.add_task(", ".join(state["projections"]) + " (online)", total=None, rate="-")
            with progress:
                while state["phase"] not in ("done", "failed"):
                    time.sleep(POLL)
                    answer = client.get("/api/rebuilds/current")
                    answer.raise_for_status()
                    state = answer.json()
                    progress.update(
                        task,
                        total=state["events_total"] or None,
                        completed=state["events_done"],
                        rate=f"{state['events_per_second']:,.0f}",
                        description=f"{', '.join(state['projections'])} ({state['phase']})",
                    )
        except httpx.HTTPError as exc:
            console.print(f"cami replay --online: {url}: {exc}")
            return 1
    if state["phase"] == "failed":
        console.print(f"cami replay --online: the rebuild failed, the live tables are untouched: {state['error']}")
        return 1
    return _report(state["result"], args.json, "while serving (shadow tables swapped in)")


def _detail(answer: Any) -> str:
    try:
        body = answer.json()
    except ValueError:
        return str(answer.text)[:200]
    return str(body.get("detail") or body.get("error") or body)
