"""`cami serve` in production mode refuses the development fallback of the pseudonym key."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import CAMI, embedded_env, run_cami


@pytest.mark.parametrize(
    ("extra_env", "args"),
    [
        ({"CAMI_ENV": "production"}, ()),
        ({}, ("--production",)),
        ({"CAMI_ENV": "production", "CAMI_PSEUDONYM_KEY": "cami-development-key-change-me"}, ()),
        ({"CAMI_ENV": "production", "CAMI_PSEUDONYM_KEY": "short"}, ()),
    ],
    ids=["env-no-key", "flag-no-key", "development-key", "short-key"],
)
def test_production_mode_without_a_pseudonym_key_refuses_to_start(
    tmp_path: Path, extra_env: dict[str, str], args: tuple[str, ...]
) -> None:
    env = {**embedded_env(tmp_path), "CAMI_DICOM_PORT": "0", "CAMI_HTTP_PORT": "0", **extra_env}
    result = run_cami("serve", *args, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAMI_PSEUDONYM_KEY" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_environment_name_is_refused(tmp_path: Path) -> None:
    env = {**embedded_env(tmp_path), "CAMI_ENV": "prod-ish", "CAMI_DICOM_PORT": "0", "CAMI_HTTP_PORT": "0"}
    result = run_cami("serve", env=env, timeout=120)
    assert result.returncode == 1 and "CAMI_ENV" in result.stderr


def test_production_mode_with_a_key_and_development_mode_without_one_start(tmp_path: Path) -> None:
    cases = {
        "production": {"CAMI_ENV": "production", "CAMI_PSEUDONYM_KEY": "k" * 40},
        "development": {},
    }
    for name, extra in cases.items():
        env = {**embedded_env(tmp_path / name), "CAMI_DICOM_PORT": "0", "CAMI_HTTP_PORT": "0", **extra}
        process = subprocess.Popen(
            [str(CAMI), "serve"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert process.stderr is not None
            os.set_blocking(process.stderr.fileno(), False)
            seen = b""
            deadline = time.monotonic() + 120
            while b"CAMI HTTP" not in seen and process.poll() is None and time.monotonic() < deadline:
                seen += process.stderr.read() or b""
                time.sleep(0.1)
            assert b"CAMI HTTP" in seen, (name, seen.decode(errors="replace"))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def test_workers_in_production_mode_refuse_the_development_key_too(tmp_path: Path) -> None:
    env = {**embedded_env(tmp_path), "CAMI_ENV": "production"}
    result = run_cami("workers", env=env, timeout=120)
    assert result.returncode == 1 and "CAMI_PSEUDONYM_KEY" in result.stderr, result.stderr
