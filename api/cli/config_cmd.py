"""``cami config``: the configuration file (:mod:`api.config`). ``check`` reads a file with the
environment on top and shows the settings in effect and where each came from, or every problem
(exit 2); ``show`` prints the settings in effect as a file, ``show --defaults`` every option
commented out, with its meaning and default (what ``infra/cami.toml.example`` holds)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from api.cli.output import print_json
from api.config import ConfigCheck, check_configuration, effective_file, example_file

#: the exit code of a configuration that cannot be used (the CLI's usage error)
INVALID = 2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "config", help="check the configuration file; show the settings in effect or every option"
    )
    sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")

    check = sub.add_parser(
        "check",
        help="check a configuration file and the environment on top: the settings in effect and where each "
        "came from, or every problem (exit 2)",
    )
    check.add_argument("file", nargs="?", type=Path, help="the file (default: cami --config, else CAMI_CONFIG)")
    check.add_argument("--json", action="store_true", help="print as JSON")
    check.set_defaults(func=cmd_check)

    show = sub.add_parser("show", help="the settings in effect as a configuration file (secrets not shown)")
    show.add_argument("file", nargs="?", type=Path, help="the file (default: cami --config, else CAMI_CONFIG)")
    show.add_argument(
        "--defaults",
        action="store_true",
        help="every option instead, commented out, with its meaning, variable and default (an example file)",
    )
    show.set_defaults(func=cmd_show)


def cmd_check(args: argparse.Namespace) -> int:
    check = check_configuration(file=args.file)
    if args.json:
        print_json(
            {
                "file": str(check.file) if check.file else None,
                "valid": check.valid,
                "problems": list(check.problems),
                "warnings": list(check.warnings),
                "settings": [
                    {"key": row.key, "variable": row.variable, "value": row.value, "source": row.source}
                    for row in check.rows
                ],
            }
        )
        return 0 if check.valid else INVALID
    if not _report(check):
        return INVALID
    where = f"{check.file}: valid" if check.file else "no configuration file (cami --config, CAMI_CONFIG): valid"
    sys.stdout.write(f"{where}; the settings in effect (the environment overrides the file):\n")
    width = max(len(row.key) for row in check.rows)
    for row in check.rows:
        sys.stdout.write(f"  {row.key:<{width}}  {row.value}  ({_source(row.source, row.variable)})\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.defaults:
        sys.stdout.write(example_file())
        return 0
    check = check_configuration(file=args.file)
    if not _report(check):
        return INVALID
    sys.stdout.write(effective_file(check))
    return 0


def _report(check: ConfigCheck) -> bool:
    """Warnings and problems on stderr, one line each; False when the configuration is unusable."""
    for warning in check.warnings:
        sys.stderr.write(f"cami config: warning: {warning}\n")
    for problem in check.problems:
        sys.stderr.write(f"cami config: {problem}\n")
    return check.valid


def _source(source: str, variable: str) -> str:
    return f"{source}, {variable}" if source.startswith("environment") else source
