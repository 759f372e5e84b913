"""Reports arriving as DICOM documents: :class:`DocumentReportHook` recognises DICOM SR and
encapsulated-PDF documents on the ingest path and turns them into ReportDrafted (and ReportSigned
for verified, complete SR) events; :func:`sr_texts` reads an SR content tree."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset

from ingest.dicom import first_item, text
from ingest.pipeline import Arrival, Outcome
from ingest.reports.rules import content_sha256
from schemas.events import Event, new_event

#: the report a DICOM document becomes is named by the document (same document, same report)
DOCUMENT_NAMESPACE = uuid.UUID("6f1f7a52-55a4-4c43-9d8e-1d1e0c1a7c01")


SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "basic-text-sr",
    "1.2.840.10008.5.1.4.1.1.88.22": "enhanced-sr",
    "1.2.840.10008.5.1.4.1.1.88.33": "comprehensive-sr",
    "1.2.840.10008.5.1.4.1.1.88.34": "comprehensive-3d-sr",
    "1.2.840.10008.5.1.4.1.1.88.35": "extensible-sr",
}
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

#: DCM concept codes of report sections (PS3.16): findings go to the protocol, the rest to the conclusion
_CONCLUSION_CODES = {"121072", "121073", "121074", "121075", "121076", "121077"}
_PROTOCOL_CODES = {"121070", "121071", "121060", "121064", "121065"}
_CONCLUSION_WORDS = re.compile(r"impression|conclusion|recommendation|заключени|вывод|рекомендац|диагноз", re.I)
_PROTOCOL_WORDS = re.compile(r"finding|description|protocol|описани|протокол|результат|находк", re.I)
_PERSON_OBSERVER_NAME = "121008"


def _concept(item: Dataset) -> tuple[str | None, str]:
    code = first_item(item, "ConceptNameCodeSequence")
    if code is None:
        return None, ""
    return text(code, "CodeValue"), text(code, "CodeMeaning") or ""


def _section(code: str | None, meaning: str, inherited: str | None) -> str | None:
    if code in _CONCLUSION_CODES or _CONCLUSION_WORDS.search(meaning):
        return "conclusion"
    if code in _PROTOCOL_CODES or _PROTOCOL_WORDS.search(meaning):
        return "protocol"
    return inherited


def sr_texts(ds: Dataset) -> tuple[str, str, str | None]:
    """(protocol, conclusion, person observer name) from an SR content tree.

    TEXT items whose concept name (or an enclosing container's) means impression / conclusion /
    recommendation (DCM codes or English/Russian words) form the conclusion; the others the protocol."""
    protocol: list[str] = []
    conclusion: list[str] = []
    observer: list[str] = []

    def walk(items: Any, inherited: str | None, depth: int) -> None:
        if depth > 32 or items is None:
            return
        for item in items:
            value_type = text(item, "ValueType")
            code, meaning = _concept(item)
            section = _section(code, meaning, inherited)
            if value_type == "TEXT":
                value = text(item, "TextValue")
                if value:
                    (conclusion if section == "conclusion" else protocol).append(value)
            elif value_type == "PNAME" and code == _PERSON_OBSERVER_NAME:
                name = text(item, "PersonName")
                if name:
                    observer.append(name)
            walk(item.get("ContentSequence"), section, depth + 1)

    root_code, root_meaning = _concept(ds)
    walk(ds.get("ContentSequence"), _section(root_code, root_meaning, None), 0)
    return "\n".join(protocol), "\n".join(conclusion), observer[0] if observer else None


def _verifier(ds: Dataset) -> dict[str, str | None] | None:
    item = first_item(ds, "VerifyingObserverSequence")
    if item is None:
        return None
    code_item = first_item(item, "VerifyingObserverIdentificationCodeSequence")
    return {
        "code": text(code_item, "CodeValue") if code_item is not None else None,
        "name": text(item, "VerifyingObserverName"),
    }


class DocumentReportHook:
    """Ingest hook: a stored DICOM SR or encapsulated PDF becomes a report.

    Returns ReportDrafted, plus ReportSigned when the document says VerificationFlag VERIFIED and
    CompletionFlag COMPLETE (signer: the verifying observer; signed_at: the archive's clock; the
    document's own VerificationDateTime is kept as declared). The report id is derived from the
    SOPInstanceUID (and version), so a document is one report however often it is re-sent.
    Encapsulated PDF texts are not extracted: the event says so (``text_extracted`` false) and
    points at the document's blob."""

    def __init__(self, store_name: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store_name = store_name
        self.clock = clock

    def __call__(self, ds: Dataset, outcome: Outcome, arrival: Arrival) -> list[Event]:
        sop_class = outcome.sop_class_uid or text(ds, "SOPClassUID")
        if sop_class in SR_CLASSES:
            source = "dicom-sr"
            protocol, conclusion, observer = sr_texts(ds)
            extracted = True
        elif sop_class == ENCAPSULATED_PDF:
            source = "encapsulated-pdf"
            protocol, conclusion, observer = "", "", None
            extracted = False
        else:
            return []
        sop_uid = outcome.sop_instance_uid
        study = outcome.study_instance_uid
        if not sop_uid or not study or outcome.blob is None:
            return []
        version = outcome.version or 1
        report_id = str(uuid.uuid5(DOCUMENT_NAMESPACE, sop_uid if version == 1 else f"{sop_uid}/{version}"))
        document = {"sha256": outcome.blob.sha256, "size": outcome.blob.size, "store": self.store_name}
        verifier = _verifier(ds)
        author = {"code": None, "name": observer} if observer else (verifier or {"code": None, "name": None})
        identity = {
            "report_id": report_id,
            "StudyInstanceUID": study,
            "AccessionNumber": text(ds, "AccessionNumber"),
            "PatientID": text(ds, "PatientID"),
        }
        common: dict[str, Any] = {
            "aggregate_id": study,
            "source_node": arrival.source_node,
            "organisation": arrival.organisation,
            "actor": arrival.actor,
            "correlation_id": arrival.correlation_id,
        }
        events = [
            new_event(
                "ReportDrafted",
                {
                    **identity,
                    "protocol_text": protocol,
                    "conclusion_text": conclusion,
                    "author": author,
                    "revision": 1,
                    "source": source,
                    "document": document,
                    "SOPInstanceUID": sop_uid,
                    "text_extracted": extracted,
                },
                **common,
            )
        ]
        verified = text(ds, "VerificationFlag") == "VERIFIED" and text(ds, "CompletionFlag") == "COMPLETE"
        if verified:
            now = self.clock()
            events.append(
                new_event(
                    "ReportSigned",
                    {
                        **identity,
                        "protocol_text": protocol,
                        "conclusion_text": conclusion,
                        "signer": verifier or author,
                        "revision": 1,
                        "signed_at": now,
                        "content_sha256": content_sha256(protocol, conclusion),
                        "SOPInstanceUID": sop_uid,
                        "source": source,
                        "document": document,
                        "declared_verification_datetime": _verification_datetime(ds),
                    },
                    occurred_at=now,
                    **common,
                )
            )
        return events


def _verification_datetime(ds: Dataset) -> str | None:
    item = first_item(ds, "VerifyingObserverSequence")
    return text(item, "VerificationDateTime") if item is not None else None
