"""The real ``cami`` refuses a port or an address it cannot use, before it opens anything.

``cami serve`` with CAMI_HTTP_PORT=68042 once started the DICOM port and the processors, then
the HTTP server's bind overflowed in its thread, and the process died on its way out with the
embedded ClickHouse still open (SIGSEGV, exit 139) -- after ``cami demo`` had printed links with
that port. Now a bad setting is one line naming it (exit 1) and a bad option argparse's usage
error (exit 2), and the data directory is never created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import embedded_env, run_cami

NOT_A_HOST = "CAMI_HTTP_HOST: '999.1.1.1' is not a host"
#: (arguments, extra environment, exit code, what stderr must say)
CASES = {
    "serve-env-http-port": (("serve",), {"CAMI_HTTP_PORT": "68042"}, 1, "CAMI_HTTP_PORT: '68042' is not a port"),
    "serve-option-http-port": (("serve", "--http-port", "68042"), {}, 2, "--http-port: '68042' is not a port"),
    "serve-option-dicom-port": (("serve", "--dicom-port", "-1"), {}, 2, "--dicom-port: '-1' is not a port"),
    "serve-env-http-host": (("serve",), {"CAMI_HTTP_HOST": "999.1.1.1"}, 1, NOT_A_HOST),
    "demo-env-http-port": (("demo",), {"CAMI_HTTP_PORT": "68042"}, 1, "CAMI_HTTP_PORT: '68042' is not a port"),
    "demo-env-http-host": (("demo",), {"CAMI_HTTP_HOST": "999.1.1.1"}, 1, NOT_A_HOST),
    "status-env-dicom-port": (("status",), {"CAMI_DICOM_PORT": "-1"}, 1, "CAMI_DICOM_PORT: '-1' is not a port"),
    "monitor-option-url": (
        ("monitor", "--token-file", "-", "--url", "http://127.0.0.1:68042"),
        {},
        2,
        "--url: 'http://127.0.0.1:68042': '68042' is not a port",
    ),
}


@pytest.mark.parametrize(("args", "extra_env", "code", "says"), CASES.values(), ids=CASES.keys())
def test_a_bad_port_or_address_is_refused_before_anything_starts(
    tmp_path: Path, args: tuple[str, ...], extra_env: dict[str, str], code: int, says: str
) -> None:
    result = run_cami(*args, env={**embedded_env(tmp_path), **extra_env}, timeout=60)
    assert result.returncode == code, (result.returncode, result.stderr)  # an exit, not a signal
    assert says in result.stderr, result.stderr
    allowed = ("an integer 1-65535", "an IPv4 or IPv6 address or a host name")
    assert any(rule in result.stderr for rule in allowed), result.stderr  # and what would do
    assert "Traceback" not in result.stderr and result.stdout == ""
    if code == 1:  # one line: the command, the setting, the value and what is allowed
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"cami {args[0]}: ")
    assert not (tmp_path / "home").exists()  # nothing opened: not even the data directory
