"""The address grammar (schemas/addresses.py): ports, hosts, host:port and URLs, checked by form
only (no DNS); and every reader of an address -- the settings, the agent's file, senders.toml,
the ``cami`` options -- refuses by it, naming the setting and the value."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from api.cli.output import archive_url, port_number
from api.config import ConfigError, Settings
from ingest.agent.config import AgentConfigError, load_config
from ingest.senders import SenderConfigError, parse_senders
from schemas.addresses import (
    AddressError,
    check_host,
    parse_host_port,
    parse_port,
    parse_port_or_off,
    url_address,
)


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("104", 104), ("8042", 8042), ("65535", 65535), (" 2575 ", 2575)])
def test_a_port_is_an_integer_from_1_to_65535(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize(
    "text",
    ["68042", "65536", "0", "-1", "+80", "", " ", "80 80", "8o42", "1_000", "0x50", "\u0668\u0660", "9" * 20],
)
def test_anything_else_is_not_a_port_and_the_message_says_what_is(text: str) -> None:
    with pytest.raises(AddressError) as refused:
        parse_port(text)
    assert repr(text) in str(refused.value) and "1-65535" in str(refused.value)


def test_zero_is_a_free_port_only_where_a_listener_may_pick_one() -> None:
    assert parse_port("0", free=True) == 0
    with pytest.raises(AddressError, match="0 for a free one"):
        parse_port("68042", free=True)
    assert parse_port(104) == 104  # a TOML integer
    for not_a_number in (True, 1.5, None):
        with pytest.raises(AddressError):
            parse_port(not_a_number)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["off", "OFF", "none", ""])
def test_off_closes_an_optional_listener(text: str) -> None:
    assert parse_port_or_off(text) is None


def test_a_bad_optional_port_says_off_is_allowed_too() -> None:
    with pytest.raises(AddressError, match=r"'70000' is not a port: an integer 1-65535, 0 for a free one, or off"):
        parse_port_or_off("70000", free=True)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "0.0.0.0",
        "::",
        "::1",
        "fe80::1",
        "2001:db8::17",
        "localhost",
        "cami",
        "cami.region.example",
        "cami.region.example.",
        "pacs-1.okb.local",
        "1host.example",
        "a" * 63 + ".example",
    ],
)
def test_a_host_is_an_ip_address_or_an_rfc_1123_name(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize(
    "host",
    [
        "999.1.1.1",  # not an IPv4 address, and a name never looks like one
        "1.2.3",
        "8042",
        "host name with spaces",
        "",
        " ",
        "-cami.example",
        "cami-.example",
        "cami..example",
        "cami_pacs.example",
        "[::1]",  # brackets belong to host:port and URLs, not to a bind address
        "::1:2:3:4:5:6:7:8",
        "http://cami.example",
        "cami.example:8042",
        "ками.пример",
        "a" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "example",  # over 253 characters
        "cami\nexample",
    ],
)
def test_anything_else_is_not_a_host(host: str) -> None:
    with pytest.raises(AddressError, match="is not a host: an IPv4 or IPv6 address or a host name"):
        check_host(host)


def test_host_port_takes_ipv6_in_brackets() -> None:
    assert parse_host_port("b1:9092") == ("b1", 9092)
    assert parse_host_port("10.0.0.5:9092") == ("10.0.0.5", 9092)
    assert parse_host_port("[::1]:9092") == ("::1", 9092)
    assert parse_host_port("b1", port_required=False) == ("b1", None)
    assert parse_host_port("[2001:db8::1]", port_required=False) == ("2001:db8::1", None)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("b1:99999", "'99999' is not a port"),
        ("b1:", "'' is not a port"),
        ("b1", "has no port"),
        ("::1:9092", "an IPv6 address goes in brackets"),
        ("[::1:9092", "an IPv6 address goes in brackets"),
        ("[999.1.1.1]:9092", "an IPv6 address goes in brackets"),
        ("[::1]x9092", "an IPv6 address goes in brackets"),
        ("999.1.1.1:9092", "'999.1.1.1' is not a host"),
    ],
)
def test_a_bad_host_port_names_the_part_that_is_wrong(text: str, says: str) -> None:
    with pytest.raises(AddressError) as refused:
        parse_host_port(text)
    assert repr(text) in str(refused.value) and says in str(refused.value)


def test_the_address_of_a_url() -> None:
    assert url_address("https://cami.region.example") == ("cami.region.example", None)
    assert url_address("http://127.0.0.1:8042/api") == ("127.0.0.1", 8042)
    assert url_address("clickhouse://user:pass@[::1]:8123/cami") == ("::1", 8123)
    assert url_address("https://cami.example", schemes=("http", "https")) == ("cami.example", None)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://cami.example:68042", "'68042' is not a port"),
        ("http://cami.example:-1/", "'-1' is not a port"),
        ("http://999.1.1.1:8042", "'999.1.1.1' is not a host"),
        ("http://[::1", "is not a URL"),
        ("http:///path", "names no host"),
        ("ftp://cami.example", "the scheme must be http:// or https://"),
    ],
)
def test_a_bad_url_is_refused_for_its_address(url: str, says: str) -> None:
    with pytest.raises(AddressError, match=says):
        url_address(url, schemes=("http", "https"))


def test_a_refused_url_keeps_its_credentials_to_itself() -> None:
    with pytest.raises(AddressError) as refused:
        url_address("clickhouse://reader:s3cret@h:70000/cami")
    assert "s3cret" not in str(refused.value) and "reader" not in str(refused.value)
    assert "'70000' is not a port" in str(refused.value)


# -- the settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "bad"),
    [
        ("CAMI_HTTP_PORT", "68042", "'68042' is not a port"),
        ("CAMI_HTTP_PORT", "-1", "'-1' is not a port"),
        ("CAMI_HTTP_PORT", "off", "'off' is not a port"),  # the HTTP API cannot be closed
        ("CAMI_DICOM_PORT", "65536", "'65536' is not a port"),
        ("CAMI_DICOM_PORT", "eleven", "'eleven' is not a port"),
        ("CAMI_HL7_PORT", "2575.0", "'2575.0' is not a port"),
        ("CAMI_HTTP_HOST", "999.1.1.1", "'999.1.1.1' is not a host"),
        ("CAMI_DICOM_HOST", "host name with spaces", "'host name with spaces' is not a host"),
        ("CAMI_HL7_HOST", "", "'' is not a host"),
        ("CAMI_EVENT_LOG", "kafka://b1:9092,b2:99999", "'b2:99999': '99999' is not a port"),
        ("CAMI_EVENT_LOG", "kafka://b1:9092,", "'' is not a host"),
        ("CAMI_BLOBS", "s3://bucket?endpoint=http://999.1.1.1:9000", "'999.1.1.1' is not a host"),
        ("CAMI_CLICKHOUSE", "clickhouse://user:secret@h:70000/cami", "'70000' is not a port"),
    ],
)
def test_the_settings_refuse_a_bad_port_or_address_naming_the_variable(variable: str, value: str, bad: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable}: ") and bad in message and "\n" not in message
    assert "secret" not in message


def test_the_dicom_tls_port_is_checked_when_tls_is_on(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("only its existence is checked here\n")
    with pytest.raises(ConfigError, match=r"CAMI_DICOM_TLS_PORT: '68042' is not a port"):
        Settings.from_env({"CAMI_TLS_CERT": str(cert), "CAMI_DICOM_TLS_PORT": "68042"})


def test_the_settings_keep_what_was_allowed_before() -> None:
    settings = Settings.from_env(
        {
            "CAMI_DICOM_HOST": "::",
            "CAMI_DICOM_PORT": "0",  # a free port: the tests' way
            "CAMI_HTTP_HOST": "cami.region.example",
            "CAMI_HTTP_PORT": "0",
            "CAMI_HL7_HOST": "0.0.0.0",
            "CAMI_HL7_PORT": "off",
            "CAMI_EVENT_LOG": "kafka://b1:9092,[::1]:9093,b3?replication=3",
            "CAMI_BLOBS": "s3://bucket/prefix?endpoint=https://s3.region.local&region=us-east-1",
            "CAMI_CLICKHOUSE": "clickhouses://user:pass@ch.region.local/cami",
        }
    )
    assert (settings.dicom_host, settings.dicom_port, settings.http_port, settings.hl7_port) == ("::", 0, 0, None)
    assert Settings.from_env({"CAMI_DICOM_PORT": "off"}).dicom_port is None
    assert Settings.from_env({}).http_port == 8042 and Settings.from_env({}).hl7_host == "127.0.0.1"


# -- the agent's file and senders.toml ---------------------------------------------------------------------

AGENT = """
[agent]
organisation = "ORG1"
agent_id = "agent-1"
data_dir = "data"

[cami]
base_url = "{base_url}"
token = "secret"
host = "{host}"
port = 11112
"""


@pytest.mark.parametrize(
    ("base_url", "host", "says"),
    [
        ("https://cami.example:68042", "cami.example", r"\[cami\] base_url: .*'68042' is not a port"),
        ("https://cami.example", "999.1.1.1", r"\[cami\] host: '999.1.1.1' is not a host"),
        ("https://cami.example", "cami example", r"\[cami\] host: 'cami example' is not a host"),
    ],
)
def test_the_agents_file_refuses_a_bad_archive_address(tmp_path: Path, base_url: str, host: str, says: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT.format(base_url=base_url, host=host), encoding="utf-8")
    with pytest.raises(AgentConfigError, match=says):
        load_config(path)


def test_the_agents_own_listeners_and_polled_pacs_are_checked_too(tmp_path: Path) -> None:
    base = AGENT.format(base_url="https://cami.example", host="cami.example")
    for extra, says in [
        ('[router]\nhost = "0.0.0.0.0"\n', r"\[router\] host"),
        ('[mis]\nhost = "mis host"\ntoken = "t"\n', r"\[mis\] host"),
        ('[[poll]]\nae_title = "PACS"\nhost = "pacs_1"\nport = 104\n', r"\[\[poll\]\] #1 host"),
    ]:
        path = tmp_path / "agent.toml"
        path.write_text(base + extra, encoding="utf-8")
        with pytest.raises(AgentConfigError, match=says):
            load_config(path)


def test_senders_toml_refuses_a_destination_that_is_no_address() -> None:
    with pytest.raises(SenderConfigError, match=r"destination PACS: '999.1.1.1' is not a host"):
        parse_senders({"destination": [{"ae_title": "PACS", "host": "999.1.1.1", "port": 104}]})
    with pytest.raises(SenderConfigError, match=r"sender CT1: 'ct 1' is not a host"):
        parse_senders({"sender": [{"ae_title": "CT1", "organisation": "O", "host": "ct 1", "port": 104}]})
    with pytest.raises(SenderConfigError, match=r"sender CT1: port must be 1-65535"):
        parse_senders({"sender": [{"ae_title": "CT1", "organisation": "O", "host": "ct1", "port": 70000}]})
    senders = parse_senders({"destination": [{"ae_title": "PACS", "host": " pacs.okb.local ", "port": 104}]})
    assert senders.destination("PACS") is not None


# -- the cami options --------------------------------------------------------------------------------------


def test_the_port_options_use_the_same_rule() -> None:
    listener = port_number(free=True)
    assert listener("0") == 0 and listener("11112") == 11112
    for bad in ("68042", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"'{bad}' is not a port: an integer 1-65535"):
            listener(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        port_number()("0")


def test_the_url_options_check_the_archives_address() -> None:
    assert archive_url("https://cami.region.example:8042") == "https://cami.region.example:8042"
    with pytest.raises(argparse.ArgumentTypeError, match="'68042' is not a port"):
        archive_url("http://127.0.0.1:68042")
    with pytest.raises(argparse.ArgumentTypeError, match="the scheme must be"):
        archive_url("cami.region.example:8042")
