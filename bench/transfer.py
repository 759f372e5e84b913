"""The transfer agent's cost and its use of a slow link, in one run.

    python bench/transfer.py [--instances 1000] [--slow-instances 12] [--kbps 256] [--json]

1. **Overhead.** ``--instances`` CT objects (256x256, 16 bits, about 130 KB each, ten studies, all
   marked pathology) go to a fresh ``cami serve`` (embedded defaults) twice:

   * the **anchor**: dcmtk's ``storescu`` sends the files to CAMI directly (one association,
     ``TCP_NODELAY=1``), timed by its wall time;
   * the **agent**: the same files already held in a hospital agent's queue (spooled beforehand,
     as the router would have), ``cami agent run`` sends them to another fresh CAMI by C-STORE
     and waits for storage commitment and the SHA-256 check of each study; timed from the
     first ``TransferStarted`` to the last ``TransferCompleted`` the agent reported to CAMI
     (the agent's own clock; its start-up is not counted, its commitment waits are).

   The figure is instances/s of each and the agent's share of the anchor's rate (1.0: no overhead).
2. **The slow link.** ``--slow-instances`` objects through an agent capped at ``--kbps``
   (``[schedule] bandwidth_kbps``), with a counting TCP relay (no limit of its own) between the
   agent and CAMI: the bytes on the wire over the time from the first to the last of them, against
   the cap (the goal is at least 90%); and the study's file bytes over the whole transfer
   (association, commitment and hash check included), for what a person waiting sees.

Every run is checked before it is reported: CAMI must hold every instance exactly once
(one ``InstanceReceived`` each), else the bench fails rather than report a fast failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from api.demo.synthetic import region, synthetic_study, write_study  # noqa: E402
from ingest.agent.config import Rules  # noqa: E402
from ingest.agent.queue import TransferQueue  # noqa: E402
from tests.support.agent_region import ORGANISATION, Agent, Cami, ports, wait_for  # noqa: E402
from tests.support.throttle import ThrottleProxy  # noqa: E402

console = Console(stderr=True)
AGENT_AE = "BENCH_AGENT"
STUDIES = 10


def make_corpus(directory: Path, instances: int, seed: int) -> tuple[list[Path], set[str]]:
    org = region()[0]
    paths: list[Path] = []
    studies: set[str] = set()
    share, extra = divmod(instances, STUDIES)
    for n in range(STUDIES):
        size = share + (1 if n < extra else 0)
        if size == 0:
            continue
        study = synthetic_study(org, "CT", instances=size, seed=seed + n, pathology=True)
        paths += write_study(study, directory)
        studies.add(study.study_uid)
    return paths, studies


def start_cami(workdir: Path, name: str) -> Cami:
    dicom_port, http_port, agent_port = ports(3)
    cami = Cami(workdir / name, dicom_port, http_port, AGENT_AE, agent_port)
    cami.start()
    return cami


def check_held(cami: Cami, expected: int) -> None:
    counts = Counter(p["SOPInstanceUID"] for p in cami.received())
    twice = [sop for sop, n in counts.items() if n > 1]
    if len(counts) != expected or twice:
        raise RuntimeError(f"CAMI holds {len(counts)} of {expected} instances ({len(twice)} more than once)")


def run_anchor(workdir: Path, paths: list[Path]) -> float:
    cami = start_cami(workdir, "cami-anchor")
    try:
        cmd = ["/usr/bin/storescu", "-aet", AGENT_AE, "-aec", "CAMI", "127.0.0.1", str(cami.dicom_port)]
        started = time.perf_counter()
        proc = subprocess.run(
            [*cmd, *map(str, paths)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {proc.stderr[-2000:]}")
        wait_for("CAMI to log every instance", lambda: len(cami.received()) >= len(paths), timeout=300)
        check_held(cami, len(paths))
        return seconds
    finally:
        cami.process.stop()


def preload(agent: Agent, paths: list[Path]) -> None:
    """Hold the files in the agent's queue, as its router would after the PACS sent them."""
    queue = TransferQueue(agent.data_dir, ORGANISATION, "bench", rules=Rules())
    try:
        for path in paths:
            queue.accept(path, source="router", calling_ae_title="BENCH_PACS")
    finally:
        queue.close()


def transfer_span(cami: Cami, studies: set[str]) -> tuple[float, int]:
    """Seconds from the first TransferStarted to the last TransferCompleted of ``studies``; file bytes."""
    events = [e for e in cami.transfers() if e.payload.get("StudyInstanceUID") in studies]
    started = min(e.envelope.occurred_at for e in events if e.type == "TransferStarted")
    completed = [e for e in events if e.type == "TransferCompleted"]
    finished = max(e.envelope.occurred_at for e in completed)
    return (finished - started).total_seconds(), sum(int(e.payload["bytes_sent"]) for e in completed)


def all_completed(cami: Cami, studies: set[str]) -> bool:
    done = {e.payload.get("StudyInstanceUID") for e in cami.transfers("TransferCompleted")}
    return studies <= done


def run_agent(
    workdir: Path, name: str, paths: list[Path], studies: set[str], kbps: float | None = None, relay: bool = False
) -> dict[str, Any]:
    cami = start_cami(workdir, f"cami-{name}")
    proxy = ThrottleProxy("127.0.0.1", cami.dicom_port) if relay else None
    try:
        if proxy is not None:
            proxy.start()
        dicom = ("127.0.0.1", proxy.port if proxy is not None else cami.dicom_port)
        agent = Agent(workdir / f"agent-{name}", AGENT_AE, cami.agent_port, dicom, cami.base_url, bandwidth_kbps=kbps)
        preload(agent, paths)
        agent.start()
        try:
            wait_for(f"the agent to deliver {len(studies)} studies", lambda: all_completed(cami, studies), timeout=7200)
        finally:
            agent.process.stop()
        check_held(cami, len(paths))
        seconds, file_bytes = transfer_span(cami, studies)
        figures: dict[str, Any] = {"seconds": seconds, "file_bytes": file_bytes}
        if proxy is not None:
            figures["wire_bytes"] = proxy.sent.bytes
            figures["wire_kbps"] = proxy.sent.kbps()
        return figures
    finally:
        if proxy is not None:
            proxy.stop()
        cami.process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--slow-instances", type=int, default=12)
    parser.add_argument("--kbps", type=float, default=256.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cami-bench-transfer-") as tmp:
        workdir = Path(tmp)
        console.print(f"writing {args.instances} CT instances ...")
        paths, studies = make_corpus(workdir / "corpus", args.instances, seed=7000)
        console.print("anchor: storescu -> CAMI ...")
        anchor_s = run_anchor(workdir, paths)
        console.print("agent -> CAMI ...")
        agent = run_agent(workdir, "fast", paths, studies)

        slow_paths, slow_studies = make_corpus(workdir / "slow", args.slow_instances, seed=9000)
        console.print(f"agent at {args.kbps:g} kbit/s -> CAMI ({args.slow_instances} instances) ...")
        slow = run_agent(workdir, "slow", slow_paths, slow_studies, kbps=args.kbps, relay=True)

    anchor_rate = args.instances / anchor_s
    agent_rate = args.instances / agent["seconds"]
    result = {
        "instances": args.instances,
        "anchor_storescu_s": round(anchor_s, 2),
        "anchor_instances_per_s": round(anchor_rate, 1),
        "agent_s": round(agent["seconds"], 2),
        "agent_instances_per_s": round(agent_rate, 1),
        "agent_vs_storescu": round(agent_rate / anchor_rate, 3),
        "slow_cap_kbps": args.kbps,
        "slow_instances": args.slow_instances,
        "slow_wire_bytes": slow["wire_bytes"],
        "slow_wire_kbps": round(slow["wire_kbps"], 1),
        "slow_link_utilisation": round(slow["wire_kbps"] / args.kbps, 3),
        "slow_transfer_s": round(slow["seconds"], 2),
        "slow_end_to_end_utilisation": round(slow["file_bytes"] * 8 / 1000 / slow["seconds"] / args.kbps, 3),
    }
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    table = Table(title="cami agent: transfer to CAMI")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
