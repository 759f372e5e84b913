"""A small, real :class:`ingest.agent.model.Intake` for testing the agent's sources on their own.

It spools every accepted object to ``directory/<study>/<sop>.dcm`` (the bytes exactly as the source
handed them over), parses it as the queue would (``ingest.dicom``), refuses what does not parse with
ValueError, and records every call so a test can see what each source did. The agent's real queue
(``ingest.agent.queue.TransferQueue``) does far more (SQLite, outbox, rules); this one stands in for
it only where a test is about a source, not about the queue.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ingest.agent.model import HeldInstance
from ingest.dicom import parse, split_part10, uid


@dataclass(frozen=True)
class Accepted:
    held: HeldInstance
    source: str
    calling_ae_title: str | None
    emergency: bool


@dataclass(frozen=True)
class PathologyMark:
    study_uid: str | None
    accession: str | None
    patient_id: str | None
    source: str


@dataclass
class SpoolingIntake:
    directory: Path
    #: SOPInstanceUIDs to refuse with ValueError (what the real queue does with a hard-rule failure)
    refuse: set[str] = field(default_factory=set)
    accepted: list[Accepted] = field(default_factory=list)
    marks: list[PathologyMark] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    #: (study_uid, fingerprint) in the order remember_seen was called
    remembered: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def accept(
        self,
        part10: bytes | Path,
        *,
        source: str,
        calling_ae_title: str | None = None,
        emergency: bool = False,
    ) -> HeldInstance:
        data = part10.read_bytes() if isinstance(part10, Path) else part10
        received = split_part10(data)  # MalformedObject is a ValueError
        header = parse(data[received.dataset_offset :], received.transfer_syntax)
        uids = {k: uid(header, k) for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")}
        if not all(uids.values()):
            raise ValueError(f"identifiers missing: {sorted(k for k, v in uids.items() if not v)}")
        sop = str(uids["SOPInstanceUID"])
        if sop in self.refuse:
            raise ValueError(f"refused by the test intake: {sop}")
        path = self.directory / str(uids["StudyInstanceUID"]) / f"{sop}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        held = HeldInstance(
            sop_instance_uid=sop,
            sop_class_uid=str(uids["SOPClassUID"]),
            study_instance_uid=str(uids["StudyInstanceUID"]),
            series_instance_uid=str(uids["SeriesInstanceUID"]),
            transfer_syntax_uid=received.transfer_syntax,
            path=path,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        with self._lock:
            self.accepted.append(Accepted(held, source, calling_ae_title, emergency))
        return held

    def mark_pathology(
        self,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        patient_id: str | None = None,
        source: str,
    ) -> list[str]:
        with self._lock:
            self.marks.append(PathologyMark(study_uid, accession, patient_id, source))
            held = {a.held.study_instance_uid for a in self.accepted}
        return [study_uid] if study_uid is not None and study_uid in held else []

    def seen(self, study_uid: str) -> str | None:
        with self._lock:
            return self.fingerprints.get(study_uid)

    def remember_seen(self, study_uid: str, fingerprint: str) -> None:
        with self._lock:
            self.fingerprints[study_uid] = fingerprint
            self.remembered.append((study_uid, fingerprint))

    # -- what the tests read -----------------------------------------------------------------------

    def held(self) -> dict[str, HeldInstance]:
        """SOPInstanceUID -> the last accepted copy."""
        with self._lock:
            return {a.held.sop_instance_uid: a.held for a in self.accepted}

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)
