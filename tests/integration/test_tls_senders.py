"""Per-sender TLS rules in senders.toml (``tls_required``, ``certificate_cn``,
``certificate_sha256``) on an archive that asks for client certificates but does not require
them (``CAMI_TLS_CLIENT_CERT=optional``); dcmtk's echoscu/storescu as the peers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support.readside import ORG, ReadSide
from tests.support.tls import (
    OKB_CN,
    Pki,
    echo,
    echoed,
    make_pki,
    output,
    rejections,
    send,
    stored,
    tls,
    wait_rejections,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def optional(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadSide]:
    """An archive that asks for client certificates; senders.toml says who must show which."""
    pin = _colons(pki.okb.sha256)
    rules = (
        f'[[sender]]\nae_title = "OKB_TLS"\norganisation = "{ORG}"\ncertificate_cn = "{OKB_CN}"\n\n'
        f'[[sender]]\nae_title = "OKB_PIN"\norganisation = "{ORG}"\ncertificate_sha256 = "{pin}"\n\n'
        f'[[qr_caller]]\nae_title = "RAD_TLS"\norganisation = "{ORG}"\nrole = "radiologist"\ntls_required = true\n'
    )
    side = ReadSide.start(tmp_path_factory.mktemp("tls-optional"), rules, env=pki.ca.env(pki.server, "optional"))
    yield side
    side.stop()


def _colons(fingerprint: str) -> str:
    """As ``openssl x509 -fingerprint -sha256`` prints it (senders.toml accepts either)."""
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


def test_a_sender_whose_entry_names_a_certificate_is_refused_without_it(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    before = rejections(optional)
    cases = {
        "tls-required": echo(optional.dicom_port, "OKB_TLS", []),
        "client-certificate-required": echo(port, "OKB_TLS", tls(None, pki.ca)),
        "client-certificate-mismatch": echo(port, "OKB_TLS", tls(pki.gb2, pki.ca)),
    }
    for reason, refused in cases.items():
        assert not echoed(refused), (reason, output(refused))
    assert wait_rejections(optional, before, 3) == Counter(list(cases))
    # nothing it sends without its certificate is stored
    _, refused_store = send(optional, optional.dicom_port, "OKB_TLS", [])
    assert not stored(refused_store)
    assert wait_rejections(optional, before, 4) == Counter([*cases, "tls-required"])

    study, result = send(optional, port, "OKB_TLS", tls(pki.okb, pki.ca))
    assert stored(result), output(result)
    optional.wait_indexed(study, 1)


def test_a_pinned_certificate_fingerprint(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    assert echoed(echo(port, "OKB_PIN", tls(pki.okb, pki.ca)))
    before = rejections(optional)
    other = echo(port, "OKB_PIN", tls(pki.okb_other_key, pki.ca))  # same CA, same CN, another certificate
    assert not echoed(other), output(other)
    assert wait_rejections(optional, before, 1) == Counter(["client-certificate-mismatch"])


def test_a_qr_caller_with_tls_required(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    before = rejections(optional)
    plain = echo(optional.dicom_port, "RAD_TLS", [])
    assert not echoed(plain), output(plain)
    assert wait_rejections(optional, before, 1) == Counter(["tls-required"])
    assert echoed(echo(port, "RAD_TLS", tls(pki.workstation, pki.ca)))


def test_without_a_rule_any_tls_peer_the_ca_accepts_may_come(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    # client certificates are optional here: TLS without one, or with a trusted one, both pass
    assert echoed(echo(port, "GB2_MR1", tls(None, pki.ca)))
    assert echoed(echo(port, "GB2_MR1", tls(pki.gb2, pki.ca)))
    # but a certificate the CA did not sign is refused even where none is required
    untrusted = echo(port, "GB2_MR1", tls(pki.rogue_okb, pki.ca))
    assert not echoed(untrusted), output(untrusted)
