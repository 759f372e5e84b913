"""The ``cami`` command: the parser and the dispatch; each subcommand is one module of
:mod:`api.cli` with ``register(subparsers)`` and its ``cmd_*`` functions.

Exit codes: 0 success, 1 the operation failed (message on stderr), 2 usage error.
``--json`` prints machine-readable output on stdout for scripts.

``--config FILE`` (before the command; else ``CAMI_CONFIG``) names the configuration file, whose
values every command reads beneath the environment's (:mod:`api.config`); its ``log_level`` and
``log_format`` are read here, before the command runs (:mod:`api.cli.logs`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.text import Text

from api.cli.agent import register as agent
from api.cli.audit import register as audit
from api.cli.config_cmd import register as config
from api.cli.demo import register as demo
from api.cli.import_ import register as import_
from api.cli.logs import configure_logging
from api.cli.monitor import register as monitor
from api.cli.output import console
from api.cli.replay import register as replay
from api.cli.schemas import register as schemas
from api.cli.serve import register as serve
from api.cli.status import register as status
from api.cli.transfers import register as transfers
from api.cli.users import register as users
from api.cli.workers import register as workers
from api.config import ConfigError, LogSettings, log_settings, use_config_file
from streams.errors import OperatorError

#: every subcommand (each module's ``register``), in the order ``cami --help`` lists them
COMMANDS = (demo, status, schemas, workers, serve, import_, users, replay, audit, transfers, agent, monitor, config)
#: the long-running commands: they log at info unless told otherwise
SERVICES = {("serve", ""), ("workers", ""), ("agent", "run")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cami",
        description="CAMI, the regional Central Archive of Medical Images (event-sourced DICOM archive).",
        epilog="Backends come from CAMI_EVENT_LOG, CAMI_BLOBS, CAMI_CLICKHOUSE or the configuration file "
        "(see README, Configuration; cami config show --defaults lists every option).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (stderr), at least at info")
    parser.add_argument(
        "--config",
        dest="config_file",
        type=Path,
        metavar="FILE",
        help="the configuration file (TOML; default: CAMI_CONFIG, else none); the environment overrides it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config_file is not None:
        use_config_file(args.config_file)
    try:
        logs = log_settings()
    except ConfigError as exc:
        if args.command != "config":  # `cami config check` reports it with the rest
            sys.stderr.write(f"cami {args.command}: {_one_line(exc)}\n")
            return 1
        logs = LogSettings()
    service = (args.command, getattr(args, "agent_command", "") if args.command == "agent" else "") in SERVICES
    undo = configure_logging(logs.level, logs.format, verbose=args.verbose, service=service)
    try:
        return _run(args, json_lines=logs.format == "json")
    finally:
        undo()


def _run(args: argparse.Namespace, *, json_lines: bool) -> int:
    log = logging.getLogger("cami.cli")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, OperatorError) as exc:
        # a bad setting (one line naming it and what is allowed, nothing opened) or a backend the
        # operator must mend (credentials refused, a broker that never came up): the message as it is
        line = f"cami {args.command}: {_one_line(exc)}"
        if json_lines:
            log.error("%s", line, exc_info=exc if args.verbose else None)
        else:
            if args.verbose:
                console.print_exception()
            sys.stderr.write(line + "\n")
        return 1
    except Exception as exc:  # one clear line for people; the traceback only with -v
        line = f"cami {args.command}: {type(exc).__name__}: {_one_line(exc)}"
        if json_lines:
            log.error("%s", line, exc_info=exc if args.verbose else None)
            return 1
        if args.verbose:
            console.print_exception()
        # plain text, never wrapped: a message may hold brackets (librdkafka's) that are no markup
        console.print(Text(line, style="red"), soft_wrap=True)
        return 1
    return code


def _one_line(exc: BaseException) -> str:
    """The message on one line (a server's answer may hold line breaks)."""
    return " ".join(str(exc).split())
