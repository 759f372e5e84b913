"""TLS on the archive's ports, with real peers: dcmtk's echoscu/storescu/findscu with ``+tls`` on
the DICOM TLS port, dicomweb-client and httpx over HTTPS. Certificates come from a throwaway CA
made here (:mod:`tests.support.tls`); a second, "rogue" CA stands for everything the archive or
the peer must not trust.

The archive here requires a client certificate from every peer on its TLS port
(``CAMI_TLS_CLIENT_CERT=required``); ``test_tls_senders`` has one that only asks for one and
leaves it to per-sender rules. (One archive per module: embedded ClickHouse opens one directory
per process at a time.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.support.readside import ORG, ReadSide
from tests.support.tls import (
    TIMEOUT,
    Pki,
    dcmtk,
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
def required(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadSide]:
    """An archive whose TLS port lets in only peers with a certificate its CA signed."""
    caller = f'[[qr_caller]]\nae_title = "RAD_WS1"\norganisation = "{ORG}"\nrole = "radiologist"\n'
    side = ReadSide.start(tmp_path_factory.mktemp("tls-required"), caller, env=pki.ca.env(pki.server, "required"))
    yield side
    side.stop()


# -- client certificates required ------------------------------------------------------------
def test_storescu_with_a_trusted_certificate_stores_over_tls(required: ReadSide, pki: Pki) -> None:
    tls_port = required.scp.tls_port
    assert tls_port is not None and tls_port != required.dicom_port
    study, result = send(required, tls_port, "OKB_CT1", tls(pki.okb, pki.ca))
    assert stored(result), output(result)
    assert required.wait_indexed(study, 1)["instance_count"] == 1


def test_echoscu_on_the_tls_port_needs_tls_and_a_certificate_the_archive_trusts(required: ReadSide, pki: Pki) -> None:
    port = required.scp.tls_port
    assert port is not None
    ok = echo(port, "OKB_CT1", tls(pki.okb, pki.ca))
    assert echoed(ok), output(ok)
    before = rejections(required)

    plain = echo(port, "OKB_CT1", [])  # no TLS at all
    untrusted = echo(port, "OKB_CT1", tls(pki.rogue_okb, pki.ca))  # same CN, signed by another CA
    anonymous = echo(port, "OKB_CT1", tls(None, pki.ca))  # TLS, no certificate
    for refused in (plain, untrusted, anonymous):
        assert not echoed(refused), output(refused)
    assert wait_rejections(required, before, 3) == Counter({"tls-handshake-failed": 3})

    # the plain port is still there, beside the TLS one, and the TLS listener survived the failures
    assert echoed(echo(required.dicom_port, "OKB_CT1", []))
    assert echoed(echo(port, "OKB_CT1", tls(pki.okb, pki.ca)))


def test_a_peer_refuses_an_archive_whose_certificate_its_ca_did_not_sign(required: ReadSide, pki: Pki) -> None:
    port = required.scp.tls_port
    assert port is not None
    assert echoed(echo(port, "OKB_CT1", tls(pki.okb, pki.ca)))
    distrusting = echo(port, "OKB_CT1", tls(pki.okb, pki.rogue_ca))  # the peer trusts only the rogue CA
    assert not echoed(distrusting), output(distrusting)


def test_findscu_queries_over_tls(required: ReadSide, pki: Pki, tmp_path: Path) -> None:
    port = required.scp.tls_port
    assert port is not None
    study, result = send(required, port, "OKB_CT1", tls(pki.okb, pki.ca))
    assert stored(result), output(result)
    required.wait_indexed(study, 1)
    answers = tmp_path / "answers"
    answers.mkdir()
    found = dcmtk(
        "findscu",
        *tls(pki.workstation, pki.ca),
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study}",
        "-k",
        "PatientID",
        "-X",
        "-od",
        answers,
        "-aet",
        "RAD_WS1",
        "-aec",
        "CAMI",
        "127.0.0.1",
        str(port),
    )
    assert found.returncode == 0, output(found)
    matches = [pydicom.dcmread(path) for path in sorted(answers.iterdir())]
    assert [(m.StudyInstanceUID, m.PatientID) for m in matches] == [(study, "TLS-0001")], output(found)


def test_dicomweb_client_over_https_and_plain_http_is_refused(required: ReadSide, pki: Pki) -> None:
    port = required.scp.tls_port
    assert port is not None
    study, result = send(required, port, "OKB_CT1", tls(pki.okb, pki.ca))
    assert stored(result), output(result)
    required.wait_indexed(study, 1)
    assert required.url.startswith("https://")

    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, if set, overrides the session's CA
    session.verify = str(pki.ca.cert)
    session.headers["Authorization"] = f"Bearer {required.tokens['dr.petrov']}"
    client = DICOMwebClient(url=f"{required.url}/dicomweb", session=session)
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert [f["0020000D"]["Value"][0] for f in found] == [study]
    series = client.search_for_series(study)[0]["0020000E"]["Value"][0]
    instances = client.search_for_instances(study, series)
    assert len(instances) == 1
    sop = instances[0]["00080018"]["Value"][0]
    retrieved = client.retrieve_instance(study, series, sop)
    assert (retrieved.StudyInstanceUID, retrieved.SOPInstanceUID) == (study, sop)

    # the same port does not speak plain HTTP, and a client that does not trust the CA gets nowhere
    plain = required.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/dicomweb/studies", headers={"Authorization": session.headers["Authorization"]})
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{required.url}/dicomweb/studies", verify=str(pki.rogue_ca.cert), timeout=TIMEOUT)


def test_the_session_cookie_is_secure_over_https(required: ReadSide) -> None:
    with required.client() as browser:
        answer = browser.post(
            "/signin",
            data={"user": "dr.petrov", "token": required.tokens["dr.petrov"], "next": "/search"},
            headers={"Origin": required.url},
        )
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("cami_session=") and "secure" in cookie.lower().replace(" ", "").split(";")
