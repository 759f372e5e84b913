"""Who may send: calling AE titles (and optionally addresses) mapped to regional organisations.

A TOML file (``$CAMI_SENDERS``, default ``$CAMI_HOME/senders.toml``)::

    [archive]
    ae_title = "CAMI"
    accept_unknown = false          # true for pilots: accept and flag unknown callers
    emergency_ae_title = "CAMI_URGENT"  # objects sent to this called AE title are emergencies

    [[sender]]
    ae_title = "OKB_CT1"
    organisation = "1.2.643.5.1.13.13.12.2.50.1001"
    name = "Regional clinical hospital, CT 1"
    addresses = ["10.1.2.3"]        # optional: only from these addresses
    host = "10.1.2.3"               # optional: where storage commitment reports / C-MOVE go
    port = 104
    pathology = false               # optional: everything from this sender is marked pathology
    tls_required = true             # optional: only over TLS with a client certificate the CA signed
    certificate_cn = "okb-ct1.example.org"  # optional: ... whose subject CN is this (implies tls_required)
    certificate_sha256 = "9f86d0..."  # optional: ... whose SHA-256 fingerprint is this (implies tls_required)

The TLS options hold for ``[[qr_caller]]`` entries too; an AE title listed in both tables must
satisfy both entries' rules. They need the DICOM TLS port and ``CAMI_TLS_CA`` (``api.config``).

Query/Retrieve (C-FIND, C-MOVE, C-GET on the same AE title and port) is open only to the AE
titles listed as ``[[qr_caller]]``; the role decides what the caller may do, exactly as for a
user of the web API (see :mod:`api.access`): radiologist and referring-doctor workstations and
viewers query and retrieve, an auditor's station queries only. A ``[[sender]]`` is *not* a Q/R
caller unless it is listed here too (the same AE title may be in both tables); a Q/R caller
that is not also a sender may not store. Each role's ``addresses`` hold on their own: an AE title
in both tables stores only from the sender's addresses and queries only from the caller's (an
entry without addresses allows any)::

    [[qr_caller]]
    ae_title = "RAD_WS1"
    organisation = "1.2.643.5.1.13.13.12.2.50.1001"
    role = "radiologist"            # radiologist | referring-doctor | administrator | auditor
    name = "Reading room 1"         # optional
    addresses = ["10.1.2.40"]       # optional: only from these addresses
    host = "10.1.2.40"              # optional: with port, also a C-MOVE destination
    port = 11112

C-MOVE sends only to AE titles the archive knows: a ``[[destination]]`` entry, else a
``[[qr_caller]]`` or ``[[sender]]`` with ``host`` and ``port``. An unknown destination is
answered 0xA801 (move destination unknown)::

    [[destination]]
    ae_title = "RAD_WS1_STORE"
    host = "10.1.2.40"
    port = 11112

An MIS that wants its orders' status back over HL7 (ORM^O01, ORC-1 ``SC``) is a ``[[mis]]``:
``application`` is how its orders name it (MSH-3@MSH-4 of the messages it sends), ``host`` and
``port`` its MLLP listener::

    [[mis]]
    application = "MIS@1.2.643.5.1.13.13.12.2.50.1001"
    host = "10.1.2.7"
    port = 2576
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.tls import PeerTransport
from schemas.addresses import MAX_PORT, AddressError, check_host
from schemas.policy import ROLES, Action, roles_that


class SenderConfigError(ValueError):
    """The senders file is missing required values or has wrong types."""


#: roles a Q/R caller may have: those that may read patient data (what each may then do, C-FIND
#: only or C-MOVE/C-GET too, is the policy table's answer)
QR_ROLES = tuple(role for role in ROLES if role in roles_that(Action.READ_PATIENT_DATA))


@dataclass(frozen=True)
class TlsRule:
    """What a peer must prove over TLS before its association is accepted (empty: nothing)."""

    required: bool = False
    certificate_cn: str | None = None
    certificate_sha256: str | None = None

    @property
    def demands_certificate(self) -> bool:
        return self.required or self.certificate_cn is not None or self.certificate_sha256 is not None

    def refusal(self, transport: PeerTransport) -> str | None:
        """Why ``transport`` does not satisfy the rule (a rejection reason), or None."""
        if not self.demands_certificate:
            return None
        if not transport.tls:
            return "tls-required"
        certificate = transport.certificate
        if certificate is None:
            return "client-certificate-required"
        if self.certificate_cn is not None and certificate.common_name != self.certificate_cn:
            return "client-certificate-mismatch"
        if self.certificate_sha256 is not None and certificate.sha256 != self.certificate_sha256:
            return "client-certificate-mismatch"
        return None


@dataclass(frozen=True)
class Sender:
    ae_title: str
    organisation: str
    name: str = ""
    addresses: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    pathology: bool = False
    tls: TlsRule = TlsRule()


@dataclass(frozen=True)
class QrCaller:
    """An AE title allowed to query and retrieve (a workstation, a viewer, a PACS)."""

    ae_title: str
    organisation: str
    role: str
    name: str = ""
    addresses: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    tls: TlsRule = TlsRule()


@dataclass(frozen=True)
class Destination:
    """Where C-MOVE may send: an AE title and its address."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class MisEndpoint:
    """Where an MIS takes its orders' status updates (HL7 over MLLP)."""

    application: str
    host: str
    port: int


@dataclass(frozen=True)
class Senders:
    ae_title: str = "CAMI"
    accept_unknown: bool = False
    emergency_ae_title: str | None = "CAMI_URGENT"
    senders: dict[str, Sender] = field(default_factory=dict)
    qr_callers: dict[str, QrCaller] = field(default_factory=dict)
    destinations: dict[str, Destination] = field(default_factory=dict)
    #: MIS that take their orders' status over HL7, by application (MSH-3@MSH-4)
    mis: dict[str, MisEndpoint] = field(default_factory=dict)

    def lookup(self, ae_title: str) -> Sender | None:
        return self.senders.get(ae_title.strip())

    def qr_caller(self, ae_title: str) -> QrCaller | None:
        return self.qr_callers.get(ae_title.strip())

    @property
    def known_ae_titles(self) -> list[str]:
        """Every calling AE title an association is accepted from (senders and Q/R callers)."""
        return sorted(set(self.senders) | set(self.qr_callers))

    def destination(self, ae_title: str) -> Destination | None:
        """Where a C-MOVE to ``ae_title`` goes: a [[destination]], else a Q/R caller's or a
        sender's host and port; None when the archive does not know the AE title."""
        ae_title = ae_title.strip()
        if ae_title in self.destinations:
            return self.destinations[ae_title]
        for entry in (self.qr_callers.get(ae_title), self.senders.get(ae_title)):
            if entry is not None and entry.host and entry.port:
                return Destination(ae_title, entry.host, entry.port)
        return None

    def may_store(self, ae_title: str, address: str | None) -> tuple[bool, str]:
        """(allowed, reason) for storing: a sender from one of its addresses (any, if it lists
        none). A Q/R caller's addresses never widen a sender's: each role's rule holds on its own.
        A Q/R caller that is not also a sender does not store (pilot mode aside)."""
        sender = self.lookup(ae_title)
        if sender is None:
            return (True, "unknown-caller-accepted") if self.accept_unknown else (False, "not-a-sender")
        if sender.addresses and address not in sender.addresses:
            return False, "address-not-allowed"
        return True, "known"

    def may_query(self, ae_title: str, address: str | None) -> QrCaller | None:
        """The Q/R caller behind ``ae_title`` when it calls from one of its addresses (any, if it
        lists none); None otherwise. A sender's addresses never widen a caller's."""
        caller = self.qr_caller(ae_title)
        if caller is None or (caller.addresses and address not in caller.addresses):
            return None
        return caller

    def allowed(self, ae_title: str, address: str | None) -> tuple[bool, str]:
        """(allowed, reason) for the association: some role of the caller is allowed from this
        address. Unknown callers pass only in pilot mode (and are flagged). Each service then
        checks its own role (:meth:`may_store`, :meth:`may_query`)."""
        sender = self.lookup(ae_title)
        caller = self.qr_caller(ae_title)
        if sender is None and caller is None:
            return (True, "unknown-caller-accepted") if self.accept_unknown else (False, "unknown-caller")
        if (sender is not None and self.may_store(ae_title, address)[0]) or self.may_query(ae_title, address):
            return True, "known"
        return False, "address-not-allowed"

    @property
    def demanding_certificates(self) -> list[str]:
        """AE titles whose entries demand a client certificate (they need CAMI_TLS_CA)."""
        rules = [(s.ae_title, s.tls) for s in self.senders.values()] + [
            (c.ae_title, c.tls) for c in self.qr_callers.values()
        ]
        return sorted({ae_title for ae_title, rule in rules if rule.demands_certificate})

    def transport_allowed(self, ae_title: str, transport: PeerTransport) -> tuple[bool, str]:
        """(allowed, reason): every entry of ``ae_title`` (sender, Q/R caller) has its TLS rule met."""
        for entry in (self.lookup(ae_title), self.qr_caller(ae_title)):
            reason = entry.tls.refusal(transport) if entry is not None else None
            if reason is not None:
                return False, reason
        return True, "known"


def _sender(raw: dict[str, Any], index: int) -> Sender:
    try:
        ae_title = str(raw["ae_title"]).strip()
        organisation = str(raw["organisation"]).strip()
    except KeyError as exc:
        raise SenderConfigError(f"sender #{index + 1}: missing {exc.args[0]!r}") from None
    if not ae_title or len(ae_title) > 16:
        raise SenderConfigError(f"sender #{index + 1}: AE title must be 1-16 characters, got {ae_title!r}")
    host, port = _address(raw, f"sender {ae_title}", required=False)
    return Sender(
        ae_title,
        organisation,
        str(raw.get("name", "")),
        tuple(raw.get("addresses", ())),
        host,
        port,
        bool(raw.get("pathology", False)),
        _tls_rule(raw, f"sender {ae_title}"),
    )


def _tls_rule(raw: dict[str, Any], what: str) -> TlsRule:
    required = raw.get("tls_required", False)
    if not isinstance(required, bool):
        raise SenderConfigError(f"{what}: tls_required must be true or false")
    values: list[str | None] = []
    for option in ("certificate_cn", "certificate_sha256"):
        value = raw.get(option)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise SenderConfigError(f"{what}: {option} must be a non-empty string")
        values.append(value.strip() if isinstance(value, str) else None)
    common_name, fingerprint = values
    if fingerprint is not None:
        # accept the usual spellings (openssl's AB:CD:..., upper or lower case)
        fingerprint = fingerprint.replace(":", "").lower()
        if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
            raise SenderConfigError(f"{what}: certificate_sha256 must be 64 hex digits")
    return TlsRule(required, common_name, fingerprint)


def _ae_title(raw: dict[str, Any], what: str) -> str:
    try:
        ae_title = str(raw["ae_title"]).strip()
    except KeyError:
        raise SenderConfigError(f"{what}: missing 'ae_title'") from None
    if not ae_title or len(ae_title) > 16 or "\\" in ae_title or not ae_title.isprintable():
        raise SenderConfigError(f"{what}: AE title must be 1-16 printable characters, got {ae_title!r}")
    return ae_title


def _address(raw: dict[str, Any], what: str, *, required: bool) -> tuple[str | None, int | None]:
    host, port = raw.get("host"), raw.get("port")
    if required and (host is None or port is None):
        raise SenderConfigError(f"{what}: needs both 'host' and 'port'")
    if host is not None:
        try:
            host = check_host(host)
        except AddressError as exc:
            raise SenderConfigError(f"{what}: {exc}") from None
    if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 0 < port <= MAX_PORT):
        raise SenderConfigError(f"{what}: port must be 1-{MAX_PORT}")
    return host, port


def _qr_caller(raw: dict[str, Any], index: int) -> QrCaller:
    ae_title = _ae_title(raw, f"qr_caller #{index + 1}")
    what = f"qr_caller {ae_title}"
    organisation = str(raw.get("organisation", "")).strip()
    if not organisation:
        raise SenderConfigError(f"{what}: missing 'organisation'")
    role = raw.get("role")
    if role not in QR_ROLES:
        raise SenderConfigError(f"{what}: role must be one of {', '.join(QR_ROLES)}, got {role!r}")
    addresses = raw.get("addresses", [])
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise SenderConfigError(f"{what}: addresses must be a list of strings")
    host, port = _address(raw, what, required=False)
    return QrCaller(
        ae_title, organisation, str(role), str(raw.get("name", "")), tuple(addresses), host, port, _tls_rule(raw, what)
    )


def _destination(raw: dict[str, Any], index: int) -> Destination:
    ae_title = _ae_title(raw, f"destination #{index + 1}")
    host, port = _address(raw, f"destination {ae_title}", required=True)
    assert host is not None and port is not None  # required=True checked both
    return Destination(ae_title, host, port)


def _mis(raw: dict[str, Any], index: int) -> MisEndpoint:
    application = str(raw.get("application", "")).strip()
    if not application or "@" not in application:
        raise SenderConfigError(f"mis #{index + 1}: 'application' must be MSH-3@MSH-4, e.g. \"MIS@ORG01\"")
    host, port = _address(raw, f"mis {application}", required=True)
    assert host is not None and port is not None  # required=True checked both
    return MisEndpoint(application, host, port)


def _table(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    entries = data.get(name, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SenderConfigError(f"[[{name}]] must be an array of tables")
    return entries


def parse_senders(data: dict[str, Any]) -> Senders:
    archive = data.get("archive", {})
    senders: dict[str, Sender] = {}
    for index, raw in enumerate(_table(data, "sender")):
        sender = _sender(raw, index)
        if sender.ae_title in senders:
            raise SenderConfigError(f"AE title {sender.ae_title} is listed twice")
        senders[sender.ae_title] = sender
    qr_callers: dict[str, QrCaller] = {}
    for index, raw in enumerate(_table(data, "qr_caller")):
        caller = _qr_caller(raw, index)
        if caller.ae_title in qr_callers:
            raise SenderConfigError(f"Q/R caller AE title {caller.ae_title} is listed twice")
        qr_callers[caller.ae_title] = caller
    destinations: dict[str, Destination] = {}
    for index, raw in enumerate(_table(data, "destination")):
        destination = _destination(raw, index)
        if destination.ae_title in destinations:
            raise SenderConfigError(f"destination AE title {destination.ae_title} is listed twice")
        destinations[destination.ae_title] = destination
    mis: dict[str, MisEndpoint] = {}
    for index, raw in enumerate(_table(data, "mis")):
        endpoint = _mis(raw, index)
        if endpoint.application in mis:
            raise SenderConfigError(f"mis {endpoint.application} is listed twice")
        mis[endpoint.application] = endpoint
    return Senders(
        ae_title=str(archive.get("ae_title", "CAMI")),
        accept_unknown=bool(archive.get("accept_unknown", False)),
        emergency_ae_title=archive.get("emergency_ae_title", "CAMI_URGENT"),
        senders=senders,
        qr_callers=qr_callers,
        destinations=destinations,
        mis=mis,
    )


def load_senders(path: Path) -> Senders:
    """Read the senders file; a missing file means no known senders (everyone is refused)."""
    if not path.exists():
        return Senders()
    try:
        with path.open("rb") as fh:
            return parse_senders(tomllib.load(fh))
    except tomllib.TOMLDecodeError as exc:
        raise SenderConfigError(f"{path}: {exc}") from None
