"""What every ``cami`` command prints with: rich consoles (people: stderr for progress and
messages, stdout for results) and JSON on stdout for scripts (``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from schemas.addresses import AddressError, parse_port, url_address

#: messages and progress (stderr: stdout stays clean for results and --json)
console = Console(stderr=True)
#: results for people
out = Console()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def count(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (no upper bound: None)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(
                f"must be between {low} and {high}" if high is not None else f"must be at least {low}"
            )
        return number

    return parse


def port_number(*, free: bool = False) -> Callable[[str], int]:
    """An argparse type: a TCP port 1-65535 (and 0, a free one, with ``free``), the same rule as
    the CAMI_*_PORT settings (:mod:`schemas.addresses`)."""

    def parse(value: str) -> int:
        try:
            return parse_port(value, free=free)
        except AddressError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def archive_url(value: str) -> str:
    """An argparse type: the running archive's ``http(s)://host[:port]`` (host and port checked,
    nothing looked up)."""
    try:
        url_address(value, schemes=("http", "https"))
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value
