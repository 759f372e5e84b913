"""agent.toml: the documented example loads, defaults apply, and every bad value names its key."""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path

import pytest

import ingest.agent.config as config_module
from ingest.agent.config import AgentConfigError, Rules, load_config
from ingest.agent.schedule import Window

MINIMAL = """
[agent]
organisation = "ORG1"
agent_id = "agent-1"
data_dir = "data"

[cami]
base_url = "https://cami.example/"
token = "secret"
host = "cami.example"
port = 11112
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    doc = config_module.__doc__ or ""
    example = re.search(r"example::\n\n(.*?)\n\n(?! )", doc, re.S)
    assert example is not None
    text = "\n".join(line[4:] for line in example.group(1).splitlines())
    (tmp_path / "agent.token").write_text("token-from-file\n")
    (tmp_path / "mis.token").write_text("mis-token\n")
    config = load_config(write(tmp_path, text))
    assert config.organisation == "1.2.643.5.1.13.13.12.2.50.1001"
    assert config.data_dir == (tmp_path / "data").resolve()  # relative to the file
    assert config.heartbeat == 30.0
    assert config.cami.token == "token-from-file" and config.cami.base_url == "https://cami.region.example"
    assert config.cami.delivery == "dicom" and config.cami.port == 11112 and config.cami.commitment_timeout == 60
    assert config.router.emergency_ae_title == "LAMI_URGENT"
    assert config.router.allowed_callers == ("CT1", "LOCAL_PACS")
    assert config.request_poll == 15.0
    assert len(config.polls) == 1 and config.polls[0].retrieve == "move" and config.polls[0].interval == 300
    assert config.folder is not None and config.folder.path == Path("/srv/dicom-drop") and config.folder.settle == 10
    assert config.mis is not None and config.mis.token == "mis-token"
    assert config.rules == Rules(True, ("private", "mis", "sr"), (("SCT", "263654008"), ("SCT", "52101004")))
    assert config.schedule.bandwidth_kbps == 256
    assert config.schedule.windows == (
        Window(frozenset(range(5)), time(20), time(7)),
        Window(frozenset({5, 6}), time(0), time(0), until_midnight=True),
    )
    assert config.path == tmp_path / "agent.toml"


def test_the_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.cami.base_url == "https://cami.example"
    assert config.cami.ae_title == "CAMI" and config.cami.emergency_ae_title == "CAMI_URGENT"
    assert config.cami.verify_tls is True
    assert config.router.ae_title == "LAMI_AGENT" and config.router.port == 11113
    assert config.polls == () and config.folder is None and config.mis is None
    assert config.rules == Rules()
    assert config.schedule.windows == () and config.schedule.bandwidth_kbps is None


def test_paths_resolve_against_the_files_directory(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("---")
    text = MINIMAL.replace('token = "secret"', 'token_file = "keys/t"\nverify_tls = "ca.pem"')
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "t").write_text("  abc  \n")
    text += '\n[folder]\npath = "drop"\n'
    config = load_config(write(tmp_path, text))
    assert config.cami.token == "abc"
    assert config.cami.verify_tls == str((tmp_path / "ca.pem").resolve())
    assert config.folder is not None and config.folder.path == (tmp_path / "drop").resolve()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("port = 11112", "port = 70000"), r"\[cami\] port: expected an integer 1-65535"),
        (("port = 11112", 'port = "104"'), r"\[cami\] port: expected an integer"),
        (('agent_id = "agent-1"', ""), r"\[agent\] agent_id is required"),
        (('data_dir = "data"', ""), r"\[agent\] data_dir is required"),
        (('base_url = "https://cami.example/"', ""), r"\[cami\] base_url is required"),
        (('base_url = "https://cami.example/"', 'base_url = "cami.example"'), r"\[cami\] base_url: .* not an http"),
        (('token = "secret"', ""), r"\[cami\] token or token_file is required"),
        (('token = "secret"', 'token = "a"\ntoken_file = "x"'), r"\[cami\]: give token or token_file, not both"),
        (('token = "secret"', 'token_file = "nowhere"'), r"\[cami\] token_file: cannot read"),
        (("port = 11112", ""), r"\[cami\] host and port are required for delivery"),
        (("port = 11112", 'port = 1\ndelivery = "ftp"'), r"\[cami\] delivery: expected 'dicom' or 'stow'"),
        (("port = 11112", "port = 1\nprot = 2"), r"\[cami\]: unknown key\(s\) prot"),
        (("port = 11112", 'port = 1\nae_title = "A_VERY_LONG_AE_TITLE"'), r"\[cami\] ae_title: .* not an AE title"),
        (("port = 11112", "port = 1\nverify_tls = 3"), r"\[cami\] verify_tls: expected true, false or a CA"),
        (("port = 11112", 'port = 1\nverify_tls = "nope.pem"'), r"\[cami\] verify_tls: the CA bundle .* not exist"),
        (("[cami]", "[agent2]\n[cami]"), r"unknown section\(s\) \[agent2\]"),
        (('data_dir = "data"', 'data_dir = "data"\nheartbeat_seconds = 0'), r"\[agent\] heartbeat_seconds: .*above 0"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in MINIMAL
    with pytest.raises(AgentConfigError, match=message):
        load_config(write(tmp_path, MINIMAL.replace(old, new, 1)))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[schedule]\nwindows = ["mon-fri 20:00-07:00", "mon 25:00-26:00"]', r"\[schedule\] windows\[1\]: .*25:00"),
        ('[schedule]\nwindows = "mon-fri 20:00-07:00"', r"\[schedule\] windows: expected a list"),
        ("[schedule]\nbandwidth_kbps = -5", r"\[schedule\] bandwidth_kbps: expected a number above 0"),
        ('[rules]\npathology_marks = ["private", "rumour"]', r"\[rules\] pathology_marks: expected a list of"),
        ('[rules]\npathology_codes = ["263654008"]', r"\[rules\] pathology_codes\[0\]: expected SCHEME:VALUE"),
        ('[rules]\npathology_only = "yes"', r"\[rules\] pathology_only: expected true or false"),
        ('[router]\nae_title = "X"\nemergency_ae_title = "X"', r"\[router\] emergency_ae_title must differ"),
        ('[router]\nallowed_callers = "CT1"', r"\[router\] allowed_callers: expected a list of AE titles"),
        ('[router]\nallowed_callers = ["A_VERY_LONG_AE_TITLE"]', r"\[router\] allowed_callers: expected a list"),
        ('[[poll]]\nae_title = "PACS"\nhost = "h"', r"\[\[poll\]\] #1: ae_title, host and port are required"),
        ('[[poll]]\nae_title = "PACS"\nhost = "h"\nport = 104\nretrieve = "push"', r"\[\[poll\]\] #1 retrieve"),
        ("[folder]\nsettle_seconds = 3", r"\[folder\] path is required"),
        ('[mis]\nport = 8099\ntoken = ""', r"\[mis\] token: expected a text"),
        ("[mis]\nport = 8099", r"\[mis\] token or token_file is required"),
    ],
)
def test_a_bad_section_names_its_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        load_config(write(tmp_path, MINIMAL + "\n" + section + "\n"))


def test_rules_and_schedule_values(tmp_path: Path) -> None:
    text = MINIMAL + (
        '\n[rules]\npathology_only = false\npathology_marks = ["mis"]\npathology_codes = ["DCM:111150", "SCT:1"]\n'
        '[schedule]\nwindows = ["daily 20:00:00-07:00:00"]\nbandwidth_kbps = 512.5\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.rules == Rules(False, ("mis",), (("DCM", "111150"), ("SCT", "1")))
    assert config.schedule.windows == (Window(frozenset(range(7)), time(20), time(7)),)
    assert config.schedule.bandwidth_kbps == 512.5


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(AgentConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[agent\n"))
