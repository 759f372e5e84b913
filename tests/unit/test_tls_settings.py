"""TLS settings and per-sender certificate rules: pure functions, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.config import Settings
from ingest.senders import SenderConfigError, TlsRule, parse_senders
from ingest.tls import PeerCertificate, PeerTransport, TlsConfigError, server_context
from tests.support.tls import TestCA

ORG = "1.2.643.5.1.13.13.12.2.50.1001"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


def test_without_a_certificate_there_is_no_tls(tmp_path: Path) -> None:
    settings = Settings.from_env({"CAMI_HOME": str(tmp_path)})
    assert not settings.tls.enabled and settings.dicom_tls_port is None and not settings.http_tls
    assert settings.dicom_port == 11112


def test_with_a_certificate_dicom_gets_a_tls_port_and_http_becomes_https(tmp_path: Path, ca: TestCA) -> None:
    server = ca.issue("cami-archive", server=True)
    env = {"CAMI_HOME": str(tmp_path), "CAMI_TLS_CERT": str(server.cert), "CAMI_TLS_KEY": str(server.key)}
    settings = Settings.from_env(env)
    assert settings.tls.enabled and settings.tls.client_certificates == "none"
    assert (settings.dicom_port, settings.dicom_tls_port, settings.http_tls) == (11112, 2762, True)
    server_context(settings.tls)  # loads

    with_ca = Settings.from_env({**env, "CAMI_TLS_CA": str(ca.cert)})
    assert with_ca.tls.client_certificates == "optional"  # asked for once a CA says who signs them

    tls_only = Settings.from_env(
        {**env, "CAMI_DICOM_PORT": "off", "CAMI_DICOM_TLS_PORT": "2763", "CAMI_HTTP_TLS": "off"}
    )
    assert (tls_only.dicom_port, tls_only.dicom_tls_port, tls_only.http_tls) == (None, 2763, False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"CAMI_TLS_CLIENT_CERT": "required"}, "needs CAMI_TLS_CA"),
        ({"CAMI_TLS_CLIENT_CERT": "sometimes"}, "must be one of"),
        ({"CAMI_TLS_KEY": "/nonexistent/key.pem"}, "no such file"),
    ],
)
def test_half_configured_tls_refuses_to_start(tmp_path: Path, ca: TestCA, extra: dict[str, str], message: str) -> None:
    server = ca.issue("cami-archive", server=True)
    env = {"CAMI_HOME": str(tmp_path), "CAMI_TLS_CERT": str(server.cert), "CAMI_TLS_KEY": str(server.key), **extra}
    with pytest.raises(TlsConfigError, match=message):
        Settings.from_env(env)


def test_tls_options_without_a_certificate_are_refused(tmp_path: Path, ca: TestCA) -> None:
    with pytest.raises(TlsConfigError, match="need CAMI_TLS_CERT"):
        Settings.from_env({"CAMI_HOME": str(tmp_path), "CAMI_TLS_CA": str(ca.cert)})


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path, ca: TestCA) -> None:
    one, other = ca.issue("one", server=True), ca.issue("other", server=True)
    env = {"CAMI_HOME": str(tmp_path), "CAMI_TLS_CERT": str(one.cert), "CAMI_TLS_KEY": str(other.key)}
    with pytest.raises(TlsConfigError, match="cannot be used"):
        server_context(Settings.from_env(env).tls)


def test_sender_tls_options_are_parsed_and_checked() -> None:
    fingerprint = "AB:" * 31 + "AB"
    senders = parse_senders(
        {
            "sender": [
                {"ae_title": "CT1", "organisation": ORG, "certificate_cn": "ct1.example.org"},
                {"ae_title": "CT2", "organisation": ORG, "certificate_sha256": fingerprint},
                {"ae_title": "CT3", "organisation": ORG},
            ],
            "qr_caller": [{"ae_title": "CT3", "organisation": ORG, "role": "radiologist", "tls_required": True}],
        }
    )
    assert senders.senders["CT1"].tls == TlsRule(False, "ct1.example.org", None)
    assert senders.senders["CT2"].tls.certificate_sha256 == "ab" * 32
    assert not senders.senders["CT3"].tls.demands_certificate and senders.qr_callers["CT3"].tls.required
    for bad in ({"tls_required": "yes"}, {"certificate_cn": ""}, {"certificate_sha256": "abc"}):
        with pytest.raises(SenderConfigError):
            parse_senders({"sender": [{"ae_title": "CT1", "organisation": ORG, **bad}]})


def test_each_role_of_an_ae_title_has_its_tls_rule_met() -> None:
    senders = parse_senders(
        {
            "sender": [{"ae_title": "CT1", "organisation": ORG}],
            "qr_caller": [{"ae_title": "CT1", "organisation": ORG, "role": "radiologist", "certificate_cn": "ws"}],
        }
    )
    ws = PeerCertificate("ws", "00" * 32)
    assert senders.transport_allowed("CT1", PeerTransport(False)) == (False, "tls-required")
    assert senders.transport_allowed("CT1", PeerTransport(True)) == (False, "client-certificate-required")
    assert senders.transport_allowed("CT1", PeerTransport(True, PeerCertificate("ct", "00" * 32)))[1] == (
        "client-certificate-mismatch"
    )
    assert senders.transport_allowed("CT1", PeerTransport(True, ws)) == (True, "known")
    assert senders.transport_allowed("UNKNOWN", PeerTransport(False)) == (True, "known")  # AE title rules decide


def test_certificate_rules_without_client_certificates_refuse_to_start(tmp_path: Path, ca: TestCA) -> None:
    from api.bootstrap import bootstrap

    server = ca.issue("cami-archive", server=True)
    (tmp_path / "senders.toml").write_text(
        f'[[sender]]\nae_title = "CT1"\norganisation = "{ORG}"\ncertificate_cn = "ct1"\n', encoding="utf-8"
    )
    env = {"CAMI_HOME": str(tmp_path), "CAMI_TLS_CERT": str(server.cert), "CAMI_TLS_KEY": str(server.key)}
    archive = bootstrap(Settings.from_env(env))
    try:
        with pytest.raises(TlsConfigError, match="CT1 must show a client certificate"):
            archive.storage_scp(port=0, tls_port=0)
    finally:
        archive.close()
