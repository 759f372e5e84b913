"""One settings object (api/config.py): every CAMI_* variable the code names is read there, and
only there, and documented in the README's configuration table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.config import ConfigError, Settings
from ingest.importer import ImportLimits

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "streams", "ingest", "projections", "api")
VARIABLE = re.compile(r"\bCAMI_[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*\b")
#: names that look like variables but are not: an AE title of the demo region
NOT_VARIABLES = {"CAMI_URGENT"}


def _variables_named_in(path: Path) -> set[str]:
    return set(VARIABLE.findall(path.read_text(encoding="utf-8"))) - NOT_VARIABLES


def _code_variables() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found |= _variables_named_in(path)
    return found


def _readme_table() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `CAMI_")]
    return {name for row in rows for name in VARIABLE.findall(row.split("|")[1])}


def test_only_the_settings_read_the_environment() -> None:
    readers = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "api" / "config.py":
                continue
            if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text(encoding="utf-8")):
                readers.append(str(path.relative_to(ROOT)))
    assert readers == []


def test_every_variable_the_code_names_is_in_the_readme_table() -> None:
    missing = _code_variables() - _readme_table()
    assert not missing, f"not in the README configuration table: {sorted(missing)}"


def test_every_variable_in_the_readme_table_changes_a_setting(tmp_path: Path) -> None:
    pem = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    for path in pem.values():
        path.write_text("not read here: the settings only check the files exist\n")
    base = Settings.from_env({"CAMI_HOME": "/srv/cami"})
    tls = {"CAMI_TLS_CERT": str(pem["cert"])}
    samples = {
        "CAMI_HOME": "/srv/other",
        "CAMI_EVENT_LOG": "kafka://b1:9092",
        "CAMI_BLOBS": "s3://bucket",
        "CAMI_CLICKHOUSE": "clickhouse://h:8123/cami",
        "CAMI_QUERY_STORE": "sqlite:///srv/fast/query.db",
        "CAMI_PARTITIONS": "12",
        "CAMI_KAFKA_WAIT": "30",
        "CAMI_TOPIC_PREFIX": "region50",
        "CAMI_READY_MAX_LAG": "500",
        "CAMI_MIS_NOTICES": "off",
        "CAMI_PSEUDONYM_KEY": "x" * 40,
        "CAMI_ENV": "production",
        "CAMI_SENDERS": "/etc/cami/senders.toml",
        "CAMI_USERS": "/etc/cami/users.toml",
        "CAMI_ORGANISATIONS": "/etc/cami/organisations.toml",
        "CAMI_SESSION_KEY": "s" * 40,
        "CAMI_DICOM_HOST": "0.0.0.0",
        "CAMI_DICOM_PORT": "104",
        "CAMI_HTTP_HOST": "0.0.0.0",
        "CAMI_HTTP_PORT": "8080",
        "CAMI_HL7_HOST": "0.0.0.0",
        "CAMI_HL7_PORT": "6661",
        "CAMI_HL7_CHARSET": "CP1251",
        "CAMI_TIMEZONE": "Europe/Moscow",
        "CAMI_DOUBLE_READ": "MG,DX",
        "CAMI_DICOM_PROXY_FROM": "10.0.0.5,10.0.0.6",
        "CAMI_DICOM_REQUEST_TIMEOUT": "9.5",
        "CAMI_DICOM_MAX_ASSOCIATIONS": "64",
        "CAMI_MAX_INFLATED_BYTES": "1000",
        "CAMI_HTTP_MAX_BODY": "2000",
        "CAMI_IMPORT_MAX_FILE": "3000",
        "CAMI_IMPORT_MAX_RATIO": "7.5",
        "CAMI_IMPORT_MAX_ZIP_TOTAL": "4000",
        "CAMI_S3_ACCESS_KEY": "access",
        "CAMI_S3_SECRET_KEY": "secret",
        "CAMI_TLS_CERT": str(pem["cert"]),
        "CAMI_TLS_KEY": str(pem["key"]),
        "CAMI_TLS_CA": str(pem["ca"]),
        "CAMI_TLS_CLIENT_CERT": "required",
        "CAMI_DICOM_TLS_PORT": "2763",
        "CAMI_HTTP_TLS": "off",
        "CAMI_LOG_LEVEL": "debug",
        "CAMI_LOG_FORMAT": "json",
        "CAMI_CONFIG": str(tmp_path / "cami.toml"),
    }
    (tmp_path / "cami.toml").write_text("partitions = 12\n")
    assert set(samples) == _readme_table(), "a sample value for every documented variable"
    for name, value in samples.items():
        extra = tls if name.startswith(("CAMI_TLS_", "CAMI_DICOM_TLS", "CAMI_HTTP_TLS")) else {}
        if name == "CAMI_TLS_CLIENT_CERT":  # optional by default once there is a CA
            extra = {**tls, "CAMI_TLS_CA": str(pem["ca"])}
        if name in ("CAMI_KAFKA_WAIT", "CAMI_TOPIC_PREFIX"):  # options of a Kafka log
            extra = {"CAMI_EVENT_LOG": "kafka://b1:9092"}
        before = Settings.from_env({"CAMI_HOME": "/srv/cami", **extra})
        after = Settings.from_env({"CAMI_HOME": "/srv/cami", **extra, name: value})
        assert after != before or (name == "CAMI_TLS_CERT" and after != base), f"{name} changes nothing"


def test_the_values_reach_their_fields() -> None:
    settings = Settings.from_env(
        {
            "CAMI_HOME": "/srv/cami",
            "CAMI_DICOM_REQUEST_TIMEOUT": "9.5",
            "CAMI_MAX_INFLATED_BYTES": "1000",
            "CAMI_HTTP_MAX_BODY": "2000",
            "CAMI_IMPORT_MAX_RATIO": "7.5",
            "CAMI_S3_ACCESS_KEY": "access",
        }
    )
    assert settings.dicom_request_timeout == 9.5
    assert settings.max_inflated_bytes == 1000 and settings.http_max_body == 2000
    assert settings.import_limits == ImportLimits(max_ratio=7.5)
    assert settings.blob_store_env == {"CAMI_S3_ACCESS_KEY": "access"}
    assert settings.users_file == Path("/srv/cami/users.toml")
    assert settings.organisations_file == Path("/srv/cami/organisations.toml")
    elsewhere = Settings.from_env({"CAMI_HOME": "/srv/cami", "CAMI_ORGANISATIONS": "/etc/cami/orgs.toml"})
    assert elsewhere.organisations_file == Path("/etc/cami/orgs.toml")
    assert "access" not in repr(settings)  # credentials stay out of logs


def test_hl7_settings_refuse_what_they_cannot_use() -> None:
    assert Settings.from_env({"CAMI_HL7_PORT": "off"}).hl7_port is None
    assert Settings.from_env({"CAMI_HL7_CHARSET": "windows-1251"}).hl7_charset == "cp1251"
    with pytest.raises(ConfigError, match="CAMI_HL7_CHARSET"):
        Settings.from_env({"CAMI_HL7_CHARSET": "EBCDIC"})
    with pytest.raises(ConfigError, match="CAMI_TIMEZONE"):
        Settings.from_env({"CAMI_TIMEZONE": "Mars/Olympus"})
