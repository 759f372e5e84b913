"""infra/systemd/: the units run real ``cami`` subcommands with documented settings, are hardened and
restartable as docs/pilot.md says, and pass ``systemd-analyze verify`` (Debian's systemd package; no
running systemd needed). The units name the installed ``/opt/cami/.venv/bin/cami``; the checks run
this checkout's ``cami`` in its place."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS_DIR = ROOT / "infra" / "systemd"
UNITS = ("cami-serve.service", "cami-workers@.service", "cami-agent.service")
INSTALLED_CAMI = "/opt/cami/.venv/bin/cami"
CAMI = Path(sys.executable).parent / "cami"
#: variables a unit may set that are not CAMI's own settings (Python's documented ones)
OTHER_VARIABLES = {"PYTHONUNBUFFERED"}

Unit = dict[str, list[tuple[str, str]]]


def parse(path: Path) -> Unit:
    """Sections -> (key, value) in order; a key may repeat (Environment=, ReadWritePaths=...)."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        assert section is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        section.append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_is_a_real_subcommand(name: str) -> None:
    unit = parse(UNITS_DIR / name)
    command = one(unit, "Service", "ExecStart").split()
    assert command[0] == INSTALLED_CAMI
    answer = subprocess.run(
        [str(CAMI), *command[1:], "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith(f"usage: cami {command[1]}")


@pytest.mark.parametrize("name", UNITS)
def test_every_variable_set_is_documented(name: str) -> None:
    unit = parse(UNITS_DIR / name)
    documented = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "api" / "config.py").read_text(
        encoding="utf-8"
    )
    assignments = [a for line in values(unit, "Service", "Environment") for a in line.split()]
    assert "CAMI_CONFIG=/etc/cami/cami.toml" in assignments
    names = [a.partition("=")[0] for a in assignments]
    for variable in names:
        if variable not in OTHER_VARIABLES:
            assert re.search(rf"\b{variable}\b", documented), (
                f"{name}: {variable} is in neither README nor api/config.py"
            )


@pytest.mark.parametrize("name", UNITS)
def test_runs_as_cami_restarts_and_is_hardened(name: str) -> None:
    unit = parse(UNITS_DIR / name)
    assert "network-online.target" in one(unit, "Unit", "After")
    assert "network-online.target" in one(unit, "Unit", "Wants")
    service = dict(unit["Service"])  # the single-valued keys
    expected = {
        "User": "cami",
        "Group": "cami",
        "EnvironmentFile": "-/etc/cami/cami.env",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert 30 <= int(service["TimeoutStopSec"]) <= 300
    assert int(service["LimitNOFILE"]) >= 16384
    # the one place it writes is its data directory, which systemd makes for the cami user
    data = f"/var/lib/{one(unit, 'Service', 'StateDirectory')}"
    assert values(unit, "Service", "ReadWritePaths") == [data]
    assert one(unit, "Service", "WorkingDirectory") == data
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (Debian's package; it need not run)"
    for name in UNITS:
        text = (UNITS_DIR / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED_CAMI, str(CAMI)), encoding="utf-8")
    answer = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 0 and not answer.stdout.strip() and not answer.stderr.strip(), (
        answer.stdout + answer.stderr
    )


def test_cami_admin_is_a_shell_script_that_switches_to_the_service_user() -> None:
    path = UNITS_DIR / "cami-admin"
    assert path.stat().st_mode & 0o111
    subprocess.run(["sh", "-n", str(path)], check=True, timeout=30)
    text = path.read_text(encoding="utf-8")
    assert 'export CAMI_CONFIG="$etc/cami.toml"' in text and 'runuser -u "$user"' in text
