"""The signed audit bundle: access entries with their events and chain proofs, checkable offline.

A bundle is one JSON document::

    {"format": "cami-audit-bundle/1", "created_at": ..., "query": {...},
     "public_key": <Ed25519 public key, base64 of its 32 bytes>,
     "entries": [ {n, record, topic, partition, offset, event_sha256, prev_hash, entry_hash,
                   selected, event: <the event's bytes as stored in the log, base64> | null,
                   view: <what the event says, for people> | null}, ... ],
     "signature": <Ed25519 signature, base64, over the canonical JSON of everything else>}

**Chain proofs.** Each entry is a link of its record's chain (see :mod:`projections.audit.fold`):
``entry_hash = SHA-256(prev_hash || event_sha256 || "topic/partition/offset")``. So that a
reader can see that nothing is missing between two entries, every chain the selected entries
belong to is given whole, from its first link (``prev_hash`` = GENESIS) up to its last selected
entry; the links in between that were not selected carry their hashes only (``event`` null).

**Checking** (:func:`verify`, no archive needed): for each entry, in order, the event's bytes hash
to ``event_sha256``; the ``view`` is what those bytes say; ``prev_hash`` is the previous link's
``entry_hash`` (GENESIS for a chain's first); ``entry_hash`` recomputes; then the signature over
the whole document with its public key (and that key is the pinned one, when one is given). The
first entry that does not add up is named.

**The key** is the archive's own Ed25519 key, ``$CAMI_HOME/audit-signing.key`` (PKCS#8 PEM,
created on first use, mode 0600); its public half is in each bundle and printed by
``cami audit public-key`` for auditors to pin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from projections.audit.fold import GENESIS, chain_hash, summarise
from projections.audit.timeline import events_at
from projections.audit.verify import stored_links
from projections.warehouse import Warehouse
from schemas.codec import CodecError, decode
from schemas.events import Event
from streams.log import EventLog

FORMAT = "cami-audit-bundle/1"
KEY_FILE = "audit-signing.key"


# -- the key -------------------------------------------------------------------------------------
def signing_key(home: Path) -> Ed25519PrivateKey:
    """The archive's bundle-signing key from ``home``, created there (mode 0600) on first use."""
    path = home / KEY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return signing_key(home)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return key
    loaded = serialization.load_pem_private_key(raw, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes the signature covers: the document without its signature, keys sorted, compact."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- what an entry shows -------------------------------------------------------------------------
def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def entry_view(event: Event) -> dict[str, Any]:
    """What an event says, for people reading the bundle (derived from its bytes again on checking)."""
    env = event.envelope
    p = event.payload
    view = {
        "event_type": env.event_type,
        "event_id": env.event_id,
        "occurred_at": _iso(env.occurred_at),
        "recorded_at": _iso(env.recorded_at),
        "user": env.actor.user,
        "role": env.actor.role,
        "organisation": env.organisation,
        "source_node": env.source_node,
        "summary": summarise(event),
    }
    for name in ("action", "channel", "outcome", "PatientID", "StudyInstanceUID", "query", "remote_address"):
        if name in p:
            view[name] = _iso(p[name])
    return view


# -- building ------------------------------------------------------------------------------------
def build(
    warehouse: Warehouse,
    event_log: EventLog,
    selected: Sequence[Mapping[str, Any]],
    query: Mapping[str, Any],
    key: Ed25519PrivateKey,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The signed bundle of the audit entries ``selected`` (rows of the audit trail): their events
    from the log and their chains from their first link (see the module doc)."""
    wanted: dict[tuple[str, str], int] = {}
    chosen: set[tuple[str, int, int]] = set()
    for row in selected:
        chain = (str(row["aggregate_id"]), str(row["topic"]))
        wanted[chain] = max(wanted.get(chain, -1), int(row["offset"]))
        chosen.add((str(row["topic"]), int(row["partition"]), int(row["offset"])))
    entries: list[dict[str, Any]] = []
    for record in sorted({c[0] for c in wanted}):
        for link in stored_links(warehouse, record):
            last = wanted.get(link.chain)
            if last is None or link.offset > last:
                continue
            entry: dict[str, Any] = {
                "n": len(entries) + 1,
                "record": link.aggregate_id,
                "topic": link.topic,
                "partition": link.partition,
                "offset": link.offset,
                "event_sha256": link.event_sha256,
                "prev_hash": link.prev_hash,
                "entry_hash": link.entry_hash,
                "selected": link.position in chosen,
                "event": None,
                "view": None,
            }
            entries.append(entry)
    events = events_at(event_log, chosen)
    for entry in entries:
        raw = events.get((entry["topic"], entry["partition"], entry["offset"])) if entry["selected"] else None
        if raw is not None:  # absent from the log: the bundle says so (no bytes), the check names it
            entry["event"] = base64.b64encode(raw).decode()
            try:
                entry["view"] = entry_view(decode(raw))
            except CodecError:
                entry["view"] = None
    document: dict[str, Any] = {
        "format": FORMAT,
        "created_at": (now or datetime.now(UTC)).isoformat(),
        "query": json.loads(json.dumps(dict(query), default=_iso)),
        "public_key": public_key_text(key),
        "entries": entries,
    }
    document["signature"] = base64.b64encode(key.sign(canonical(document))).decode()
    return document


# -- checking ------------------------------------------------------------------------------------
@dataclass
class BundleReport:
    entries: int = 0
    selected: int = 0
    chains: int = 0
    signature_ok: bool = False
    #: problems found, each naming its entry (or the signature / the key)
    problems: list[str] = field(default_factory=list)
    #: the number (``n``) of the first entry that does not add up
    first_bad_entry: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad(self, n: int | None, problem: str) -> None:
        self.problems.append(problem)
        if n is not None and self.first_bad_entry is None:
            self.first_bad_entry = n

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "selected": self.selected,
            "chains": self.chains,
            "signature_ok": self.signature_ok,
            "first_bad_entry": self.first_bad_entry,
            "problems": self.problems,
        }


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify(document: Mapping[str, Any], pinned_key: str | None = None) -> BundleReport:
    """Check a bundle offline (see the module doc); every problem is listed, the first bad entry named."""
    report = BundleReport()
    if document.get("format") != FORMAT:
        report.bad(None, f"not a {FORMAT} document (format {document.get('format')!r})")
        return report
    entries = document.get("entries")
    if not isinstance(entries, list):
        report.bad(None, "no entries list")
        return report
    previous: dict[tuple[str, str], str] = {}
    for index, entry in enumerate(entries, 1):
        report.entries += 1
        if not isinstance(entry, dict):
            report.bad(index, f"entry {index}: not an object")
            continue
        n = entry.get("n", index)
        try:
            chain = (str(entry["record"]), str(entry["topic"]))
            topic, partition, offset = str(entry["topic"]), int(entry["partition"]), int(entry["offset"])
            sha, prev, entry_hash = str(entry["event_sha256"]), str(entry["prev_hash"]), str(entry["entry_hash"])
        except (KeyError, TypeError, ValueError):
            report.bad(n, f"entry {n}: a field is missing or malformed")
            continue
        where = f"entry {n} (record {chain[0]}, {topic}/{partition}@{offset})"
        if n != index:
            report.bad(index, f"entry {index}: numbered {n}")
        if chain not in previous:
            report.chains += 1
        if entry.get("selected"):
            report.selected += 1
            raw = _b64(entry.get("event"))
            if raw is None:
                report.bad(n, f"{where}: the event's bytes are missing or not base64")
            elif hashlib.sha256(raw).hexdigest() != sha:
                report.bad(n, f"{where}: the event's bytes do not hash to its event_sha256")
            else:
                try:
                    derived = entry_view(decode(raw))
                except CodecError:
                    derived = None
                if derived is not None and entry.get("view") != derived:
                    report.bad(n, f"{where}: the view differs from what the event's bytes say")
        expected_prev = previous.get(chain, GENESIS)
        if prev != expected_prev:
            report.bad(n, f"{where}: prev_hash is not the previous link's entry_hash")
        try:
            recomputed = chain_hash(prev, sha, topic, partition, offset)
        except ValueError:
            recomputed = None
        if recomputed != entry_hash:
            report.bad(n, f"{where}: entry_hash does not recompute")
        previous[chain] = entry_hash
    public_text = document.get("public_key")
    public_raw = _b64(public_text)
    if pinned_key is not None and public_text != pinned_key.strip():
        report.bad(None, "the bundle's public key is not the pinned one")
    signature = _b64(document.get("signature"))
    if public_raw is None or len(public_raw) != 32 or signature is None:
        report.bad(None, "the public key or the signature is missing or malformed")
        return report
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, canonical(document))
        report.signature_ok = True
    except InvalidSignature:
        report.bad(None, "the signature does not match the document")
    return report
