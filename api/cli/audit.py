"""``cami audit``: check that the audit trail was not tampered with, and show a record's history.

``cami audit verify [--record ID] [--table-only] [--json]`` recomputes every per-record hash chain
from the stored audit rows and, unless ``--table-only``, re-reads the event log, re-hashes each
event and re-derives its row, so a changed audit row *or* a changed event is reported with the
first broken entry. Events the audit projection has not processed yet (past its committed
offsets) are counted, not reported as missing.

``cami audit history RECORD [--json]`` lists the record's entries (every topic) in order.

``cami audit at STUDY --time T [--json]`` folds the event log up to T (ISO 8601 with its zone) and
shows the study as the archive knew it then (instances, versions, patient, merges, report texts)
and what changed since (:mod:`projections.audit.at`).

``cami audit access PATIENT_ID [--since D] [--until D] [--user U] [--organisation CODE]
[--csv FILE | --bundle FILE] [--json]`` lists every access to the patient's records; ``--csv``
writes them as CSV, ``--bundle`` as a signed JSON bundle with chain proofs
(:mod:`projections.audit.bundle`) that ``cami audit verify-bundle FILE [--public-key KEY]`` checks
offline (no archive needed); ``cami audit public-key`` prints the key that signs the bundles.

Exit codes: 0 intact / found; 1 broken, no such record, a bad time, or the check failed; 2 usage error.
In embedded mode the ClickHouse directory belongs to one process: stop ``cami serve`` /
``cami workers`` first.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from api.cli.output import print_json
from api.cli.remote import ask_running_serve
from projections.audit.queries import history
from projections.audit.verify import ChainReport
from projections.warehouse import WarehouseLocked

if TYPE_CHECKING:
    pass


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap
    from api.config import Settings

    settings = Settings.from_env()
    try:
        archive = bootstrap(settings)
        try:
            report = archive.verify_audit(args.record, against_log=not args.table_only)
        finally:
            archive.close()
    except WarehouseLocked as exc:  # the running server holds the warehouse: it checks, and says so
        params = {"against_log": "false" if args.table_only else "true"} | (
            {"record": args.record} if args.record else {}
        )
        answer, url = ask_running_serve(settings, "/api/audit/verify", params, held=exc)
        sys.stderr.write(f"(the embedded warehouse is held by the running cami serve: it checked, at {url})\n")
        report = ChainReport.from_dict(answer)
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

    settings = Settings.from_env()
    try:
        archive = bootstrap(settings)
        try:
            entries = history(archive.warehouse, args.record)
        finally:
            archive.close()
    except WarehouseLocked as exc:  # the running server holds the warehouse: ask it
        answer, url = ask_running_serve(settings, f"/api/audit/records/{quote(args.record, safe='')}", held=exc)
        sys.stderr.write(f"(the embedded warehouse is held by the running cami serve: asked it at {url})\n")
        entries = [_entry(e) for e in (answer or {}).get("entries", [])]
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


def _entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An audit entry as the server sent it (JSON), its times as datetimes again."""
    for key in ("occurred_at", "recorded_at"):
        if isinstance(entry.get(key), str):
            entry[key] = datetime.fromisoformat(entry[key])
    return entry


def _fail(message: str) -> int:
    sys.stderr.write(f"cami audit: {message}\n")
    return 1


def cmd_audit_at(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap
    from api.config import Settings
    from projections.audit.at import UnknownRecord, parse_moment, state_at

    try:
        at = parse_moment(args.time)
    except ValueError as exc:
        return _fail(str(exc))
    archive = bootstrap(Settings.from_env())
    try:
        state = state_at(archive.event_log, args.record, at)
    except UnknownRecord as exc:
        return _fail(f"unknown record: {exc}")
    finally:
        archive.close()
    if args.json:
        print_json(state)
        return 0
    from api.cli.output import out

    then, change = state["then"], state["diff"]
    out.print(f"Study {args.record} as known at {state['at']:%Y-%m-%d %H:%M:%S} UTC ({then['events']} events)")
    if not then["known"]:
        out.print("  not known to the archive yet at that time")
    patient = then["patient"]
    out.print(f"  patient: {patient['patient_id']} (on the images: {patient['patient_id_on_images']})")
    out.print(f"  instances: {len(then['instances'])} ({len(then['versions'])} versions)")
    for instance in then["instances"]:
        out.print(
            f"    {instance['sop_uid']} v{instance['version']} {instance['modality']} from {instance['organisation']}"
        )
    for merge in then["merges"]:
        out.print(f"  merge: {merge['prior_patient_id']} -> {merge['patient_id']} at {merge['merged_at']}")
    for report in then["reports"]:
        out.print(f"  report {report['report_id']} ({report['status']}):", markup=False)
        out.print(f"    protocol: {report['protocol_text']}", markup=False)
        out.print(f"    conclusion: {report['conclusion_text']}", markup=False)
    out.print(f"Since then: {change['events_after']} events")
    out.print(f"  instances added: {len(change['instances_added'])}, replaced: {len(change['instances_replaced'])}")
    for name, values in change["patient"].items():
        out.print(f"  {name}: {values['then']} -> {values['now']}", markup=False)
    for report in change["reports"]:
        for name in ("status", "protocol_text", "conclusion_text"):
            if name in report:
                out.print(
                    f"  report {report['report_id']} {name}: {report[name]['then']!r} -> {report[name]['now']!r}",
                    markup=False,
                )
    for merge in change["merges_added"]:
        out.print(f"  merge added: {merge['prior_patient_id']} -> {merge['patient_id']}")
    return 0


def cmd_audit_access(args: argparse.Namespace) -> int:
    from api.bootstrap import bootstrap
    from api.config import Settings
    from projections.audit.access import AccessFilter, TooManyAccesses, accesses
    from projections.audit.at import parse_moment

    try:
        only = AccessFilter(
            since=parse_moment(args.since) if args.since else None,
            until=parse_moment(args.until, end_of_day=True) if args.until else None,
            user=args.user,
            organisation=args.organisation,
        )
    except ValueError as exc:
        return _fail(str(exc))
    archive = bootstrap(Settings.from_env())
    try:
        directory = archive.organisations()
        try:
            found = accesses(archive.warehouse, args.patient_id, only)
        except TooManyAccesses as exc:
            return _fail(str(exc))
        for entry in found["entries"]:
            entry["organisation_name"] = directory.display(entry["organisation"]) if entry["organisation"] else None
        if args.bundle:
            from projections.audit.bundle import build, signing_key

            query = {"patient_id": args.patient_id, **only.to_dict()}
            document = build(
                archive.warehouse, archive.event_log, found["entries"], query, signing_key(archive.settings.home)
            )
            Path(args.bundle).write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    finally:
        archive.close()
    if args.csv:
        write_csv(Path(args.csv), found["entries"])
    if args.json:
        print_json(found)
    else:
        from api.cli.output import out

        out.print(
            f"{len(found['entries'])} access(es) to patient {args.patient_id}"
            f" (IDs {', '.join(found['patient_ids'])}; {len(found['studies'])} studies)",
            markup=False,
        )
        for e in found["entries"]:
            who = f"{e['actor_user']} ({e['actor_role']})"
            org = e["organisation_name"] or "-"
            out.print(f"  {e['occurred_at']:%Y-%m-%d %H:%M:%S} {who} {org} {e['summary']}", markup=False)
        if args.bundle:
            out.print(f"signed bundle written to {args.bundle}", markup=False)
        if args.csv:
            out.print(f"CSV written to {args.csv}", markup=False)
    return 0


def write_csv(path: Path, entries: list[dict[str, Any]]) -> None:
    from projections.audit.access import CSV_COLUMNS

    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for entry in entries:
            writer.writerow([entry.get(c) if entry.get(c) is not None else "" for c in CSV_COLUMNS])


def cmd_audit_verify_bundle(args: argparse.Namespace) -> int:
    from projections.audit.bundle import verify

    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _fail(f"cannot read the bundle {args.file}: {exc}")
    pinned = None
    if args.public_key:
        candidate = Path(args.public_key)
        pinned = candidate.read_text(encoding="utf-8").strip() if candidate.is_file() else args.public_key.strip()
    report = verify(document if isinstance(document, dict) else {}, pinned)
    if args.json:
        print_json(report.to_dict())
    elif report.ok:
        sys.stdout.write(
            f"bundle intact: {report.selected} access entries, {report.entries} links in {report.chains} chains,"
            " signature valid\n"
        )
    else:
        where = f"first bad entry: {report.first_bad_entry}" if report.first_bad_entry else "no entry at fault"
        sys.stdout.write(f"bundle BROKEN ({where})\n")
        for problem in report.problems:
            sys.stdout.write(f"  {problem}\n")
    return 0 if report.ok else 1


def cmd_audit_public_key(args: argparse.Namespace) -> int:
    from api.config import Settings
    from projections.audit.bundle import public_key_text, signing_key

    sys.stdout.write(public_key_text(signing_key(Settings.from_env().home)) + "\n")
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

    a = sub.add_parser("at", help="a study as the archive knew it at a moment, folded from the log")
    a.add_argument("record", metavar="RECORD", help="the study (StudyInstanceUID)")
    a.add_argument(
        "--time", required=True, metavar="T", help="ISO 8601 moment (2026-03-01T12:00:00+03:00; no zone: UTC)"
    )
    a.add_argument("--json", action="store_true", help="print the states and the difference as JSON")
    a.set_defaults(func=cmd_audit_at)

    a = sub.add_parser("access", help="who saw this patient: every access to the patient's records")
    a.add_argument("patient_id", metavar="PATIENT_ID")
    a.add_argument("--since", metavar="T", help="from this moment or date (ISO 8601)")
    a.add_argument("--until", metavar="T", help="up to this moment or date (a date: its end)")
    a.add_argument("--user", help="only this user's accesses")
    a.add_argument("--organisation", metavar="CODE", help="only accesses by this organisation's staff")
    a.add_argument("--csv", metavar="FILE", help="also write the entries as CSV")
    a.add_argument("--bundle", metavar="FILE", help="also write a signed JSON bundle with chain proofs")
    a.add_argument("--json", action="store_true", help="print the entries as JSON")
    a.set_defaults(func=cmd_audit_access)

    a = sub.add_parser("verify-bundle", help="check a signed audit bundle offline; exit 1 naming the first bad entry")
    a.add_argument("file", metavar="FILE")
    a.add_argument("--public-key", metavar="KEY", help="the pinned public key (base64, or a file holding it)")
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=cmd_audit_verify_bundle)

    a = sub.add_parser("public-key", help="print the public key that signs audit bundles (base64), to pin")
    a.set_defaults(func=cmd_audit_public_key)
