"""`cami serve` with TLS configured, as an operator starts it: a subprocess with CAMI_TLS_* in its
environment, reached by dcmtk's echoscu over TLS and by httpx over HTTPS."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import studies
from tests.support.servers import free_ports
from tests.support.tls import Issued, TestCA

ROOT = Path(__file__).resolve().parent.parent.parent
SENDERS = """[archive]
ae_title = "CAMI"

[[sender]]
ae_title = "OKB_CT1"
organisation = "1.2.643.5.1.13.13.12.2.50.1001"
"""


def echoscu(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/bin/echoscu", "-v", *options, "-aet", "OKB_CT1", "-aec", "CAMI", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=studies.DCMTK_ENV,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def echoed(result: subprocess.CompletedProcess[str]) -> bool:
    """echoscu got a successful C-ECHO answer (it exits 0 also when the association was aborted)."""
    return result.returncode == 0 and "Received Echo Response (Success)" in result.stdout + result.stderr


def wait_listening(process: subprocess.Popen[str], port: int, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with httpx.Client(verify=False) as probe:  # only: is anything answering yet?
                probe.get(f"https://127.0.0.1:{port}/openapi.json", timeout=2)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cami serve did not listen on {port}: {log.read_text()[-3000:]}") from None
            time.sleep(0.2)


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[tuple[dict[str, int], TestCA, Issued]]:
    ca = TestCA.create(tmp_path / "ca")
    home = tmp_path / "cami"
    home.mkdir()
    (home / "senders.toml").write_text(SENDERS, encoding="utf-8")
    dicom_tls, http = free_ports(2)
    env = {
        **os.environ,
        **ca.env(ca.issue("cami-archive", server=True), "required"),
        "CAMI_HOME": str(home),
        "CAMI_PARTITIONS": "1",
        "CAMI_DICOM_PORT": "off",  # TLS only
        "CAMI_DICOM_TLS_PORT": str(dicom_tls),
        "CAMI_HTTP_PORT": str(http),
        "CAMI_HL7_PORT": "0",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve"], env=env, cwd=ROOT, stdout=output, stderr=output, text=True
        )
    try:
        wait_listening(process, http, log)
        yield {"dicom_tls": dicom_tls, "http": http}, ca, ca.issue("okb-ct1.example.org")
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_cami_serve_with_tls_only(serve: tuple[dict[str, int], TestCA, Issued]) -> None:
    ports, ca, client = serve
    trusted = echoscu(ports["dicom_tls"], "+tls", str(client.key), str(client.cert), "+cf", str(ca.cert))
    assert echoed(trusted), trusted.stdout + trusted.stderr
    assert not echoed(echoscu(ports["dicom_tls"]))  # no TLS on the TLS port
    assert not echoed(echoscu(ports["dicom_tls"], "+tla", "+cf", str(ca.cert)))  # a certificate is required

    with httpx.Client(verify=ssl.create_default_context(cafile=ca.cert)) as client_https:
        assert client_https.get(f"https://127.0.0.1:{ports['http']}/openapi.json").status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{ports['http']}/openapi.json")
