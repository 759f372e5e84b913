"""``cami schemas``: the event types, their schema versions, fingerprints and topics."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from api.cli.output import out, print_json
from schemas.registry import registry
from streams.topics import topic_for


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("schemas", help="list event types, schema versions and fingerprints")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_schemas)


def cmd_schemas(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = [
        {
            "event_type": name,
            "version": s.current.version,
            "fingerprint": s.current.fingerprint.hex(),
            "topic": topic_for(name),
            "released": s.frozen,
            "phi_fields": sorted(s.phi_fields),
        }
        for name, s in sorted(registry().events.items())
    ]
    if args.json:
        print_json(rows)
        return 0
    table = Table(title="Event schemas (Avro single-object encoding)")
    for col in ("event type", "version", "fingerprint", "topic", "patient data fields"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["event_type"], str(r["version"]), r["fingerprint"], r["topic"], ", ".join(r["phi_fields"]))
    out.print(table)
    return 0
