"""The configuration file (api/config.py): its keys become CAMI_* values beneath the environment's;
unknown keys, wrong types and bad values are refused naming the file, the key, the value and what
is allowed; ``cami config check`` finds every problem; one table (OPTIONS) documents every option,
and the README, the module's docstring and infra/cami.toml.example agree with it. Also the JSON
log lines' formatter (api/cli/logs.py)."""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
import tomllib
from pathlib import Path

import pytest

from api.cli.logs import JsonFormatter, rfc3339
from api.config import (
    BY_KEY,
    FROM_BOTH,
    FROM_DEFAULT,
    FROM_ENVIRONMENT,
    FROM_FILE,
    OPTIONS,
    ConfigError,
    Settings,
    check_configuration,
    effective_file,
    example_file,
    log_settings,
    read_config_file,
)
from streams.blobs import ENVIRONMENT as BLOB_STORE_ENVIRONMENT
from tests.support.config_files import write_config

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\bCAMI_[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*\b")


def _settings(path: Path, **env: str) -> Settings:
    return Settings.from_env({"CAMI_CONFIG": str(path), **env})


# -- values ------------------------------------------------------------------------------------------------


def test_the_file_values_reach_the_settings(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f"""
home = "{tmp_path / "home"}"
event_log = "kafka://b1:9092,b2:9092?replication=3"
dicom_host = "0.0.0.0"
dicom_port = 104
http_port = 0
hl7_port = "off"
ready_max_lag = "off"
partitions = 12
kafka_wait = 7.5
dicom_request_timeout = 9
double_read = ["mg", "DX"]
timezone = "Europe/Moscow"
hl7_charset = "CP1251"
env = "production"
pseudonym_key = "{"k" * 40}"
log_level = "debug"
log_format = "json"

[s3]
access_key = "archive"
secret_key = "s3cr3t"
region = "eu-central-1"
""",
    )
    settings = _settings(path)
    assert settings.home == tmp_path / "home"
    assert settings.event_log_url == "kafka://b1:9092,b2:9092?replication=3&wait=7.5"
    assert (settings.dicom_host, settings.dicom_port, settings.http_port, settings.hl7_port) == (
        "0.0.0.0",
        104,
        0,
        None,
    )
    assert settings.ready_max_lag is None and settings.partitions == 12
    assert settings.dicom_request_timeout == 9.0 and settings.double_read_modalities == ("DX", "MG")
    assert (settings.timezone, settings.hl7_charset) == ("Europe/Moscow", "cp1251")
    assert settings.production and settings.pseudonym_key == b"k" * 40
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    assert settings.blob_store_env == {
        "CAMI_S3_ACCESS_KEY": "archive",
        "CAMI_S3_SECRET_KEY": "s3cr3t",
        "AWS_REGION": "eu-central-1",
    }
    assert log_settings({"CAMI_CONFIG": str(path)}).format == "json"


def test_the_environment_overrides_the_file_and_an_empty_variable_does_not(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dicom_port = 104\nhttp_port = 8080\nlog_format = 'json'\n")
    settings = _settings(path, CAMI_DICOM_PORT="11113", CAMI_HTTP_PORT="")
    assert (settings.dicom_port, settings.http_port) == (11113, 8080)
    assert log_settings({"CAMI_CONFIG": str(path), "CAMI_LOG_FORMAT": "text"}).format == "text"
    # without a file nothing changes: the environment alone, as always
    assert Settings.from_env({"CAMI_DICOM_PORT": "104"}).dicom_port == 104


def test_switches_and_lists_take_toml_types(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("only its existence is checked here\n")
    path = write_config(
        tmp_path, f'tls_cert = "{cert}"\nhttp_tls = false\ndicom_tls_port = "off"\ndouble_read = "MG"\n'
    )
    settings = _settings(path)
    assert settings.tls.enabled and not settings.http_tls and settings.dicom_tls_port is None
    assert settings.double_read_modalities == ("MG",)


# -- refusals ----------------------------------------------------------------------------------------------

#: (file text, what the message must say besides the file's path)
REFUSED = {
    "typo": ("dicom_prot = 11112\n", ["unknown key dicom_prot", "did you mean dicom_port?"]),
    "variable-name": ("CAMI_HTTP_HOST = '0.0.0.0'\n", ["unknown key CAMI_HTTP_HOST", "did you mean http_host?"]),
    "credential-at-top": ("s3_access_key = 'x'\n", ["unknown key s3_access_key", "access_key in the [s3] table"]),
    "credential-typo": ("[s3]\nacess_key = 'x'\n", ["unknown key [s3] acess_key", "did you mean [s3] access_key?"]),
    "table": ("[dicom]\nport = 104\n", ["unknown table [dicom]", "[s3]"]),
    "quoted-port": ('http_port = "8042"\n', ['http_port = "8042"', "an integer 1-65535"]),
    "boolean-port": ("dicom_port = true\n", ["dicom_port = true", 'or "off"']),
    "port-range": ("dicom_port = 70000\n", ["dicom_port = 70000", "'70000' is not a port", "1-65535"]),
    "port-word": ('hl7_port = "closed"\n', ['hl7_port = "closed"', 'or "off"']),
    "number-text": ("timezone = 3\n", ["timezone = 3", "a string"]),
    "time-zone": ('timezone = "Mars/Olympus"\n', ['timezone = "Mars/Olympus"', "not a time zone"]),
    "log-level": ('log_level = "verbose"\n', ['log_level = "verbose"', "debug, info, warning, error"]),
    "log-format": ('log_format = "xml"\n', ['log_format = "xml"', "text, json"]),
    "partitions": ("partitions = 0\n", ["partitions = 0", "whole number of 1 or more"]),
    "list": ("double_read = [1, 2]\n", ["double_read = [1, 2]", "a list of strings"]),
    "modality": ('double_read = ["MG", "X-RAY"]\n', ["double_read", "X-RAY is not a DICOM modality code"]),
    "switch": ('http_tls = "maybe"\n', ['http_tls = "maybe"', "true or false"]),
    "balancer": ('dicom_proxy_from = ["lb1.region"]\n', ["dicom_proxy_from", "'lb1.region' is not an IP address"]),
    "notices": ('mis_notices = "one"\n', ['mis_notices = "one"', "true or false"]),
    "broker-port": ('event_log = "kafka://b1:99999"\n', ['event_log = "kafka://b1:99999"', "'99999' is not a port"]),
    "host": ('http_host = "999.1.1.1"\n', ['http_host = "999.1.1.1"', "is not a host"]),
    "environment": ('env = "prod"\n', ['env = "prod"', "development, production"]),
    "client-cert": ('tls_client_cert = "sometimes"\n', ['tls_client_cert = "sometimes"', "none, optional, required"]),
}


@pytest.mark.parametrize(("text", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_file_is_refused_naming_the_file_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, text: str, says: list[str]
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        _settings(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for part in says:
        assert part in message, message
    check = check_configuration({"CAMI_CONFIG": str(path)})
    assert not check.valid and check.problems == (message,) and check.rows == ()


def test_secrets_are_never_repeated_in_a_message(tmp_path: Path) -> None:
    path = write_config(tmp_path, "pseudonym_key = 123456789\n[s3]\nsecret_key = 987654321\n")
    check = check_configuration({"CAMI_CONFIG": str(path)})
    assert len(check.problems) == 2
    for problem in check.problems:
        assert "(hidden)" in problem and "123456789" not in problem and "987654321" not in problem


def test_a_file_that_cannot_be_read_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="no such configuration file"):
        _settings(missing)
    with pytest.raises(ConfigError, match="is a directory"):
        _settings(tmp_path)
    broken = write_config(tmp_path, "dicom_port = \n")
    with pytest.raises(ConfigError, match=r"not a TOML file: .*line 1"):
        _settings(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"home = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _settings(binary)


def test_the_first_problem_stops_a_command_and_says_there_are_more(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dicom_prot = 1\nhttp_prot = 2\nhl7_prot = 3\n")
    with pytest.raises(ConfigError, match=r"dicom_prot .*\(and more: cami config check lists every problem\)$"):
        _settings(path)


def test_a_value_that_needs_another_is_explained_with_its_key(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("a key\n")
    path = write_config(tmp_path, f'tls_key = "{key}"\n')
    with pytest.raises(ConfigError, match=rf"need CAMI_TLS_CERT \(in {re.escape(str(path))}: tls_key\)"):
        _settings(path)


# -- cami config check -------------------------------------------------------------------------------------


def test_check_finds_every_problem_of_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'dicom_prot = 1\nhttp_port = "x"\nhl7_port = 70000\ntimezone = "Nowhere/Town"\n')
    check = check_configuration({"CAMI_CONFIG": str(path), "CAMI_DICOM_HOST": "999.1.1.1"})
    assert [p.split(": ", 2)[1].split(" ")[0] for p in check.problems if p.startswith(str(path))] == [
        "unknown",
        "http_port",
        "hl7_port",
        "timezone",
    ]
    assert any(p.startswith("CAMI_DICOM_HOST: '999.1.1.1' is not a host") for p in check.problems)
    assert len(check.problems) == 5


def test_check_shows_each_setting_in_effect_and_where_it_came_from(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        'clickhouse = "clickhouse://cami:hunter2@ch.local:8123/cami"\ndicom_port = 104\nhttp_port = 8080\n'
        'session_key = "' + "s" * 40 + '"\n',
    )
    env = {"CAMI_CONFIG": str(path), "CAMI_HOME": str(tmp_path / "home"), "CAMI_HTTP_PORT": "9090"}
    check = check_configuration(env)
    assert check.valid and check.warnings == ()
    rows = {row.key: row for row in check.rows}
    assert [row.key for row in check.rows] == [option.key for option in OPTIONS]
    assert (rows["dicom_port"].value, rows["dicom_port"].source) == ("104", FROM_FILE)
    assert (rows["http_port"].value, rows["http_port"].source) == ("9090", FROM_BOTH)
    assert (rows["home"].value, rows["home"].source) == (str(tmp_path / "home"), FROM_ENVIRONMENT)
    assert (rows["event_log"].value, rows["event_log"].source) == (f"sqlite://{tmp_path}/home/events.db", FROM_DEFAULT)
    assert rows["clickhouse"].value == "clickhouse://cami:***@ch.local:8123/cami"
    assert rows["session_key"].value == "*** (set)"
    shown = json.dumps([vars(row) for row in check.rows])
    assert "hunter2" not in shown and "s" * 40 not in shown
    # `cami config show`: the same as a file that reads back
    again = write_config(tmp_path, effective_file(check), "shown.toml")
    assert read_config_file(again).problems == ()
    assert tomllib.loads(again.read_text())["http_port"] == 9090


def test_check_warns_of_secrets_everyone_can_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[s3]\nsecret_key = 'x'\n")
    assert check_configuration({"CAMI_CONFIG": str(path)}).warnings == ()
    path.chmod(0o644)
    [warning] = check_configuration({"CAMI_CONFIG": str(path)}).warnings
    assert "s3.secret_key" in warning and "chmod 600" in warning


def test_check_without_a_file_checks_the_environment(tmp_path: Path) -> None:
    check = check_configuration({"CAMI_HOME": str(tmp_path)})
    assert check.valid and check.file is None
    assert {row.source for row in check.rows} == {FROM_ENVIRONMENT, FROM_DEFAULT}
    production = check_configuration({"CAMI_HOME": str(tmp_path), "CAMI_ENV": "production"})
    assert production.problems == ("production mode needs CAMI_PSEUDONYM_KEY (the development key is refused)",)


# -- one table: the example file, the README, the docstring ------------------------------------------------


def _uncommented(text: str) -> str:
    """The example with every option set: ``#key = value`` and ``#[table]`` lines uncommented."""
    return "\n".join(line[1:] if re.match(r"#[a-z\[]", line) else line for line in text.splitlines()) + "\n"


def test_the_example_file_is_generated_from_the_table() -> None:
    shipped = (ROOT / "infra" / "cami.toml.example").read_text(encoding="utf-8")
    assert shipped == example_file(), "regenerate it: cami config show --defaults > infra/cami.toml.example"


def test_the_example_parses_and_sets_every_option(tmp_path: Path) -> None:
    text = example_file()
    assert tomllib.loads(text) == {}  # all commented out: the defaults
    example = write_config(tmp_path, _uncommented(text))
    read = read_config_file(example)
    assert read.problems == ()
    assert set(read.values) == {option.variable for option in OPTIONS}
    for name in ("tls_cert", "tls_key", "tls_ca"):  # the settings check that these files exist
        (tmp_path / f"{name}.pem").write_text("only its existence is checked here\n")
    paths = {f"CAMI_{name.upper()}": str(tmp_path / f"{name}.pem") for name in ("tls_cert", "tls_key", "tls_ca")}
    check = check_configuration({"CAMI_CONFIG": str(example), **paths})
    assert check.valid, check.problems
    assert {row.source for row in check.rows} == {FROM_FILE, FROM_BOTH}
    for option in OPTIONS:
        assert f"# {option.variable}; default: {option.default}" in text
        assert f"#{option.name} = " in text


def _code_of_config() -> str:
    """api/config.py without its docstrings: what the code itself names."""
    tree = ast.parse((ROOT / "api" / "config.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            body[0] = ast.Pass()
    return ast.unparse(tree)


def test_every_variable_the_settings_read_is_in_the_table() -> None:
    variables = {option.variable for option in OPTIONS}
    read = set(VARIABLE.findall(_code_of_config())) - {"CAMI_CONFIG"}
    assert read - variables == set(), "a variable api/config.py reads has no row in OPTIONS"
    assert {v for v in variables if v.startswith("CAMI_")} - read == set(), "a row in OPTIONS nothing reads"
    assert set(BLOB_STORE_ENVIRONMENT) - variables <= {"AWS_DEFAULT_REGION"}
    assert len(BY_KEY) == len(OPTIONS) == len(variables), "a key or a variable twice"


def test_the_readme_and_the_docstring_document_every_option() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = {name for line in section.splitlines() if line.startswith("| `CAMI_") for name in VARIABLE.findall(line)}
    import api.config

    docstring = api.config.__doc__ or ""
    for option in OPTIONS:
        if option.variable.startswith("CAMI_"):
            assert option.variable in table, f"{option.variable} not in the README's configuration table"
            assert re.search(rf"^{option.variable}\s", docstring, re.M), f"{option.variable} not in the docstring"
    for key in ("[s3]", "access_key", "secret_key", "log_level", "log_format", "cami config check", "CAMI_CONFIG"):
        assert key in section, f"{key} not in the README's configuration section"


# -- JSON log lines ----------------------------------------------------------------------------------------


def test_a_json_log_line_has_time_level_logger_message_exc_and_the_extras() -> None:
    try:
        raise RuntimeError("broker gone")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("cami.kafka", logging.WARNING, __file__, 1, "Kafka %s: %d", ("down", 3), exc_info)
    record.broker = "127.0.0.1:9092"
    record.lag = float("nan")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "cami.kafka", "Kafka down: 3")
    assert entry["exc"].startswith("Traceback") and "RuntimeError: broker gone" in entry["exc"]
    assert (entry["broker"], entry["lag"]) == ("127.0.0.1:9092", "nan")
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
    plain = json.loads(
        JsonFormatter().format(logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Ок", None, None))
    )
    assert set(plain) == {"time", "level", "logger", "message"} and plain["message"] == "Ок"
