"""``cami demo``: the archive on embedded defaults with a synthetic region sending to it, then
what each backend holds (the engine is :mod:`api.demo.run`)."""

from __future__ import annotations

import argparse
from typing import Any

from api.cli.output import console, out, print_json
from api.cli.status import local_state, render_state
from api.config import Settings
from api.demo.run import run_demo


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="start the archive on embedded defaults with synthetic data and report it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    summary = run_demo(settings, console=console)
    state = local_state(settings)
    if args.json:
        print_json({"demo": summary, "state": state})
    else:
        render_state(state)
        out.print(f"Demo data in [bold]{settings.home}[/bold]; run [bold]cami status[/bold] to see it again.")
    return 0
