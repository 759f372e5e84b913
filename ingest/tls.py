"""TLS for every port the archive listens on: one set of settings, one way to build the contexts.

The DICOM TLS port (``ingest.scp``), HTTPS (``api.http``), and the agent and HL7 ports to come
all take their :class:`ssl.SSLContext` from :func:`server_context`, built from the same
:class:`TlsSettings` (``CAMI_TLS_*``, see ``api.config``): the archive's certificate chain and
key, and optionally a CA bundle that client certificates must chain to.

Client certificates (``client_certificates``):

- ``none``: the archive does not ask for one;
- ``optional``: asked for; a peer that shows one must show one signed by the CA (else the
  handshake fails), a peer that shows none is let in (per-sender rules may still demand one, see
  ``ingest.senders``);
- ``required``: no handshake without a certificate signed by the CA.

Lives in ingest because ingest needs it and may not import the api.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

CLIENT_CERTIFICATE_MODES = ("none", "optional", "required")
_VERIFY_MODE = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TlsConfigError(ValueError):
    """The TLS settings are incomplete or name files that cannot be used."""


@dataclass(frozen=True)
class TlsSettings:
    certificate: Path | None = None  # PEM: the archive's certificate, then any intermediates
    key: Path | None = None  # PEM: its private key (unencrypted; protect it by file permissions)
    ca: Path | None = None  # PEM: CA certificates client certificates must chain to
    client_certificates: str = "none"  # none | optional | required

    @property
    def enabled(self) -> bool:
        return self.certificate is not None

    def check(self) -> None:
        """Refuse settings that cannot work, with a message naming the variable to fix."""
        if self.client_certificates not in CLIENT_CERTIFICATE_MODES:
            raise TlsConfigError(
                f"CAMI_TLS_CLIENT_CERT must be one of {', '.join(CLIENT_CERTIFICATE_MODES)},"
                f" got {self.client_certificates!r}"
            )
        if self.certificate is None:
            if self.key is not None or self.ca is not None or self.client_certificates != "none":
                raise TlsConfigError("CAMI_TLS_KEY, CAMI_TLS_CA and CAMI_TLS_CLIENT_CERT need CAMI_TLS_CERT")
            return
        if self.client_certificates != "none" and self.ca is None:
            raise TlsConfigError("CAMI_TLS_CLIENT_CERT=optional|required needs CAMI_TLS_CA (who signs them)")
        files = (("CAMI_TLS_CERT", self.certificate), ("CAMI_TLS_KEY", self.key), ("CAMI_TLS_CA", self.ca))
        for variable, path in files:
            if path is not None and not path.is_file():
                raise TlsConfigError(f"{variable}: no such file {path}")


def server_context(settings: TlsSettings, *, client_certificates: bool = True) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, the archive's certificate, and (with
    ``client_certificates`` and a mode other than ``none``) verification of peers' certificates
    against the configured CA. HTTP passes ``client_certificates=False``: people sign in there."""
    settings.check()
    if settings.certificate is None:
        raise TlsConfigError("TLS is not configured (CAMI_TLS_CERT)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.certificate, settings.key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"CAMI_TLS_CERT/CAMI_TLS_KEY cannot be used: {exc}") from None
    if client_certificates and settings.client_certificates != "none":
        try:
            context.load_verify_locations(cafile=settings.ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"CAMI_TLS_CA cannot be used: {exc}") from None
        context.verify_mode = _VERIFY_MODE[settings.client_certificates]
    return context


@dataclass(frozen=True)
class PeerCertificate:
    """What a TLS peer proved: its certificate's subject common name and SHA-256 fingerprint
    (lower-case hex of the DER bytes). Only certificates the CA verified are reported."""

    common_name: str
    sha256: str


@dataclass(frozen=True)
class PeerTransport:
    """How a peer is connected: over TLS or not, and the certificate it showed, if any."""

    tls: bool
    certificate: PeerCertificate | None = None


def peer_transport(sock: Any) -> PeerTransport:
    """The transport of an accepted connection's socket (plain or :class:`ssl.SSLSocket`)."""
    if not isinstance(sock, ssl.SSLSocket):
        return PeerTransport(tls=False)
    # getpeercert() is empty unless the certificate was verified against the CA
    verified = sock.getpeercert()
    der = sock.getpeercert(binary_form=True)
    if not verified or not der:
        return PeerTransport(tls=True)
    common_name = ""
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], verified.get("subject", ()))
    for rdn in subject:
        for name, value in rdn:
            if name == "commonName":
                common_name = str(value)
    return PeerTransport(tls=True, certificate=PeerCertificate(common_name, hashlib.sha256(der).hexdigest()))
