"""TLS on the archive's ports, with real peers: dcmtk's echoscu/storescu/findscu with ``+tls`` on
the DICOM TLS port, dicomweb-client and httpx over HTTPS. Certificates come from a throwaway CA
made here (:mod:`tests.support.tls`); a second, "rogue" CA stands for everything the archive or
the peer must not trust.

Two archives: one that requires a client certificate from every peer on its TLS port
(``CAMI_TLS_CLIENT_CERT=required``), one that only asks for one (``optional``) and leaves it to
per-sender rules in senders.toml (``tls_required``, ``certificate_cn``, ``certificate_sha256``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from streams.topics import DICOM
from tests.support import studies
from tests.support.readside import ORG, ROOT_UID, ReadSide
from tests.support.tls import Issued, TestCA

OKB_CN = "okb-ct1.example.org"
TIMEOUT = 120


@dataclass(frozen=True)
class Pki:
    ca: TestCA
    server: Issued  # the archive's certificate, signed by ``ca``
    okb: Issued  # OKB's CT (CN okb-ct1.example.org)
    okb_other_key: Issued  # the same CN, another key: another fingerprint
    gb2: Issued  # another hospital's modality
    workstation: Issued  # a reading room's workstation (Q/R)
    rogue_ca: TestCA
    rogue_okb: Issued  # CN okb-ct1.example.org, signed by the rogue CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA.create(directory / "ca")
    rogue = TestCA.create(directory / "rogue", name="Rogue CA")
    return Pki(
        ca,
        ca.issue("cami-archive", server=True),
        ca.issue(OKB_CN),
        ca.issue(OKB_CN, file_name="okb-other-key"),
        ca.issue("gb2-mr1.example.org"),
        ca.issue("rad-ws1.example.org"),
        rogue,
        rogue.issue(OKB_CN),
    )


@pytest.fixture(scope="module")
def required(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadSide]:
    """An archive whose TLS port lets in only peers with a certificate its CA signed."""
    caller = f'[[qr_caller]]\nae_title = "RAD_WS1"\norganisation = "{ORG}"\nrole = "radiologist"\n'
    side = ReadSide.start(tmp_path_factory.mktemp("tls-required"), caller, env=pki.ca.env(pki.server, "required"))
    yield side
    side.stop()


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


# -- dcmtk as the peer -----------------------------------------------------------------------
def dcmtk(tool: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"/usr/bin/{tool}", "-v", *map(str, args)],
        capture_output=True,
        text=True,
        env=studies.DCMTK_ENV,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
        cwd=cwd,
    )


def tls(client: Issued | None, trusts: TestCA) -> list[str]:
    """dcmtk's TLS options: our certificate and key (None: TLS without one), and the CA we trust
    to have signed the archive's certificate (dcmtk refuses an archive it cannot verify)."""
    mine = ["+tls", str(client.key), str(client.cert)] if client else ["+tla"]
    return [*mine, "+cf", str(trusts.cert)]


def echo(port: int, calling: str, options: list[str]) -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", *options, "-aet", calling, "-aec", "CAMI", "127.0.0.1", str(port))


def send(side: ReadSide, port: int, calling: str, options: list[str]) -> tuple[str, subprocess.CompletedProcess[str]]:
    """storescu one new study's instance; (StudyInstanceUID, storescu's result)."""
    study = generate_uid(prefix=ROOT_UID)
    folder = side.home.parent / "sent" / study
    files = studies.write_study(folder, 1, ["1.2.840.10008.1.2.1"], study_uid=study, patient_id="TLS-0001")
    result = dcmtk("storescu", *options, "-aet", calling, "-aec", "CAMI", "127.0.0.1", str(port), files[0].path)
    return study, result


def stored(result: subprocess.CompletedProcess[str]) -> bool:
    found = studies.outcomes(result.stdout + result.stderr)
    return result.returncode == 0 and bool(found) and all(v == "Success" for v in found.values())


def rejections(side: ReadSide) -> list[str]:
    return [e.payload["reason"] for e in side.events(DICOM) if e.envelope.event_type == "AssociationRejected"]


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


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
    assert ok.returncode == 0, output(ok)
    before = rejections(required).count("tls-handshake-failed")

    plain = echo(port, "OKB_CT1", [])  # no TLS at all
    untrusted = echo(port, "OKB_CT1", tls(pki.rogue_okb, pki.ca))  # same CN, signed by another CA
    anonymous = echo(port, "OKB_CT1", tls(None, pki.ca))  # TLS, no certificate
    for refused in (plain, untrusted, anonymous):
        assert refused.returncode != 0, output(refused)
    assert rejections(required).count("tls-handshake-failed") == before + 3

    # the plain port is still there, beside the TLS one, and the TLS listener survived the failures
    assert echo(required.dicom_port, "OKB_CT1", []).returncode == 0
    assert echo(port, "OKB_CT1", tls(pki.okb, pki.ca)).returncode == 0


def test_a_peer_refuses_an_archive_whose_certificate_its_ca_did_not_sign(required: ReadSide, pki: Pki) -> None:
    port = required.scp.tls_port
    assert port is not None
    assert echo(port, "OKB_CT1", tls(pki.okb, pki.ca)).returncode == 0
    distrusting = echo(port, "OKB_CT1", tls(pki.okb, pki.rogue_ca))  # the peer trusts only the rogue CA
    assert distrusting.returncode != 0, output(distrusting)


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


# -- per-sender rules (client certificates optional) -----------------------------------------
def test_a_sender_whose_entry_names_a_certificate_is_refused_without_it(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    cases = {
        "tls-required": echo(optional.dicom_port, "OKB_TLS", []),
        "client-certificate-required": echo(port, "OKB_TLS", tls(None, pki.ca)),
        "client-certificate-mismatch": echo(port, "OKB_TLS", tls(pki.gb2, pki.ca)),
    }
    for reason, refused in cases.items():
        assert refused.returncode != 0, (reason, output(refused))
        assert rejections(optional)[-1] == reason
    # nothing it sends without its certificate is stored
    _, refused_store = send(optional, optional.dicom_port, "OKB_TLS", [])
    assert not stored(refused_store) and rejections(optional)[-1] == "tls-required"

    study, result = send(optional, port, "OKB_TLS", tls(pki.okb, pki.ca))
    assert stored(result), output(result)
    optional.wait_indexed(study, 1)


def test_a_pinned_certificate_fingerprint(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    assert echo(port, "OKB_PIN", tls(pki.okb, pki.ca)).returncode == 0
    other = echo(port, "OKB_PIN", tls(pki.okb_other_key, pki.ca))  # same CA, same CN, another certificate
    assert other.returncode != 0, output(other)
    assert rejections(optional)[-1] == "client-certificate-mismatch"


def test_a_qr_caller_with_tls_required(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    plain = echo(optional.dicom_port, "RAD_TLS", [])
    assert plain.returncode != 0, output(plain)
    assert rejections(optional)[-1] == "tls-required"
    assert echo(port, "RAD_TLS", tls(pki.workstation, pki.ca)).returncode == 0


def test_without_a_rule_any_tls_peer_the_ca_accepts_may_come(optional: ReadSide, pki: Pki) -> None:
    port = optional.scp.tls_port
    assert port is not None
    # client certificates are optional here: TLS without one, or with a trusted one, both pass
    assert echo(port, "GB2_MR1", tls(None, pki.ca)).returncode == 0
    assert echo(port, "GB2_MR1", tls(pki.gb2, pki.ca)).returncode == 0
    # but a certificate the CA did not sign is refused even where none is required
    untrusted = echo(port, "GB2_MR1", tls(pki.rogue_okb, pki.ca))
    assert untrusted.returncode != 0, output(untrusted)
