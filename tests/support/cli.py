"""The installed ``cami`` console script run as a subprocess, on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CAMI = Path(sys.executable).parent / "cami"


def run_cami(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    assert CAMI.exists(), f"{CAMI} missing: install the project (bash infra/python.sh)"
    return subprocess.run(
        [str(CAMI), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    env["CAMI_HOME"] = str(tmp_path / "home")
    env["CAMI_HL7_PORT"] = "0"  # `cami serve` in parallel tests: a free port, never the shared 2575
    return env
