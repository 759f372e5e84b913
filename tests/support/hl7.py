"""HL7 v2 messages for tests, built by field number (so nobody counts pipes), the real client
(the ``hl7`` package's ``mllp_send`` command) and an MIS's listener (the same package's server)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

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


class Mis:
    """An MIS's MLLP listener (the ``hl7`` library's asyncio server in a thread): keeps every
    message it receives and answers each with ``answer`` (AA unless told otherwise)."""

    def __init__(self, port: int = 0, answer: str = "AA") -> None:
        self.port = port
        self.answer = answer
        self.received: list[hl7.Message] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    async def _client(self, reader: Any, writer: Any) -> None:
        try:
            while True:
                block = await reader.readblock()
                message = hl7.parse(block.decode("utf-8"))
                self.received.append(message)
                ack = message.create_ack(self.answer)
                writer.writeblock(str(ack).encode("utf-8"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Mis:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(start_hl7_server(self._client, "127.0.0.1", self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, server = self._loop, self._server
        assert loop is not None and server is not None
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def statuses(self) -> list[tuple[str, str, str]]:
        """(accession number ORC-3, order status ORC-5, result status OBR-25) of each message."""
        found = []
        for message in self.received:
            orc, obr = message.segment("ORC"), message.segment("OBR")
            result = str(obr(25)) if len(obr) > 25 else ""
            found.append((str(orc(3)), str(orc(5)), result))
        return found
