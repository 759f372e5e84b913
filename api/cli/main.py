"""The ``cami`` command: the parser and the dispatch; each subcommand is one module of
:mod:`api.cli` with ``register(subparsers)`` and its ``cmd_*`` functions.

Exit codes: 0 success, 1 the operation failed (message on stderr), 2 usage error.
``--json`` prints machine-readable output on stdout for scripts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from api.cli import audit, demo, import_, replay, schemas, serve, status, users, workers
from api.cli.output import console

#: every subcommand, in the order ``cami --help`` lists them
COMMANDS = (demo, status, schemas, workers, serve, import_, users, replay, audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cami",
        description="CAMI, the regional Central Archive of Medical Images (event-sourced DICOM archive).",
        epilog="Backends come from CAMI_EVENT_LOG, CAMI_BLOBS, CAMI_CLICKHOUSE (see README, Configuration).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (stderr)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for command in COMMANDS:
        command.register(sub)
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
