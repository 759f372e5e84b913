"""``cami replay``: drop projections' tables and rebuild them from offset 0 of the log.

The engine (what a rebuild does, dead letters, live processors' offsets) is
:mod:`projections.replay`; this module is the command around it: arguments, progress, the result.

In embedded mode the ClickHouse directory (chdb) is locked by the process that owns it, so a
running ``cami serve``/``cami workers`` must be stopped first (the command says so if it is not).

Exit codes: 0 rebuilt; 1 failed (the tables may be partly rebuilt: run it again); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from api.cli.output import count
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
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="draw a progress bar")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

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
        progress = Progress(
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
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return 0
    table = Table(title=f"Rebuilt {', '.join(result.projections)} from offset 0")
    table.add_column("table")
    table.add_column("rows written", justify="right")
    table.add_column("rows now", justify="right")
    for name, rows in result.table_rows.items():
        table.add_row(name, str(result.rows_written.get(name, 0)), str(rows))
    Console().print(table)
    Console().print(
        f"{result.events} events in {result.seconds:.1f} s ({result.events_per_second:,.0f} events/s)"
        + (f", {result.undecodable} undecodable skipped" if result.undecodable else "")
        + (
            f"; dead letters retried: {sum(result.retried_dead_letters.values())}"
            if result.retried_dead_letters
            else ""
        )
        + (
            "; still failing (dead letters): " + ", ".join(f"{p} {n}" for p, n in result.dead_letters.items())
            if result.dead_letters
            else ""
        )
        + (
            f"; live groups moved to the rebuild's end: {', '.join(result.aligned_groups)}"
            if result.aligned_groups
            else ""
        )
    )
    return 0
