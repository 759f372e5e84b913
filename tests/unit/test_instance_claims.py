"""Claims on instance versions (ingest.instance_claims): created once, read back whole, and a
claim whose process on this machine has ended is known to be gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ingest.instance_claims import LocalClaims, holder_gone

SOP = "1.2.826.0.1.3680043.8.498.1"


def test_one_claim_per_version_and_the_others_read_it_whole(tmp_path: Path) -> None:
    claims = LocalClaims(tmp_path)
    results: list[object] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        start.wait()
        results.append(claims.claim(SOP, 1, f"{i:064x}", f"node-{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = [r for r in results if r is None]
    assert len(won) == 1
    held = claims.read(SOP, 1)
    assert held is not None and held.node.startswith("node-") and not held.recorded
    # every loser saw the winner's claim whole (never a half-written one)
    assert {getattr(r, "sha256", None) for r in results if r is not None} == {held.sha256}
    claims.replace(SOP, 1, held.sha256, held.node, recorded=True)
    again = claims.read(SOP, 1)
    assert again is not None and again.recorded and again.sha256 == held.sha256
    assert claims.read(SOP, 2) is None
    assert not list(tmp_path.rglob("v1.*"))  # no spare files left behind


def test_a_claim_of_a_process_that_ended_on_this_machine_is_gone() -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(ended.stdout)
    host = socket.gethostname()
    assert holder_gone(f"{host}:{pid}:abcd")
    assert not holder_gone(f"{host}:{os.getpid()}:abcd")  # this process
    assert not holder_gone(f"{host}:1:abcd")  # alive (init)
    assert not holder_gone(f"another-host:{pid}:abcd")  # elsewhere: only its age tells
    assert not holder_gone("torn")


def test_a_claim_names_an_instance_and_a_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalClaims(tmp_path).claim("../etc", 1, "0" * 64, "n")
    with pytest.raises(ValueError):
        LocalClaims(tmp_path).claim(SOP, 0, "0" * 64, "n")
