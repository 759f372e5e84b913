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
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
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
