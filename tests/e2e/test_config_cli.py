"""The real ``cami`` with a configuration file: ``cami --config FILE config check`` on a good and a
bad file, a bad file stopping another command, and ``cami serve`` logging JSON lines on stderr
(every line one object with time, level, logger and message: the web server's, the archive's and
what the command prints for people)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.cli import CAMI, embedded_env, run_cami
from tests.support.config_files import write_config

RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_config_check_shows_a_good_file_and_where_each_setting_came_from(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = write_config(
        tmp_path, f'home = "{home}"\ndicom_port = 11113\nhl7_port = "off"\n[s3]\nsecret_key = "hunter2"\n'
    )
    env = {**embedded_env(tmp_path), "CAMI_HTTP_PORT": "9090"}
    env.pop("CAMI_HOME")
    env.pop("CAMI_HL7_PORT")
    result = run_cami("--config", str(path), "config", "check", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout and result.stderr == ""
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert lines["dicom_port"].split()[1:] == ["11113", "(file)"]
    assert lines["http_port"].split()[1:] == ["9090", "(environment,", "CAMI_HTTP_PORT)"]
    assert "(default)" in lines["event_log"] and str(home) in lines["event_log"]
    assert "hunter2" not in result.stdout
    as_json = run_cami("config", "check", str(path), "--json", env=env, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["valid"] and report["problems"] == [] and report["file"] == str(path)
    rows = {row["key"]: row for row in report["settings"]}
    assert (rows["hl7_port"]["value"], rows["hl7_port"]["source"]) == ("off", "file")
    assert rows["s3.secret_key"]["value"] == "*** (set)"
    assert not home.exists()  # a check opens nothing


def test_config_check_lists_every_problem_of_a_bad_file_and_other_commands_stop_at_the_first(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'dicom_prot = 11112\nhttp_port = "8042"\ntimezone = "Mars/Olympus"\n')
    env = embedded_env(tmp_path)
    result = run_cami("--config", str(path), "config", "check", env=env, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr)
    problems = result.stderr.strip().splitlines()
    assert problems == [
        f"cami config: {path}: unknown key dicom_prot (did you mean dicom_port?); see cami config show --defaults",
        f'cami config: {path}: http_port = "8042": an integer 1-65535, or 0 for a free one (no quotes)',
        f"cami config: {path}: timezone = \"Mars/Olympus\": 'Mars/Olympus' is not a time zone (e.g. Europe/Moscow)",
    ]
    assert result.stdout == ""
    as_json = run_cami("config", "check", str(path), "--json", env=env, timeout=60)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["problems"] == [
        p[len("cami config: ") :] for p in problems
    ]

    status = run_cami("--config", str(path), "status", env=env, timeout=60)
    assert status.returncode == 1, status.stderr
    [line] = status.stderr.strip().splitlines()
    assert line.startswith(f"cami status: {path}: unknown key dicom_prot (did you mean dicom_port?)")
    assert line.endswith("(and more: cami config check lists every problem)")
    missing = run_cami("--config", str(tmp_path / "nowhere.toml"), "status", env=env, timeout=60)
    assert missing.returncode == 1 and "no such configuration file" in missing.stderr
    by_variable = run_cami("status", env={**env, "CAMI_CONFIG": str(path)}, timeout=60)
    assert by_variable.returncode == 1 and "did you mean dicom_port?" in by_variable.stderr
    assert not (tmp_path / "home").exists()


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)  # every line: one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        assert RFC3339_MS_UTC.fullmatch(entry["time"]) and entry["level"] in ("debug", "info", "warning", "error")
        entries.append(entry)
    return entries


def test_serve_with_log_format_json_writes_only_json_lines_on_stderr(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'home = "{tmp_path / "home"}"\ndicom_port = 0\nhttp_port = 0\nhl7_port = 0\nlog_format = "json"\n',
    )
    env = {k: v for k, v in embedded_env(tmp_path).items() if k not in ("CAMI_HOME", "CAMI_HL7_PORT")}
    stderr = tmp_path / "serve.err"
    with stderr.open("wb") as output:
        process = subprocess.Popen(
            [str(CAMI), "--config", str(path), "serve"], env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        url = ""
        deadline = time.monotonic() + 120
        while not url and process.poll() is None and time.monotonic() < deadline:
            found = re.search(r"CAMI HTTP \(DICOMweb, study pages, reports\) on (http://[\d.:]+)", stderr.read_text())
            url = found.group(1) if found else ""
            time.sleep(0.1)
        assert url, stderr.read_text()[-3000:]
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as answer:
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    text = stderr.read_text()
    assert code == 0, text[-3000:]
    entries = _json_lines(text)
    by_logger = {entry["logger"] for entry in entries}
    assert {"cami.console", "uvicorn.error"} <= by_logger, by_logger  # the web server's own lines too
    said = [entry["message"] for entry in entries if entry["logger"] == "cami.console"]
    assert any(message.startswith("CAMI DICOM (storage, commitment, Q/R)") for message in said), said
    assert any(message == f"CAMI HTTP (DICOMweb, study pages, reports) on {url}" for message in said), said


def test_a_failing_command_logs_its_error_as_json_with_the_traceback_under_v(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'home = "{tmp_path / "home"}"\ndicom_port = 0\nhttp_port = 0\nlog_format = "json"\n')
    env = {k: v for k, v in embedded_env(tmp_path).items() if k != "CAMI_HOME"}
    # --dicom-tls-port without tls_cert: refused after the settings are read, before anything opens
    for args, traceback in ((("serve",), False), (("-v", "--config", str(path), "serve"), True)):
        argv = args if traceback else ("--config", str(path), *args)
        result = run_cami(*argv, "--dicom-tls-port", "0", env=env, timeout=120)
        assert result.returncode == 1, result.stderr
        [entry] = _json_lines(result.stderr)
        assert entry["level"] == "error" and entry["logger"] == "cami.cli"
        needs = "--dicom-tls-port needs CAMI_TLS_CERT (and CAMI_TLS_KEY): see README, Configuration"
        assert entry["message"] == f"cami serve: ValueError: {needs}"
        assert ("exc" in entry) == traceback and (not traceback or "Traceback" in entry["exc"])
