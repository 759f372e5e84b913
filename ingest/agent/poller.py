"""Polling proxy for a PACS that cannot push: find its recent studies, pull the new or changed ones.

Each poll asks the PACS (Study Root C-FIND, STUDY level) for the studies of the last ``days_back``
days by StudyDate, with the study's instance and series counts. A study's *fingerprint* is those
counts: a study the queue has not seen, or whose fingerprint changed (a late series, an added
instance), is retrieved whole (the queue keeps an instance it already holds with the same bytes
once). Retrieval is C-MOVE to the router's AE title (the PACS knows the agent as a modality, the
instances arrive at :class:`ingest.agent.router.RouterScp`) or C-GET (the instances arrive on the
poll's own association; the PACS picks their transfer syntax from the proposed ones). The
fingerprint is remembered only after a retrieve with no failed or missing sub-operation, so a
study half-pulled is pulled again at the next poll. The poll calls the PACS with the router's AE
title, the one the PACS knows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ingest.ae_titles import ae_title
from ingest.agent.config import PollSource
from ingest.agent.model import Intake
from ingest.agent.router import keep_stored
from ingest.dicom import integer, text

log = logging.getLogger("cami.agent.poller")

#: C-FIND / C-MOVE / C-GET statuses (PS3.4 C.4): pending, and success / warning at the end
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
WARNING = 0xB000
#: the source name the queue records for objects pulled by C-GET (C-MOVE ones come via the router)
SOURCE = "poll"
#: presentation contexts of a C-GET besides the Q/R one (128 at most per association)
MAX_GET_CONTEXTS = 127
#: the transfer syntaxes images are commonly stored in: uncompressed, deflated, JPEG, JPEG-LS,
#: JPEG 2000, RLE, HTJ2K (video syntaxes are left to the PACS's choice)
STORED_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
)


def _local_now() -> datetime:
    return datetime.now().astimezone()


@dataclass(frozen=True)
class FoundStudy:
    study_instance_uid: str
    patient_id: str | None
    accession: str | None
    instances: int | None
    series: int | None
    #: SOPClassesInStudy, when the PACS answers it (C-GET then proposes exactly those classes)
    sop_classes: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return f"instances={self.instances if self.instances is not None else '?'};series={self.series or '?'}"


@dataclass(frozen=True)
class PollResult:
    #: studies the PACS listed in the date window
    found: int = 0
    #: of those, not seen before or changed since
    new_or_changed: int = 0
    #: retrieved without failures (and now remembered)
    retrieved: int = 0
    #: retrieves that failed (retried at the next poll)
    failed: int = 0
    #: StudyInstanceUID -> why its retrieve failed; "" -> why the poll itself failed
    errors: dict[str, str] = field(default_factory=dict)


class PacsPoller:
    def __init__(
        self,
        source: PollSource,
        queue: Intake,
        router_ae_title: str,
        *,
        timeout: float = 120.0,
        clock: Callable[[], datetime] = _local_now,
    ) -> None:
        self.clock = clock
        self.source = source
        self.queue = queue
        self.router_ae_title = router_ae_title
        self.timeout = timeout

    # -- one poll ----------------------------------------------------------------------------------

    def poll_once(self, now: datetime) -> PollResult:
        """Find, compare, retrieve; never raises for the PACS's sake (a failed poll says why in
        ``errors[""]``)."""
        try:
            found = self.find(now)
        except PollError as exc:
            log.warning("poll of %s failed: %s", self._pacs, exc)
            return PollResult(errors={"": str(exc)})
        changed = [s for s in found if self.queue.seen(s.study_instance_uid) != s.fingerprint]
        retrieved, errors = 0, {}
        for study in changed:
            try:
                self.retrieve(study.study_instance_uid, study.sop_classes)
            except PollError as exc:
                log.warning("retrieve of %s from %s failed: %s", study.study_instance_uid, self._pacs, exc)
                errors[study.study_instance_uid] = str(exc)
                continue
            self.queue.remember_seen(study.study_instance_uid, study.fingerprint)
            retrieved += 1
        if changed:
            log.info(
                "poll of %s: %d found, %d new or changed, %d retrieved", self._pacs, len(found), len(changed), retrieved
            )
        return PollResult(len(found), len(changed), retrieved, len(errors), errors)

    def run(self, stop: threading.Event) -> None:
        """Poll every ``source.interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.poll_once(self.clock())
            except Exception:  # the loop must outlive a bug in one poll
                log.exception("poll of %s failed", self._pacs)
            stop.wait(self.source.interval)

    # -- the DICOM exchanges -----------------------------------------------------------------------

    @property
    def _pacs(self) -> str:
        return f"{self.source.ae_title}@{self.source.host}:{self.source.port}"

    def find(self, now: datetime) -> list[FoundStudy]:
        """The PACS's studies with a StudyDate in [today - days_back, today] (the agent's local date)."""
        today = now.astimezone().date()
        first = today - timedelta(days=self.source.days_back)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyDate = f"{first:%Y%m%d}-{today:%Y%m%d}"
        query.StudyInstanceUID = ""
        query.PatientID = ""
        query.AccessionNumber = ""
        query.NumberOfStudyRelatedInstances = ""
        query.NumberOfStudyRelatedSeries = ""
        query.SOPClassesInStudy = ""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        studies: dict[str, FoundStudy] = {}
        with self._association(ae) as assoc:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = _code(status)
                if code in PENDING:
                    study = _found(identifier)
                    if study is not None:
                        studies[study.study_instance_uid] = study
                elif code != SUCCESS:
                    raise PollError(f"C-FIND failed: {_describe(status)}")
        return list(studies.values())

    def retrieve(self, study_uid: str, sop_classes: Sequence[str] = ()) -> None:
        """Pull one study whole (C-MOVE or C-GET); PollError unless every sub-operation succeeded."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study_uid
        ae = self._ae()
        if self.source.retrieve == "get":
            model = StudyRootQueryRetrieveInformationModelGet
            ae.add_requested_context(model)
            contexts = get_contexts(sop_classes)
            for sop_class, syntaxes in contexts:
                ae.add_requested_context(sop_class, syntaxes)
            # the PACS stores the instances on this association: the agent takes the SCP role
            roles = [build_role(sop_class, scp_role=True) for sop_class in dict.fromkeys(c for c, _ in contexts)]
            handlers = [(evt.EVT_C_STORE, self._store_sub_operation)]
            with self._association(ae, ext_neg=roles, evt_handlers=handlers) as assoc:
                _check_retrieve(assoc.send_c_get(identifier, model))
        else:
            model = StudyRootQueryRetrieveInformationModelMove
            ae.add_requested_context(model)
            with self._association(ae) as assoc:
                _check_retrieve(assoc.send_c_move(identifier, self.router_ae_title, model))

    def _store_sub_operation(self, event: Any) -> Dataset:
        """A C-GET sub-operation: the PACS stores an instance on the poll's association."""
        return keep_stored(event, self.queue, source=SOURCE, calling_ae_title=self.source.ae_title, emergency=False)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.router_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def _association(self, ae: AE, **kwargs: Any) -> _Association:
        return _Association(ae, self.source, kwargs)


def get_contexts(sop_classes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The storage contexts a C-GET proposes (128 at most with the Q/R one). The PACS accepts one
    transfer syntax per context and converts an object stored in another: with the study's SOP
    classes known and few, each class is offered once per stored syntax (one context each), so
    every object can travel as stored; otherwise one context per storage class, every syntax in it
    (the PACS then picks)."""
    classes = list(dict.fromkeys(sop_classes))
    if classes and len(classes) * len(STORED_SYNTAXES) <= MAX_GET_CONTEXTS:
        return [(c, [ts]) for c in classes for ts in STORED_SYNTAXES]
    known = [str(c.abstract_syntax) for c in StoragePresentationContexts if c.abstract_syntax is not None]
    chosen = classes + [c for c in known if c not in classes]
    return [(c, list(ALL_TRANSFER_SYNTAXES)) for c in chosen[:MAX_GET_CONTEXTS]]


class PollError(Exception):
    """The PACS could not be reached, or refused or failed a request (the message says which)."""


class _Association:
    """An association with the PACS as a context manager: released (or aborted) on the way out."""

    def __init__(self, ae: AE, source: PollSource, kwargs: dict[str, Any]) -> None:
        self.ae, self.source, self.kwargs = ae, source, kwargs
        self.assoc: Any = None

    def __enter__(self) -> Any:
        try:
            self.assoc = self.ae.associate(
                self.source.host, self.source.port, ae_title=self.source.ae_title, **self.kwargs
            )
        except Exception as exc:  # a name that does not resolve, a socket error
            raise PollError(
                f"cannot reach {self.source.ae_title}@{self.source.host}:{self.source.port}: {exc}"
            ) from exc
        if not self.assoc.is_established:
            why = "rejected" if self.assoc.is_rejected else "aborted" if self.assoc.is_aborted else "not established"
            raise PollError(f"association with {self.source.ae_title}@{self.source.host}:{self.source.port} {why}")
        return self.assoc

    def __exit__(self, *exc: object) -> None:
        if self.assoc is not None and self.assoc.is_established:
            if exc[0] is None:
                self.assoc.release()
            else:
                self.assoc.abort()


def _code(status: Dataset | None) -> int | None:
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def _describe(status: Dataset | None) -> str:
    code = _code(status)
    if code is None:
        return "no answer (timeout or the association was aborted)"
    comment = text(status, "ErrorComment") if status is not None else None
    return f"status 0x{code:04X}" + (f" ({comment})" if comment else "")


def _found(identifier: Dataset | None) -> FoundStudy | None:
    if identifier is None:
        return None
    study_uid = ae_title(identifier.get("StudyInstanceUID", ""))
    if not study_uid:
        return None
    return FoundStudy(
        study_uid,
        text(identifier, "PatientID"),
        text(identifier, "AccessionNumber"),
        integer(identifier, "NumberOfStudyRelatedInstances"),
        integer(identifier, "NumberOfStudyRelatedSeries"),
        _values(identifier, "SOPClassesInStudy"),
    )


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    try:
        value = ds.get(keyword)
    except Exception:  # a value that does not decode
        return ()
    if value is None or value == "":
        return ()
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    return tuple(v for v in (str(i).strip().strip("\x00") for i in items) if v)


def _check_retrieve(responses: Iterator[tuple[Dataset | None, Dataset | None]]) -> None:
    """Read a C-MOVE/C-GET to its end; PollError unless it ended in success with nothing failed."""
    final: Dataset | None = None
    for status, _identifier in responses:
        if _code(status) in PENDING:
            continue
        final = status
    code = _code(final)
    if code is None:
        raise PollError(f"retrieve ended without a final status: {_describe(final)}")
    failed = integer(final, "NumberOfFailedSuboperations") if final is not None else None
    # 0xB000: sub-operations done, some failed or with warnings (a warning still stored the instance)
    if code not in (SUCCESS, WARNING) or failed:
        raise PollError(f"retrieve incomplete: {_describe(final)}, {failed or 0} sub-operations failed")
