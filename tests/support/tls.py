"""A throwaway certificate authority for TLS tests (the ``cryptography`` package, nothing on disk
outside the test's directory): a CA, the archive's server certificate for 127.0.0.1/localhost,
and client certificates with a chosen subject CN, all written as PEM files. RSA keys: dcmtk's
default TLS profile (BCP 195) offers only RSA cipher suites.

    ca = TestCA.create(tmp_path / "ca")
    server = ca.issue("cami-archive", server=True)        # Issued(cert, key): PEM paths
    client = ca.issue("okb-ct1.example.org")
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.uid import generate_uid

from streams.topics import DICOM
from tests.support import studies
from tests.support.readside import ROOT_UID, ReadSide


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    @property
    def sha256(self) -> str:
        """SHA-256 of the certificate's DER bytes, lower-case hex (what senders.toml names)."""
        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class TestCA:
    directory: Path
    cert: Path
    key: rsa.RSAPrivateKey

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, directory: Path, name: str = "CAMI test CA") -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        path = directory / "ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, path, key)

    def issue(self, common_name: str, *, server: bool = False, file_name: str | None = None) -> Issued:
        """A certificate signed by this CA: for the archive (``server``: SAN 127.0.0.1 and
        localhost) or for a client (its subject CN is what senders.toml may name); written to
        ``file_name`` (default: the CN) ``.crt`` and ``.key``."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca = x509.load_pem_x509_certificate(self.cert.read_bytes())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        stem = (file_name or common_name).replace("/", "_")
        issued = Issued(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued

    def env(self, server: Issued, client_certificates: str = "optional") -> dict[str, str]:
        """The CAMI_TLS_* settings of an archive serving ``server`` and trusting this CA."""
        return {
            "CAMI_TLS_CERT": str(server.cert),
            "CAMI_TLS_KEY": str(server.key),
            "CAMI_TLS_CA": str(self.cert),
            "CAMI_TLS_CLIENT_CERT": client_certificates,
        }


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


def make_pki(directory: Path) -> Pki:
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


def echoed(result: subprocess.CompletedProcess[str]) -> bool:
    """echoscu got a successful C-ECHO answer (it exits 0 also when the association was aborted)."""
    return result.returncode == 0 and "Received Echo Response (Success)" in result.stdout + result.stderr


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


def wait_rejections(side: ReadSide, before: list[str], count: int, timeout: float = 30.0) -> Counter[str]:
    """The reasons of the rejections since ``before`` was taken, once there are ``count`` more. As
    counts: the events are keyed by calling AE title, so the partitions do not keep their order.
    Waited for: with TLS 1.3 the client may be done with its side of the handshake (and gone)
    before the archive has refused its certificate."""
    deadline = time.monotonic() + timeout
    while True:
        new = Counter(rejections(side)) - Counter(before)
        if new.total() >= count or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
