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

from rich.text import Text

from api.cli.agent import register as agent
from api.cli.audit import register as audit
from api.cli.demo import register as demo
from api.cli.import_ import register as import_
from api.cli.monitor import register as monitor
from api.cli.output import console
from api.cli.replay import register as replay
from api.cli.schemas import register as schemas
from api.cli.serve import register as serve
from api.cli.status import register as status
from api.cli.transfers import register as transfers
from api.cli.users import register as users
from api.cli.workers import register as workers
from api.config import ConfigError
from streams.errors import OperatorError

#: every subcommand (each module's ``register``), in the order ``cami --help`` lists them
COMMANDS = (demo, status, schemas, workers, serve, import_, users, replay, audit, transfers, agent, monitor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cami",
        description="CAMI, the regional Central Archive of Medical Images (event-sourced DICOM archive).",
        epilog="Backends come from CAMI_EVENT_LOG, CAMI_BLOBS, CAMI_CLICKHOUSE (see README, Configuration).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (stderr)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for register in COMMANDS:
        register(sub)
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
    except (ConfigError, OperatorError) as exc:
        # a bad setting (one line naming it and what is allowed, nothing opened) or a backend the
        # operator must mend (credentials refused, a broker that never came up): the message as it is
        if args.verbose:
            console.print_exception()
        sys.stderr.write(f"cami {args.command}: {_one_line(exc)}\n")
        return 1
    except Exception as exc:  # one clear line for people; the traceback only with -v
        if args.verbose:
            console.print_exception()
        # plain text, never wrapped: a message may hold brackets (librdkafka's) that are no markup
        console.print(Text(f"cami {args.command}: {type(exc).__name__}: {_one_line(exc)}", style="red"), soft_wrap=True)
        return 1
    return code


def _one_line(exc: BaseException) -> str:
    """The message on one line (a server's answer may hold line breaks)."""
    return " ".join(str(exc).split())
