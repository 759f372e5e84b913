"""``cami audit``: check that the audit trail was not tampered with, and show a record's history.

``cami audit verify [--record ID] [--table-only] [--json]`` recomputes every per-record hash chain
from the stored audit rows and, unless ``--table-only``, re-reads the event log, re-hashes each
event and re-derives its row, so a changed audit row *or* a changed event is reported with the
first broken entry. Events the audit projection has not processed yet (past its committed
offsets) are counted, not reported as missing.

``cami audit history RECORD [--json]`` lists the record's entries (every topic) in order.

Exit codes: 0 intact / found; 1 broken, no such record, or the check failed; 2 usage error.
In embedded mode the ClickHouse directory belongs to one process: stop ``cami serve`` /
``cami workers`` first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from api.cli.output import print_json
from projections.audit.fold import AuditTrail
from projections.audit.queries import history
from projections.audit.verify import verify_against_log, verify_chain
from streams.log import EventLog
from streams.processing import group_id


def audited_offsets(event_log: EventLog) -> dict[str, dict[int, int]]:
    """Per topic and partition, how far the audit projection has committed."""
    trail = AuditTrail()
    if event_log.backend == "kafka":
        from streams.faust_app import DEFAULT_APP_ID  # the Faust workers share one group

        group = DEFAULT_APP_ID
    else:
        group = group_id(trail)
    return {t: event_log.committed(group, t) for t in trail.topics}


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap
    from api.config import Settings

    archive = bootstrap(Settings.from_env())
    try:
        if args.table_only:
            report = verify_chain(archive.warehouse, args.record)
        else:
            audited = audited_offsets(archive.event_log)
            report = verify_against_log(archive.warehouse, archive.event_log, args.record, audited)
    finally:
        archive.close()
    if args.json:
        print_json(report.to_dict())
    else:
        scope = f"record {args.record}" if args.record else "audit trail"
        checked = f"{report.entries} entries in {report.chains} chains"
        if not args.table_only:
            checked += f", {report.log_events} log events re-hashed"
            if report.unaudited:
                checked += f" ({report.unaudited} newer events not audited yet)"
        if report.ok:
            sys.stdout.write(f"{scope} intact: {checked}\n")
        else:
            assert report.first_broken is not None
            sys.stdout.write(f"{scope} BROKEN ({report.broken} entries): {checked}\n")
            sys.stdout.write(f"first broken entry: {report.first_broken.describe()}\n")
    if args.record and report.entries == report.log_events == report.unaudited == 0:
        # nothing was checked: a mistyped ID must not read as "intact"
        sys.stderr.write(f"cami audit verify: no entries and no events for record {args.record!r}\n")
        return 1
    return 0 if report.ok else 1


def cmd_audit_history(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap
    from api.config import Settings

    archive = bootstrap(Settings.from_env())
    try:
        entries = history(archive.warehouse, args.record)
    finally:
        archive.close()
    if args.json:
        print_json(entries)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"History of {args.record}")
        for column in ("occurred at (UTC)", "event", "who", "from", "summary", "position", "entry hash"):
            table.add_column(column)
        for e in entries:
            table.add_row(
                f"{e['occurred_at']:%Y-%m-%d %H:%M:%S.%f}",
                str(e["event_type"]),
                f"{e['actor_user']} ({e['actor_role']})",
                " ".join(str(x) for x in (e["organisation"], e["source_node"], e["peer_address"]) if x),
                str(e["summary"]),
                f"{e['topic']}/{e['partition']}@{e['offset']}",
                str(e["entry_hash"])[:16],
            )
        Console().print(table)
    if not entries:
        sys.stderr.write(f"cami audit history: no entries for record {args.record!r}\n")
        return 1
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="check the audit trail's hash chains; show a record's history",
        description="The audit trail: one entry per event, chained per record by SHA-256.",
        epilog="Exit codes: 0 intact/found; 1 broken, not found or failed; 2 usage error.",
    )
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    a = sub.add_parser(
        "verify",
        help="recompute the hash chains and compare them with the event log; exit 1 when broken",
        description=(
            "Recompute every record's hash chain from the stored audit rows and (unless --table-only) "
            "re-hash the events in the log and re-derive their rows. Reports the first broken entry."
        ),
    )
    a.add_argument("--record", metavar="ID", help="only this record (aggregate id: StudyInstanceUID, ...)")
    a.add_argument("--table-only", action="store_true", help="check the stored chains only, not the log")
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=cmd_audit_verify)

    a = sub.add_parser("history", help="list a record's audit entries in order")
    a.add_argument("record", metavar="RECORD", help="the record (aggregate id: StudyInstanceUID, ...)")
    a.add_argument("--json", action="store_true", help="print the entries as JSON")
    a.set_defaults(func=cmd_audit_history)
