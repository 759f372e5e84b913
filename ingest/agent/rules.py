"""What the agent reads in an object before it queues it (pure: a data set in, a verdict out).

- :func:`marks`: does the object make its study pathology or an emergency? CAMI's private block
  (creator ``CAMI``, group 0x0011: ``(0011,xx10)`` = ``Y`` pathology, ``(0011,xx11)`` =
  ``EMERGENCY``), and a structured report whose coded finding is one of ``Rules.pathology_codes``.
- :func:`hard_rule_problems`: what CAMI would refuse (the regional rules of
  :mod:`ingest.validation`, in the words of CAMI's own refusal). Such a study is held at the
  hospital with that reason instead of being sent to be refused.
- :func:`missing`: regional attributes absent from the package (CAMI accepts it and lists them as
  an incomplete package: the agent reports them, they do not block).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ingest.agent.config import Rules
from ingest.dicom import MAX_SEQUENCE_DEPTH, MalformedObject, read_header, split_part10, text
from ingest.pipeline import Arrival, Refused, examine_file
from ingest.validation import (
    PATHOLOGY_ELEMENT,
    PRIORITY_ELEMENT,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    Inspection,
    inspect,
)

#: structured report storage classes whose content tree may hold a coded finding
SR_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    }
)


@dataclass(frozen=True)
class Marks:
    #: the object marks its study as pathology by a mark the rules count (private block or SR finding)
    pathology: bool = False
    #: CAMI's private emergency mark (always counts: emergencies go whatever the rules)
    emergency: bool = False
    #: the pathology comes from an SR's coded finding
    sr_pathology: bool = False


def marks(ds: Dataset, rules: Rules) -> Marks:
    # read directly, not through inspect(): an object CAMI would refuse still carries its marks,
    # and they decide whether its study is eligible (and then held for the refusal)
    private = _private_mark(ds, PATHOLOGY_ELEMENT) == "Y"
    emergency = _private_mark(ds, PRIORITY_ELEMENT) == "EMERGENCY"
    sr = "sr" in rules.pathology_marks and sr_finding(ds, rules.pathology_codes)
    pathology = ("private" in rules.pathology_marks and private) or sr
    return Marks(pathology=pathology, emergency=emergency, sr_pathology=sr)


def _private_mark(ds: Dataset, element: int) -> str | None:
    """A value of CAMI's private block, as :mod:`ingest.validation` reads it (stripped, upper case)."""
    try:
        value = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)[element].value
    except Exception:  # no block, no element, or a value that does not decode: no mark
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip().upper() or None


def _inspection(ds: Dataset) -> Inspection | None:
    try:
        return inspect(ds)
    except Exception:  # an attribute that does not decode: hard_rule_problems says so
        return None


def sr_finding(ds: Dataset, codes: tuple[tuple[str, str], ...]) -> bool:
    """A structured report with a CODE content item (at any depth) whose value is one of ``codes``."""
    if not codes or text(ds, "SOPClassUID") not in SR_SOP_CLASSES:
        return False
    wanted = {(scheme.upper(), value) for scheme, value in codes}
    return any((scheme.upper(), value) in wanted for scheme, value in _coded_values(ds, 0))


def _coded_values(item: Dataset, depth: int) -> Iterator[tuple[str, str]]:
    if depth > MAX_SEQUENCE_DEPTH:
        return
    try:
        content = item.get("ContentSequence") or []
        children = [child for child in content if isinstance(child, Dataset)]
    except Exception:  # not a sequence, or an item that does not decode: no finding there
        return
    for child in children:
        if text(child, "ValueType") == "CODE":
            try:
                concepts = child.get("ConceptCodeSequence") or []
                concept = concepts[0] if len(concepts) else None
            except Exception:
                concept = None
            if isinstance(concept, Dataset):
                scheme, value = text(concept, "CodingSchemeDesignator"), text(concept, "CodeValue")
                if scheme is not None and value is not None:
                    yield scheme, value
        yield from _coded_values(child, depth + 1)


def hard_rule_problems(ds: Dataset) -> list[str]:
    """Why CAMI would refuse this object under the regional rules (empty: it would accept it).

    The wording is CAMI's refusal comment (:func:`ingest.validation.inspect`), so a hospital sees
    the same reason at the agent as in CAMI's rejection events."""
    try:
        inspection = inspect(ds)
    except Exception as exc:
        # the same words as CAMI's write path for an attribute the rules cannot read
        return [f"an attribute does not decode ({type(exc).__name__})"]
    return [] if inspection.refusal is None else [inspection.refusal.comment]


def file_problems(part10: bytes, organisation: str | None = None) -> list[str]:
    """Everything CAMI's write path refuses for this Part-10 file (malformed bytes, the regional
    rules, values its InstanceReceived event cannot hold), in CAMI's words. Runs CAMI's own
    checks (:func:`ingest.pipeline.examine_file`); nothing is stored."""
    try:
        examine_file(part10, _arrival(organisation), meta_must_match=False)
    except Refused as refused:
        return [refused.refusal.comment]
    return []


def _arrival(organisation: str | None) -> Arrival:
    return Arrival(channel="dicom", source_node="agent", organisation=organisation)


@dataclass(frozen=True)
class Examination:
    """A Part-10 file as the agent holds it: its header, CAMI's verdict, what is missing."""

    header: Dataset
    transfer_syntax: str
    #: why CAMI would refuse it (empty: it would accept it)
    problems: list[str]
    missing: list[str]


def examine(part10: bytes, organisation: str | None = None) -> Examination:
    """One pass of CAMI's checks over a file (see :func:`file_problems`); ValueError (with the
    reason) when the bytes are not a DICOM object at all, so there is nothing to hold."""
    try:
        examined = examine_file(part10, _arrival(organisation), meta_must_match=False)
    except Refused as refused:
        if refused.refusal.reason == "malformed":
            raise ValueError(refused.refusal.comment) from None
        try:
            received = split_part10(part10)
            header = read_header(part10[received.dataset_offset :], received.transfer_syntax)
        except MalformedObject as exc:  # not expected: CAMI's checks parsed it
            raise ValueError(str(exc)) from None
        return Examination(header, received.transfer_syntax, [refused.refusal.comment], missing(header))
    return Examination(examined.header, examined.received.transfer_syntax, [], list(examined.inspection.missing))


def missing(ds: Dataset) -> list[str]:
    """Regional attributes absent (names as CAMI's InstanceReceived ``missing`` lists them)."""
    inspection = _inspection(ds)
    return [] if inspection is None else list(inspection.missing)
