"""``cami demo``: the archive with a synthetic region sending to it, then what each backend holds
(the engine is :mod:`api.demo.run`). On real servers (Kafka, S3, ClickHouse) it asks for ``--yes``
and writes only to places of its own (:mod:`api.demo.place`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.markup import escape

from api.cli.output import console, out, print_json
from api.cli.status import local_state, render_state
from api.config import Settings
from api.demo.place import DemoPlace, demo_place, see_again_command
from api.demo.run import run_demo


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="store synthetic studies through the archive and report what it holds"
        " (on real servers only with --yes, in topics and a bucket of its own)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--yes",
        action="store_true",
        help="when Kafka, S3 or a ClickHouse server is configured: go ahead, writing to the demo's own"
        " topics (<prefix>-demo.*), bucket (<bucket>-demo) and $CAMI_HOME/demo",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    place = demo_place(settings)
    if place.needs_consent and not args.yes:
        _refuse(place)
        return 1
    for line in place.writes if place.needs_consent else ():
        console.print(f"The demo writes to {escape(line)}")
    settings = place.settings
    summary = run_demo(settings, console=console)
    state = local_state(settings)
    # the demo ran the projections itself (a consumer group per projection): their lag on its own
    # topics is the one to report, whichever runner the configured archive uses
    state["projection_lag"] = summary["projection_lag"]
    summary["place"] = {"servers": list(place.servers), "writes": list(place.writes), "see_again": place.see_again}
    if args.json:
        print_json({"demo": summary, "state": state})
    else:
        render_state(state)
        again = escape(see_again_command(place))
        # one line, never wrapped: the command is copied as it is
        home = escape(str(settings.home))
        out.print(f"Demo data in [bold]{home}[/bold]; to see it again: [bold]{again}[/bold]", soft_wrap=True)
    return 0


def _refuse(place: DemoPlace) -> None:
    """Say where the demo would write, and that it does so only with --yes."""
    lines = [
        f"cami demo: the configured backends include real servers ({'; '.join(place.servers)}):"
        " synthetic studies written there would stay for good.",
        "With --yes the demo writes only to places of its own:",
        *(f"  {line}" for line in place.writes),
        "The archive's own topics, bucket and read models are not touched.",
    ]
    sys.stderr.write("\n".join(lines) + "\n")
