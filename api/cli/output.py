"""What every ``cami`` command prints with: rich consoles (people: stderr for progress and
messages, stdout for results) and JSON on stdout for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

#: messages and progress (stderr: stdout stays clean for results and --json)
console = Console(stderr=True)
#: results for people
out = Console()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
