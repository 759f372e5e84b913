"""``cami transfers``: full-import requests to the hospitals' transfer agents.

``cami transfers request --organisation ORG (--study UID | --patient ID) [--urgent] [--reason
TEXT] [--json]`` appends a ``TransferRequested`` event (as ``POST /api/transfers/requests`` does;
the actor is the operating-system user, as an administrator on the archive's own machine); the
organisation's agent picks it up the next time it asks CAMI. ``cami transfers requests
[--organisation ORG] [--json]`` lists the requests from the monitoring read model (on the
embedded log it first brings the monitoring projection up to date; in embedded mode stop ``cami
serve`` first, the ClickHouse directory belongs to one process).

Exit codes: 0 done; 1 failed (the log or the warehouse unavailable); 2 usage error (a value that
is not an OID, a UID or a PatientID).
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from typing import Any

from api.cli.output import print_json


def cmd_transfers_request(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from api.bootstrap import bootstrap
    from api.config import Settings
    from api.http.agents import TransferRequest, transfer_requested
    from schemas.events import Actor
    from streams.publisher import publish

    try:
        given = {"StudyInstanceUID": args.study, "PatientID": args.patient, "reason": args.reason}
        asked = TransferRequest(
            organisation=args.organisation,
            urgent=args.urgent,
            **{name: value for name, value in given.items() if value is not None},
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        sys.stderr.write(f"cami transfers request: {problems}\n")
        return 2
    actor = Actor(f"cli:{_os_user()}", "administrator")
    event = transfer_requested(asked, actor, f"cli:{socket.gethostname() or 'local'}")
    archive = bootstrap(Settings.from_env())
    try:
        publish(archive.event_log, event)
    finally:
        archive.close()
    answer = {
        "request_id": event.payload["request_id"],
        "organisation": asked.organisation,
        "StudyInstanceUID": asked.StudyInstanceUID or None,
        "PatientID": asked.PatientID or None,
        "urgent": asked.urgent,
    }
    if args.json:
        print_json(answer)
    else:
        what = f"study {asked.StudyInstanceUID}" if asked.StudyInstanceUID else f"patient {asked.PatientID}"
        urgent = " (urgent)" if asked.urgent else ""
        sys.stdout.write(f"requested {what} from {asked.organisation}{urgent}: {answer['request_id']}\n")
    return 0


def cmd_transfers_requests(args: argparse.Namespace) -> int:
    import re

    from api.bootstrap import bootstrap
    from api.config import Settings
    from api.http.agents import OID_PATTERN
    from projections.monitoring.queries import transfer_requests
    from streams.processing import EmbeddedRunner

    if args.organisation is not None and not re.fullmatch(OID_PATTERN, args.organisation):
        sys.stderr.write(f"cami transfers requests: --organisation {args.organisation!r} is not an OID\n")
        return 2
    archive = bootstrap(Settings.from_env())
    try:
        if archive.event_log.backend != "kafka":
            # nothing else folds the embedded log while `cami serve` is stopped
            EmbeddedRunner(archive.event_log, archive.bindings(["monitoring"])).catch_up(timeout=120)
        rows = transfer_requests(archive.warehouse, args.organisation, -1, 1_000_000)
    finally:
        archive.close()
    for row in rows:
        row.pop("offset", None)
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            what = f"study {r['StudyInstanceUID']}" if r["StudyInstanceUID"] else f"patient {r['PatientID']}"
            urgent = " urgent" if r["urgent"] else ""
            sys.stdout.write(
                f"{r['requested_at']:%Y-%m-%d %H:%M:%S}\t{r['organisation']}\t{what}{urgent}\t"
                f"{r['requested_by']}\t{r['request_id']}\n"
            )
    return 0


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return "unknown"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "transfers",
        help="ask a hospital's transfer agent for a study's or a patient's full set; list the requests",
        description="Full-import requests to the hospitals' transfer agents (TransferRequested events).",
        epilog="Exit codes: 0 done; 1 failed; 2 usage error.",
    )
    sub = p.add_subparsers(dest="transfers_command", required=True, metavar="ACTION")

    a = sub.add_parser("request", help="ask an organisation's agent to send a study or a patient in full")
    a.add_argument("--organisation", required=True, metavar="ORG", help="the organisation's regional code (OID)")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="the StudyInstanceUID")
    which.add_argument("--patient", metavar="ID", help="the PatientID (every study of the patient)")
    a.add_argument("--urgent", action="store_true", help="send at once, as an emergency, whatever the window")
    a.add_argument("--reason", metavar="TEXT", help="why (recorded with the request)")
    a.add_argument("--json", action="store_true", help="print the request as JSON")
    a.set_defaults(func=cmd_transfers_request)

    a = sub.add_parser("requests", help="list full-import requests in the order they were made")
    a.add_argument("--organisation", metavar="ORG", help="only this organisation's")
    a.add_argument("--json", action="store_true", help="print as JSON")
    a.set_defaults(func=cmd_transfers_requests)
