"""HL7 v2 messages for tests, built by field number (so nobody counts pipes), and the real
client: the ``hl7`` package's ``mllp_send`` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import hl7

MLLP_START, MLLP_END = b"\x0b", b"\x1c\r"


def segment(name: str, fields: Mapping[int, str]) -> str:
    """``name`` with ``fields`` (SEG-n -> value) and empty fields between them."""
    last = max(fields, default=0)
    values = [fields.get(n, "") for n in range(1, last + 1)]
    return "|".join([name, *values])


def message(
    kind: str,
    *segments: str,
    control_id: str = "MSG1",
    version: str = "2.5",
    charset: str = "",
    application: str = "MIS",
    facility: str = "ORG01",
    processing: str = "P",
) -> str:
    """A message with its MSH (MSH-3 ``application``, MSH-4 ``facility``, MSH-9 ``kind``...)."""
    msh = "|".join(
        ["MSH", "^~\\&", application, facility, "CAMI", "CAMI", "20261130101500", "", kind, control_id, processing,
         version, "", "", "", "", "", charset]
    )  # fmt: skip
    return "\r".join([msh.rstrip("|"), *segments]) + "\r"


def pid(patient_id: str, name: str = "", birth_date: str = "", sex: str = "", issuer: str = "") -> str:
    return segment("PID", {3: f"{patient_id}^^^{issuer}" if issuer else patient_id, 5: name, 7: birth_date, 8: sex})


def ack_fields(ack: bytes, encoding: str = "utf-8") -> dict[str, str]:
    """MSA-1, MSA-2, ERR-3.1 and ERR-8 of an acknowledgement (framed or not)."""
    text = ack.strip(b"\x0b\x1c\r\n").decode(encoding)
    parsed = hl7.parse(text)
    found = {"MSA-1": str(parsed.segment("MSA")(1)), "MSA-2": str(parsed.segment("MSA")(2))}
    try:
        err = parsed.segment("ERR")
        found["ERR-3"] = str(err.extract_field(1, 3, 1, 1, 1))
        found["ERR-8"] = str(err.extract_field(1, 8))
    except KeyError:
        pass
    return found


def mllp_send_command() -> str:
    found = shutil.which("mllp_send") or str(Path(sys.executable).with_name("mllp_send"))
    return found


def mllp_send(port: int, messages: list[bytes], tmp: Path, host: str = "127.0.0.1") -> list[bytes]:
    """Send ``messages`` with the ``hl7`` package's ``mllp_send`` (one connection, each message
    waiting for its ACK, as an MIS does); returns the ACKs it printed, in order."""
    path = tmp / "messages.hl7"
    path.write_bytes(b"".join(MLLP_START + m + MLLP_END for m in messages))
    done = subprocess.run(
        [mllp_send_command(), "--port", str(port), "--file", str(path), host],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [part.strip(b"\r\n\x0b") for part in done.stdout.split(MLLP_END) if part.strip(b"\r\n\x0b")]
