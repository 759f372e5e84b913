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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SenderConfigError(ValueError):
    """The senders file is missing required values or has wrong types."""


@dataclass(frozen=True)
class Sender:
    ae_title: str
    organisation: str
    name: str = ""
    addresses: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    pathology: bool = False


@dataclass(frozen=True)
class Senders:
    ae_title: str = "CAMI"
    accept_unknown: bool = False
    emergency_ae_title: str | None = "CAMI_URGENT"
    senders: dict[str, Sender] = field(default_factory=dict)

    def lookup(self, ae_title: str) -> Sender | None:
        return self.senders.get(ae_title.strip())

    def allowed(self, ae_title: str, address: str | None) -> tuple[bool, str]:
        """(allowed, reason). Unknown callers pass only in pilot mode (and are flagged)."""
        sender = self.lookup(ae_title)
        if sender is None:
            return (True, "unknown-caller-accepted") if self.accept_unknown else (False, "unknown-caller")
        if sender.addresses and address not in sender.addresses:
            return False, "address-not-allowed"
        return True, "known"


def _sender(raw: dict[str, Any], index: int) -> Sender:
    try:
        ae_title = str(raw["ae_title"]).strip()
        organisation = str(raw["organisation"]).strip()
    except KeyError as exc:
        raise SenderConfigError(f"sender #{index + 1}: missing {exc.args[0]!r}") from None
    if not ae_title or len(ae_title) > 16:
        raise SenderConfigError(f"sender #{index + 1}: AE title must be 1-16 characters, got {ae_title!r}")
    port = raw.get("port")
    if port is not None and not (isinstance(port, int) and 0 < port < 65536):
        raise SenderConfigError(f"sender {ae_title}: port must be 1-65535")
    return Sender(
        ae_title,
        organisation,
        str(raw.get("name", "")),
        tuple(raw.get("addresses", ())),
        raw.get("host"),
        port,
        bool(raw.get("pathology", False)),
    )


def parse_senders(data: dict[str, Any]) -> Senders:
    archive = data.get("archive", {})
    senders: dict[str, Sender] = {}
    for index, raw in enumerate(data.get("sender", [])):
        sender = _sender(raw, index)
        if sender.ae_title in senders:
            raise SenderConfigError(f"AE title {sender.ae_title} is listed twice")
        senders[sender.ae_title] = sender
    return Senders(
        ae_title=str(archive.get("ae_title", "CAMI")),
        accept_unknown=bool(archive.get("accept_unknown", False)),
        emergency_ae_title=archive.get("emergency_ae_title", "CAMI_URGENT"),
        senders=senders,
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
