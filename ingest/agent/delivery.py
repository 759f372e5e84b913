"""Delivery of one study to CAMI: C-STORE + storage commitment, or STOW-RS + the hash check.

A study is delivered once CAMI has committed every instance. :class:`DicomDelivery` sends the
instances not yet sent with C-STORE (the spooled file's bytes unchanged, in its own transfer syntax;
emergencies to CAMI's emergency AE title), then asks for storage commitment of the whole study
(N-ACTION, PS3.4 Annex J) and waits for CAMI's N-EVENT-REPORT, which arrives at the agent's router
SCP on a new association and reaches this module through the :class:`CommitmentWaiter`.
:class:`StowDelivery` posts the instances in multipart/related batches over HTTPS; the commitment is
then CAMI's answer to the hash check. Either way, when a :class:`CamiClient` is at hand the agent
finally compares SHA-256 end to end (``POST /api/agent/verify``): an instance whose bytes at CAMI
differ is sent once more, then counted as a commitment failure.

Both resume at instance granularity: only instances with ``sent=False`` go out (CAMI dedups a resend
of the same bytes, so an instance whose answer was lost in a cut is harmless to send again), each
success is reported at once through ``on_stored`` so the queue records the resume point, and
``should_yield()`` (an emergency waits) stops the study between two instances. A broken link or an
unreachable CAMI raises :class:`LinkDown`; the caller retries later with backoff.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, build_role
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from ingest.agent.cami_client import CamiClient, CamiRefused, CamiUnreachable
from ingest.agent.commitment import CommitmentReport, CommitmentWaiter
from ingest.agent.config import CamiTarget
from ingest.agent.model import HeldInstance, StudyEntry
from ingest.agent.pacing import LinkBroken, LinkPace, pace_association, paced_chunks
from ingest.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    REFERENCED_SOP_CLASS_NOT_SUPPORTED,
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
)
from ingest.dicom import part10, split_part10

log = logging.getLogger("cami.agent.delivery")

#: presentation contexts per association (128 at most, one kept for storage commitment)
MAX_CONTEXTS = 127
#: C-STORE priorities (PS3.7 9.1.1.1)
PRIORITY_MEDIUM, PRIORITY_HIGH = 0x0000, 0x0001
#: the reason given for an instance whose bytes at CAMI differ from the agent's
MISMATCH = "sha256 mismatch: CAMI holds other bytes for this instance"
FAILURE_REASONS = {
    PROCESSING_FAILURE: "processing failure",
    NO_SUCH_OBJECT_INSTANCE: "no such object instance",
    REFERENCED_SOP_CLASS_NOT_SUPPORTED: "referenced SOP class not supported",
    CLASS_INSTANCE_CONFLICT: "class/instance conflict",
}
STOW_BOUNDARY_PREFIX = "cami-agent-"
READ_CHUNK = 64 << 10
#: enough of a file to hold its Part-10 header
HEADER_READ = 64 << 10


class LinkDown(ConnectionError):
    """The link to CAMI broke or CAMI is unreachable: what was stored is recorded; retry later."""


@dataclass(frozen=True)
class DeliveryResult:
    #: SOP instances CAMI stored in this call
    stored: list[str] = field(default_factory=list)
    #: SOP instance -> why CAMI refused it (this call)
    failed: dict[str, str] = field(default_factory=dict)
    #: SOP instances CAMI committed (of every instance sent, in this call or before)
    committed: list[str] = field(default_factory=list)
    #: SOP instance -> why it is not committed
    commitment_failed: dict[str, str] = field(default_factory=dict)
    #: size of the instances stored in this call
    bytes_sent: int = 0
    #: stopped between two instances because an emergency waits (nothing was committed then)
    yielded: bool = False


class Delivery(Protocol):
    def send(
        self,
        study: StudyEntry,
        instances: Sequence[HeldInstance],
        *,
        emergency: bool,
        on_stored: Callable[[str], None],
        should_yield: Callable[[], bool],
    ) -> DeliveryResult:
        """Send the instances with ``sent=False``, calling ``on_stored(sop)`` after each success; stop
        early when ``should_yield()``; then commit every instance sent. :class:`LinkDown` when the
        connection breaks or CAMI is unreachable."""
        ...


class _Attempts:
    """What both deliveries share: one attempt, and a second for instances whose hash mismatched."""

    def send(
        self,
        study: StudyEntry,
        instances: Sequence[HeldInstance],
        *,
        emergency: bool,
        on_stored: Callable[[str], None],
        should_yield: Callable[[], bool],
    ) -> DeliveryResult:
        first = self._attempt(study, instances, emergency, on_stored, should_yield)
        mismatched = {sop for sop, reason in first.commitment_failed.items() if reason == MISMATCH}
        if first.yielded or not mismatched:
            return first
        log.warning(
            "study %s: %d instance(s) differ at CAMI; sending them once more", study.study_instance_uid, len(mismatched)
        )
        again = [replace(i, sent=False, committed=False) for i in instances if i.sop_instance_uid in mismatched]
        second = self._attempt(study, again, emergency, on_stored, should_yield)
        # what the second attempt settled replaces the mismatch; the rest (it yielded) stays a mismatch
        settled = set(second.committed) | set(second.commitment_failed)
        commitment_failed = {s: r for s, r in first.commitment_failed.items() if s not in settled}
        commitment_failed.update(second.commitment_failed)
        return DeliveryResult(
            stored=first.stored + [s for s in second.stored if s not in first.stored],
            failed={**first.failed, **second.failed},
            committed=first.committed + second.committed,
            commitment_failed=commitment_failed,
            bytes_sent=first.bytes_sent + second.bytes_sent,
            yielded=second.yielded,
        )

    def _attempt(
        self,
        study: StudyEntry,
        instances: Sequence[HeldInstance],
        emergency: bool,
        on_stored: Callable[[str], None],
        should_yield: Callable[[], bool],
    ) -> DeliveryResult:
        raise NotImplementedError


def _check_hashes(
    client: CamiClient | None,
    digests: Callable[[str], str],
    committed: list[str],
    failures: dict[str, str],
) -> list[str]:
    """The committed instances whose bytes at CAMI are the agent's (``digests(sop)``: the SHA-256 CAMI
    must hold); the others go to ``failures``."""
    if client is None or not committed:
        return committed
    try:
        results = client.verify([(sop, digests(sop)) for sop in committed])
    except CamiUnreachable as exc:
        raise LinkDown(f"hash check: {exc}") from exc
    except CamiRefused as exc:
        for sop in committed:
            failures[sop] = f"hash check refused: HTTP {exc.status}: {exc.body}"
        return []
    matching = []
    for sop in committed:
        result = results.get(sop, "absent")
        if result == "match":
            matching.append(sop)
        elif result == "mismatch":
            failures[sop] = MISMATCH
        else:
            failures[sop] = "absent at CAMI by the hash check"
    return matching


# -- DICOM -------------------------------------------------------------------------------------
class DicomDelivery(_Attempts):
    def __init__(
        self,
        target: CamiTarget,
        calling_ae_title: str,
        pace: LinkPace,
        waiter: CommitmentWaiter,
        *,
        client: CamiClient | None = None,
        dimse_timeout: float = 120.0,
        acse_timeout: float = 30.0,
        connection_timeout: float = 15.0,
    ):
        if not target.host or not target.port:
            raise ValueError("DICOM delivery needs CAMI's host and port")
        self.target = target
        self.calling_ae_title = calling_ae_title
        self.pace = pace
        self.waiter = waiter
        self.client = client
        self.dimse_timeout = dimse_timeout
        self.acse_timeout = acse_timeout
        self.connection_timeout = connection_timeout
        # what the association announces, and what CAMI writes into the stored object's header
        defaults = AE()
        self.implementation_class_uid = str(defaults.implementation_class_uid)
        self.implementation_version_name = str(defaults.implementation_version_name or "")
        # C-STORE from a file path sends the file's data set bytes as they are, read in PDU-sized
        # chunks (pynetdicom's chunked mode; a process-wide switch that only affects sends from a path)
        _config.STORE_SEND_CHUNKED_DATASET = True

    def _attempt(
        self,
        study: StudyEntry,
        instances: Sequence[HeldInstance],
        emergency: bool,
        on_stored: Callable[[str], None],
        should_yield: Callable[[], bool],
    ) -> DeliveryResult:
        stored: list[str] = []
        failed: dict[str, str] = {}
        sent_bytes = 0
        yielded = False
        for group in _context_groups([i for i in instances if not i.sent]):
            assoc = self._associate(emergency, sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in group}))
            try:
                for instance in group:
                    if should_yield():
                        yielded = True
                        break
                    reason = self._store(assoc, instance, emergency)
                    if reason is None:
                        on_stored(instance.sop_instance_uid)
                        stored.append(instance.sop_instance_uid)
                        sent_bytes += instance.size
                    else:
                        log.warning("CAMI refused %s: %s", instance.sop_instance_uid, reason)
                        failed[instance.sop_instance_uid] = reason
            except Exception:  # LinkDown, or the queue failing to record: never leave it open
                _abort(assoc)
                raise
            _release(assoc)
            if yielded:
                return DeliveryResult(stored, failed, bytes_sent=sent_bytes, yielded=True)
        now_stored = set(stored)
        to_commit = [i for i in instances if i.sent or i.sop_instance_uid in now_stored]
        committed, commitment_failed = self._commit(to_commit, emergency)
        paths = {i.sop_instance_uid: i for i in instances}
        committed = _check_hashes(self.client, lambda sop: self.cami_sha256(paths[sop]), committed, commitment_failed)
        return DeliveryResult(stored, failed, committed, commitment_failed, sent_bytes)

    def cami_sha256(self, instance: HeldInstance) -> str:
        """The SHA-256 of the object CAMI holds once it stored ``instance`` by C-STORE.

        The data set travels byte for byte, but the Part-10 header is CAMI's: it wraps the data set
        deterministically, naming the sending toolkit (the implementation UID and version this AE
        announces), so the agent can compute the very same bytes (:func:`ingest.dicom.part10`)."""
        with instance.path.open("rb") as f:
            offset = split_part10(f.read(HEADER_READ)).dataset_offset
            header = part10(
                b"",
                instance.sop_class_uid,
                instance.sop_instance_uid,
                instance.transfer_syntax_uid,
                self.implementation_class_uid,
                self.implementation_version_name,
            ).part10
            digest = hashlib.sha256(header)
            f.seek(offset)
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def _associate(self, emergency: bool, pairs: Sequence[tuple[str, str]], commitment: bool = False) -> Association:
        ae = AE(ae_title=self.calling_ae_title)
        ae.implementation_class_uid = self.implementation_class_uid
        ae.implementation_version_name = self.implementation_version_name
        # a paced instance may take minutes to go out while nothing comes back: the idle timer must
        # not abort it; a dead peer shows as a broken socket or a missing response (dimse_timeout)
        ae.network_timeout = None
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.connection_timeout = self.connection_timeout
        for sop_class, syntax in pairs:
            ae.add_requested_context(sop_class, [syntax])
        roles: list[Any] = []
        if commitment:
            ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
            roles.append(build_role(STORAGE_COMMITMENT_PUSH, scu_role=True))
        called = self.target.emergency_ae_title if emergency else self.target.ae_title
        where = f"CAMI {called} at {self.target.host}:{self.target.port}"
        try:
            assoc = ae.associate(str(self.target.host), int(self.target.port or 0), ae_title=called, ext_neg=roles)
        except (OSError, RuntimeError) as exc:
            raise LinkDown(f"cannot reach {where}: {exc}") from exc
        if not assoc.is_established:
            if assoc.is_rejected:
                raise LinkDown(f"{where} rejected the association from {self.calling_ae_title}")
            raise LinkDown(f"cannot reach {where}")
        # a CAMI that stops reading (a dead link without a reset) fails the send after dimse_timeout
        # instead of blocking it for good: the association is then aborted and LinkDown follows
        raw = getattr(assoc.dul.socket, "socket", None)
        if raw is not None:
            raw.settimeout(self.dimse_timeout)
        pace_association(assoc, self.pace)
        return assoc

    def _store(self, assoc: Association, instance: HeldInstance, emergency: bool) -> str | None:
        """None when CAMI stored the instance, else why it did not; LinkDown when the link broke."""
        priority = PRIORITY_HIGH if emergency else PRIORITY_MEDIUM
        try:
            answer = assoc.send_c_store(instance.path, priority=priority)
        except (LinkBroken, RuntimeError) as exc:
            raise LinkDown(f"C-STORE of {instance.sop_instance_uid}: {exc}") from exc
        except ValueError as exc:  # no accepted presentation context for the file's class and syntax
            return f"not sent: {exc}"
        except (OSError, AttributeError) as exc:  # the spooled file went missing or lost its meta
            return f"spooled file unreadable: {exc}"
        if "Status" not in answer:
            raise LinkDown(f"no C-STORE response for {instance.sop_instance_uid}: the association to CAMI broke")
        status = int(answer.Status)
        if code_to_category(status) in ("Success", "Warning"):
            return None
        comment = str(answer.get("ErrorComment", "")).strip()
        return f"C-STORE status 0x{status:04X}" + (f": {comment}" if comment else "")

    def _commit(self, instances: Sequence[HeldInstance], emergency: bool) -> tuple[list[str], dict[str, str]]:
        if not instances:
            return [], {}
        transaction = generate_uid()
        request = Dataset()
        request.TransactionUID = transaction
        references = []
        for instance in instances:
            item = Dataset()
            item.ReferencedSOPClassUID = instance.sop_class_uid
            item.ReferencedSOPInstanceUID = instance.sop_instance_uid
            references.append(item)
        request.ReferencedSOPSequence = references
        assoc = self._associate(emergency, (), commitment=True)
        try:
            status, _ = assoc.send_n_action(
                request, REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
            )
        except (LinkBroken, RuntimeError) as exc:
            _abort(assoc)
            raise LinkDown(f"storage commitment request: {exc}") from exc
        _release(assoc)
        if "Status" not in status:
            raise LinkDown("no N-ACTION response: the association to CAMI broke")
        sops = [i.sop_instance_uid for i in instances]
        if int(status.Status) != 0x0000:
            reason = f"storage commitment request refused: status 0x{int(status.Status):04X}"
            return [], dict.fromkeys(sops, reason)
        timeout = self.target.commitment_timeout
        report = self.waiter.wait(transaction, timeout)
        if report is None:
            return [], dict.fromkeys(sops, f"no storage commitment report from CAMI within {timeout:g} s")
        return _read_report(report, sops)


def _read_report(report: CommitmentReport, sops: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    committed = {sop for _, sop in report.committed}
    reasons = {
        sop: f"not committed: 0x{code:04X} {FAILURE_REASONS.get(code, 'failure')}" for _, sop, code in report.failed
    }
    ok = [sop for sop in sops if sop in committed and sop not in reasons]
    failures = {sop: reasons.get(sop, "not in CAMI's storage commitment report") for sop in sops if sop not in ok}
    return ok, failures


def _context_groups(instances: Sequence[HeldInstance]) -> list[list[HeldInstance]]:
    """The instances in groups whose (SOP class, transfer syntax) pairs fit one association."""
    groups: list[list[HeldInstance]] = []
    pairs: set[tuple[str, str]] = set()
    for instance in instances:
        pair = (instance.sop_class_uid, instance.transfer_syntax_uid)
        if not groups or (pair not in pairs and len(pairs) >= MAX_CONTEXTS):
            groups.append([])
            pairs = set()
        pairs.add(pair)
        groups[-1].append(instance)
    return groups


def _release(assoc: Association) -> None:
    if assoc.is_established:
        try:
            assoc.release()
        except Exception:  # a release on a dying link: the association is gone either way
            _abort(assoc)


def _abort(assoc: Association) -> None:
    """After a broken link or a lost answer: no polite release to wait for."""
    if assoc.is_established:
        try:
            assoc.abort()
        except Exception as exc:  # the socket is already gone
            log.debug("abort after a broken link: %s", exc)


# -- STOW-RS -----------------------------------------------------------------------------------
class StowDelivery(_Attempts):
    """STOW-RS over HTTPS where DICOM ports are closed: batches of instances, each one request."""

    def __init__(self, client: CamiClient, pace: LinkPace, *, batch_bytes: int = 4 << 20, batch_instances: int = 16):
        self.client = client
        self.pace = pace
        self.batch_bytes = batch_bytes
        self.batch_instances = batch_instances

    def _attempt(
        self,
        study: StudyEntry,
        instances: Sequence[HeldInstance],
        emergency: bool,
        on_stored: Callable[[str], None],
        should_yield: Callable[[], bool],
    ) -> DeliveryResult:
        stored: list[str] = []
        failed: dict[str, str] = {}
        sent_bytes = 0
        batches = self._batches([i for i in instances if not i.sent])
        for n, batch in enumerate(batches):
            if should_yield():
                return DeliveryResult(stored, failed, bytes_sent=sent_bytes, yielded=True)
            boundary = STOW_BOUNDARY_PREFIX + uuid.uuid4().hex
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
            try:
                answer = self.client.stow(
                    paced_chunks(multipart_body(batch, boundary), self.pace), content_type, emergency
                )
            except CamiUnreachable as exc:
                raise LinkDown(f"STOW-RS: {exc}") from exc
            except CamiRefused as exc:
                reason = f"STOW-RS refused: HTTP {exc.status}: {exc.body}"
                # a refused token or role refuses every batch alike: do not send the rest for nothing
                rest = [i for b in batches[n:] for i in b] if exc.status in (401, 403) else batch
                failed.update(dict.fromkeys((i.sop_instance_uid for i in rest), reason))
                if exc.status in (401, 403):
                    break
                continue
            accepted, refused = _read_stow_answer(answer)
            for instance in batch:
                sop = instance.sop_instance_uid
                if sop in accepted:
                    on_stored(sop)
                    stored.append(sop)
                    sent_bytes += instance.size
                else:
                    failed[sop] = refused.get(sop, "not in CAMI's STOW-RS answer")
        now_stored = set(stored)
        to_commit = [i.sop_instance_uid for i in instances if i.sent or i.sop_instance_uid in now_stored]
        commitment_failed: dict[str, str] = {}
        digests = {i.sop_instance_uid: i.sha256 for i in instances}  # STOW keeps the file as it is
        committed = _check_hashes(self.client, digests.__getitem__, to_commit, commitment_failed)
        return DeliveryResult(stored, failed, committed, commitment_failed, sent_bytes)

    def _batches(self, instances: Sequence[HeldInstance]) -> list[list[HeldInstance]]:
        batches: list[list[HeldInstance]] = []
        size = 0
        for instance in instances:
            if not batches or len(batches[-1]) >= self.batch_instances or size + instance.size > self.batch_bytes:
                batches.append([])
                size = 0
            batches[-1].append(instance)
            size += instance.size
        return batches


def multipart_body(instances: Sequence[HeldInstance], boundary: str) -> Iterator[bytes]:
    """A multipart/related body of the instances' files, read from the spool as it is sent."""
    for instance in instances:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with instance.path.open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


#: DICOM JSON tags of the STOW answer
_REFERENCED, _FAILED, _SOP_UID, _REASON, _COMMENT = "00081199", "00081198", "00081155", "00081197", "00000902"


def _read_stow_answer(answer: dict[str, object]) -> tuple[set[str], dict[str, str]]:
    def items(tag: str) -> list[dict[str, object]]:
        element = answer.get(tag)
        values = element.get("Value", []) if isinstance(element, dict) else []
        return [v for v in values if isinstance(v, dict)]

    def first(item: dict[str, object], tag: str) -> object:
        element = item.get(tag)
        values = element.get("Value") if isinstance(element, dict) else None
        return values[0] if isinstance(values, list) and values else None

    accepted = {str(first(i, _SOP_UID)) for i in items(_REFERENCED) if first(i, _SOP_UID)}
    refused: dict[str, str] = {}
    for item in items(_FAILED):
        sop = first(item, _SOP_UID)
        if sop is None:
            continue
        reason = first(item, _REASON)
        comment = first(item, _COMMENT)
        text = f"STOW-RS failure 0x{int(str(reason)):04X}" if reason is not None else "STOW-RS failure"
        refused[str(sop)] = text + (f": {comment}" if comment else "")
    return accepted, refused
