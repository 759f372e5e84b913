"""``cami users``: manage who may use the HTTP API (tokens are printed once, stored hashed)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from api.auth import UserDirectory, UsersFileError, add_user
from api.config import Settings
from schemas.policy import ROLES


def cmd_users_add(args: argparse.Namespace) -> int:
    path = Settings.from_env().users_file
    try:
        user, token = add_user(
            path,
            args.name,
            args.role,
            organisation=args.organisation,
            doctor_code=args.doctor_code,
            doctor_name=args.doctor_name,
            specialty=args.specialty,
        )
    except UsersFileError as exc:
        sys.stderr.write(f"cami users add: {exc}\n")
        return 2 if "needs" in str(exc) or "unknown role" in str(exc) else 1
    if args.json:
        sys.stdout.write(json.dumps({"name": user.name, "role": user.role, "token": token}, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write(f"added {user.name} ({user.role}) to {path}; the token is shown only now:\n")
        sys.stdout.write(token + "\n")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    users = UserDirectory(Settings.from_env().users_file).users()
    rows: list[dict[str, Any]] = [
        {
            "name": u.name,
            "role": u.role,
            "organisation": u.organisation,
            "doctor_code": u.doctor_code,
            "doctor_name": u.doctor_name,
        }
        for u in users
    ]
    if args.json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    else:
        for r in rows:
            sys.stdout.write(f"{r['name']}\t{r['role']}\t{r['organisation'] or '-'}\t{r['doctor_code'] or '-'}\n")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("users", help="manage HTTP API users (bearer tokens, roles)")
    sub = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    a = sub.add_parser("add", help="add a user and print the new bearer token once")
    a.add_argument("name", help="user name (unique)")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--organisation", help="regional code of the user's medical organisation")
    a.add_argument("--doctor-code", help="the doctor's code in the regional directory (radiologists)")
    a.add_argument("--doctor-name", help="the doctor's name, DICOM PN form Family^Given^Middle (radiologists)")
    a.add_argument("--specialty", help="a radiologist's specialty (second opinions may be asked of it)")
    a.add_argument("--json", action="store_true", help="print name, role and token as JSON")
    a.set_defaults(func=cmd_users_add)

    a = sub.add_parser("list", help="list users (never tokens)")
    a.add_argument("--json", action="store_true", help="print as JSON")
    a.set_defaults(func=cmd_users_list)
