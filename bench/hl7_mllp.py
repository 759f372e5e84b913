"""HL7 v2 over MLLP: messages/s and ACK latency of CAMI's HL7 port against a bare MLLP echo
server, in one run.

    python bench/hl7_mllp.py [--messages 2000] [--connections 1,4] [--json]

* **bare MLLP echo** (the anchor): the ``hl7`` library's asyncio MLLP server -- the same one CAMI's
  listener is built on -- in a subprocess, answering every block with a fixed ACK at once: what
  framing, the event loop and the loopback cost before anything is parsed or recorded;
* **CAMI embedded**: ``cami serve`` in a subprocess on the embedded defaults (SQLite event log,
  processors running), ``CAMI_HOME`` in a temporary directory. Each ACK comes after the message's
  event is durable (the SQLite commit).

The client sends ADT^A08 messages (a Cyrillic patient name, UTF-8 declared in MSH-18) over
``--connections`` concurrent connections (the messages split evenly), each connection waiting
for every ACK before the next message, as an MIS in original-mode acknowledgement does. Figures:
messages/s over the wall time from the first send to the last ACK, p50/p95 of each message's
send-to-ACK time, and the ratio to the echo server (< 1: slower than bare framing). After CAMI's
run the log must hold exactly one PatientUpdated per message, so a fast failure is never reported
as speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = b"\x0b", b"\x1c\r"
ECHO_ACK = b"MSH|^~\\&|ECHO||||20260101000000||ACK|1|P|2.5\rMSA|AA|1\r"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def adt(n: int) -> bytes:
    return (
        f"MSH|^~\\&|MIS|ORG01|CAMI|CAMI|20261130101500||ADT^A08|B{n}|P|2.5|||||RU|UNICODE UTF-8\r"
        f"PID|||BENCH{n:07d}^^^ORG01||Иванов^Иван^Иванович||19800215|M\r"
    ).encode()


def serve_echo(port: int) -> None:
    """The anchor: the hl7 library's MLLP server answering every block with a fixed ACK."""
    from hl7.mllp import start_hl7_server

    async def client(reader: Any, writer: Any) -> None:
        try:
            while True:
                await reader.readblock()
                writer.writeblock(ECHO_ACK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await start_hl7_server(client, "127.0.0.1", port)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def read_block(sock: socket.socket, buffer: bytearray) -> bytes:
    while True:
        end = buffer.find(END)
        if end >= 0:
            block = bytes(buffer[: end + 2])
            del buffer[: end + 2]
            return block
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk


def drive(port: int, messages: list[bytes], connections: int) -> dict[str, Any]:
    """Send ``messages`` over ``connections`` connections, each waiting for every ACK."""
    shares = [messages[i::connections] for i in range(connections)]
    latencies: list[list[float]] = [[] for _ in range(connections)]
    refused: list[int] = [0] * connections
    barrier = threading.Barrier(connections + 1)

    def one(index: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray()
            barrier.wait()
            for message in shares[index]:
                began = time.perf_counter()
                sock.sendall(START + message + END)
                ack = read_block(sock, buffer)
                latencies[index].append(time.perf_counter() - began)
                if b"MSA|AA" not in ack:
                    refused[index] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    every = sorted(x for share in latencies for x in share)
    return {
        "messages": len(every),
        "refused": sum(refused),
        "seconds": round(wall, 3),
        "per_second": round(len(every) / wall, 1),
        "p50_ms": round(statistics.median(every) * 1000, 2),
        "p95_ms": round(every[int(len(every) * 0.95) - 1] * 1000, 2),
    }


def run_echo(messages: list[bytes], connections: int) -> dict[str, Any]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_port(port, process)
        return drive(port, messages, connections)
    finally:
        process.terminate()
        process.wait(10)


def run_cami(messages: list[bytes], connections: int, first: int) -> dict[str, Any]:
    from schemas.codec import decode
    from streams import open_event_log
    from streams.topics import PATIENTS

    with tempfile.TemporaryDirectory(prefix="cami-bench-hl7-") as home:
        port, dicom, http = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
        env.update(
            CAMI_HOME=home, CAMI_HL7_PORT=str(port), CAMI_DICOM_PORT=str(dicom), CAMI_HTTP_PORT=str(http),
            PYTHONPATH=str(ROOT),
        )  # fmt: skip
        log = Path(home) / "serve.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve"], env=env, cwd=ROOT, stdout=output, stderr=output
            )
        try:
            wait_port(port, process)
            result = drive(port, messages, connections)
        finally:
            process.terminate()
            process.wait(60)
        with open_event_log(f"sqlite://{home}/events.db") as event_log:
            ids: set[str] = set()
            for partition in event_log.partitions(PATIENTS):
                offset = 0
                while records := event_log.read(PATIENTS, partition, offset, 5000):
                    ids.update(decode(r.value)["PatientID"] for r in records)
                    offset = records[-1].offset + 1
        expected = {f"BENCH{n:07d}" for n in range(first, first + len(messages))}
        if ids != expected or result["refused"]:
            raise SystemExit(f"CAMI recorded {len(ids)} of {len(expected)} patients ({result['refused']} refused)")
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", default="1,4", help="comma-separated connection counts (default 1,4)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    results = []
    for count, connections in enumerate(int(c) for c in args.connections.split(",")):
        first = count * args.messages
        messages = [adt(first + n) for n in range(args.messages)]
        echo = run_echo(messages, connections)
        cami = run_cami(messages, connections, first)
        results.append({"connections": connections, "echo": echo, "cami": cami,
                        "ratio": round(cami["per_second"] / echo["per_second"], 3)})  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"HL7 ADT^A08 over MLLP, {args.messages} messages per run, ACK after the durable event (CAMI)")
    print(f"{'connections':>11} {'target':<14} {'msg/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'vs echo':>8}")
    for r in results:
        for name, row in (("bare echo", r["echo"]), ("CAMI embedded", r["cami"])):
            ratio = f"{r['ratio']:.3f}" if name.startswith("CAMI") else "1.000"
            print(
                f"{r['connections']:>11} {name:<14} {row['per_second']:>8.1f} {row['p50_ms']:>8.2f}"
                f" {row['p95_ms']:>8.2f} {ratio:>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
