"""C-FIND matching for the DICOM Query/Retrieve SCP (PS3.4 C.4.1), Patient Root and Study Root.

:func:`c_find_responses` is what the EVT_C_FIND handler of :mod:`api.dicom.qr` runs once it has
checked the calling AE title: the identifier in, ``(status, identifier)`` pairs out. Matching is
:mod:`projections.archive_index.matching` through :func:`projections.query_model.find.find`, the same rules as QIDO-RS
(so ``findscu`` and a DICOMweb viewer see the same studies).

Levels: PATIENT (Patient Root only), STUDY, SERIES, IMAGE. The query is answered relationally:
the unique keys of the levels above (StudyInstanceUID for a SERIES query, ...) narrow the search
when present but are not required, as most archives allow. Each response identifier carries
every key the request asked for (empty where the archive does not hold the attribute, never
matched on: unsupported optional keys are ignored as PS3.4 C.2.2.1 allows), the unique keys
of the level and the levels above, QueryRetrieveLevel, RetrieveAETitle, and
SpecificCharacterSet ``ISO_IR 192`` (UTF-8: Cyrillic names travel as they are).

Statuses (yielded as the first element; the second is then None):

* 0xFF00 pending, with one response identifier per match (the handler's framework sends the
  final 0x0000 success after the last one).
* 0xA900 "Identifier does not match SOP Class": no or an unknown QueryRetrieveLevel, or a level
  the information model does not have (PATIENT in Study Root).
* 0xC000 "Unable to process": a matching value that does not parse (a malformed date or time
  range, an invalid UID or a wildcard in a UID, a return-only key such as
  NumberOfStudyRelatedInstances given a value).

At most :data:`MAX_MATCHES` matches are answered (the first ones in the query layer's order).
One RecordAccessed event (action ``query``, channel ``c-find``, the non-empty keys as the
query, the number of matches, the study when the identifier names exactly one) is appended
before the first match leaves; a refused identifier reads nothing and records nothing (the SCP
records refused callers itself).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from api.access import AccessRecorder, Reader
from projections.archive_index.matching import ATTRIBUTES, Condition, MatchingError, Text, Uids, parse_condition
from projections.archive_index.views import MAX_LIMIT
from projections.query_model.find import LEVEL_ATTRIBUTES, find
from projections.query_model.store import QueryStore

PENDING = 0xFF00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

MAX_MATCHES = MAX_LIMIT
#: responses built while the request's access event is made durable (about as long as that takes)
BUILT_AHEAD = 16

#: the levels each information model has
MODEL_LEVELS = {"patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"), "study": ("STUDY", "SERIES", "IMAGE")}
#: the unique key of each level
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
#: elements of an identifier that are not matching keys
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


def _raw_values(element: DataElement) -> list[str]:
    """An identifier element's value(s) as text (a backslash list arrives as several values)."""
    value = element.value
    if value is None or value == "":
        return [""]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value] or [""]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    return [str(value)]


def _keys(identifier: pydicom.Dataset, level: str) -> tuple[dict[str, Condition], list[DataElement]]:
    """(matching keys the level can answer, every key element asked for, in tag order)."""
    keys: dict[str, Condition] = {}
    asked: list[DataElement] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _NOT_KEYS or element.tag.group == 0x0002:
            continue
        asked.append(element)
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or keyword not in LEVEL_ATTRIBUTES[level] or element.VR == "SQ":
            continue  # an optional key the archive does not hold: returned empty, not matched
        keys[keyword] = parse_condition(attribute, _raw_values(element))
    return keys, asked


def _value(keyword: str, value: Any) -> Any:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    if isinstance(value, list):
        return [str(v) for v in value]
    if ATTRIBUTES[keyword].vr in ("IS", "US"):
        return int(value)
    return str(value)


def unique_keys(level: str, model: str) -> list[str]:
    """The unique keys of ``level`` and the levels above it in the information model."""
    levels = MODEL_LEVELS[model]
    return [UNIQUE_KEYS[upper] for upper in levels[: levels.index(level) + 1]]


#: the transfer syntaxes whose response identifiers are written here, element by element, as the
#: bytes pydicom would write (implicit VR or not; both little endian)
_PRE_ENCODED = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}
#: the answer's character set, as pydicom names its codec
_UTF8 = convert_encodings(["ISO_IR 192"])


def _raw_value(vr: str, value: Any) -> bytes:
    """A value of ``vr`` (as :func:`_value` gives it) as the bytes of its element, padded to even."""
    if value is None:
        return b""
    values = value if isinstance(value, list) else [value]
    if vr == "US":
        return b"".join(int(v).to_bytes(2, "little") for v in values)
    raw = "\\".join(str(v) for v in values).encode("utf-8")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


class ResponseIdentifiers:
    """The C-FIND response identifiers of one request: what each match carries is worked out once
    from the identifier asked (the elements, their VRs, the unique keys to add), so each match only
    fills in its values; the constant elements are shared by every response.

    Given the presentation context's ``transfer_syntax`` (implicit or explicit VR little endian),
    each value is written here as its element's bytes, in a data set marked as already in that
    encoding: pynetdicom's encoder (pydicom) then copies them instead of converting each value,
    half of each match's cost. Anything else (another syntax, an ambiguous VR asked) is answered
    with ordinary elements."""

    def __init__(
        self,
        asked: list[DataElement],
        level: str,
        retrieve_ae_title: str,
        model: str = "patient",
        transfer_syntax: str | None = None,
    ) -> None:
        fixed = (
            (Tag(0x00080005), "CS", "ISO_IR 192"),  # SpecificCharacterSet
            (Tag(0x00080052), "CS", level),  # QueryRetrieveLevel
            (Tag(0x00080054), "AE", retrieve_ae_title),  # RetrieveAETitle
        )
        #: (tag, VR the archive answers in, keyword or None when the archive holds no such key, VR asked)
        self._asked: list[tuple[BaseTag, str, str | None, str]] = []
        for element in asked:
            keyword = element.keyword
            holds = keyword in ATTRIBUTES and element.VR != "SQ"
            vr = ATTRIBUTES[keyword].vr if holds else element.VR
            self._asked.append((element.tag, vr, keyword if holds else None, element.VR))
        asked_tags = {element.tag for element in asked}
        self._unique = [
            (Tag(ATTRIBUTES[k].tag), ATTRIBUTES[k].vr, k)
            for k in unique_keys(level, model)
            if Tag(ATTRIBUTES[k].tag) not in asked_tags
        ]
        self._implicit = _PRE_ENCODED.get(str(transfer_syntax)) if transfer_syntax is not None else None
        if any(len(asked_vr) != 2 for *_, asked_vr in self._asked):
            self._implicit = None  # an ambiguous VR ("US or SS") is pydicom's to resolve
        self._fixed: dict[BaseTag, DataElement | RawDataElement] = {
            tag: self._element(tag, vr, value) for tag, vr, value in fixed
        }

    def _element(self, tag: BaseTag, vr: str, value: Any) -> DataElement | RawDataElement:
        if self._implicit is None:
            return DataElement(tag, vr, value)
        raw = _raw_value(vr, value)
        return RawDataElement(tag, vr, len(raw), raw, 0, self._implicit, True)

    def __call__(self, row: Mapping[str, Any]) -> pydicom.Dataset:
        """One match as a C-FIND response identifier."""
        elements: dict[BaseTag, DataElement | RawDataElement] = dict(self._fixed)
        for tag, vr, keyword, asked_vr in self._asked:
            if keyword is not None and keyword in row:
                elements[tag] = self._element(tag, vr, _value(keyword, row[keyword]))
            else:
                elements[tag] = self._element(tag, asked_vr, None)
        for tag, vr, keyword in self._unique:
            if keyword in row:
                elements[tag] = self._element(tag, vr, _value(keyword, row[keyword]))
        identifier = pydicom.Dataset(elements)
        if self._implicit is not None:
            identifier.set_original_encoding(self._implicit, True, _UTF8)
        return identifier


def response_identifier(
    row: Mapping[str, Any], asked: list[DataElement], level: str, retrieve_ae_title: str, model: str = "patient"
) -> pydicom.Dataset:
    """One match as a C-FIND response identifier."""
    return ResponseIdentifiers(asked, level, retrieve_ae_title, model)(row)


def _named_uid(keys: Mapping[str, Condition], keyword: str) -> str | None:
    condition = keys.get(keyword)
    return condition.values[0] if isinstance(condition, Uids) and len(condition.values) == 1 else None


def _query_text(asked: list[DataElement], level: str) -> dict[str, Any]:
    query: dict[str, Any] = {"QueryRetrieveLevel": level}
    for element in asked:
        values = [v for v in _raw_values(element) if v]
        if values and element.VR != "SQ":
            query[element.keyword] = values[0] if len(values) == 1 else values
    return query


def c_find_responses(
    store: QueryStore,
    recorder: AccessRecorder,
    reader: Reader,
    identifier: pydicom.Dataset,
    model: str,
    ae_title: str,
    transfer_syntax: str | None = None,
) -> Iterator[tuple[int, pydicom.Dataset | None]]:
    """Answer one C-FIND request: ``model`` is ``"patient"`` (Patient Root) or ``"study"``
    (Study Root); ``ae_title`` is the archive's own (the RetrieveAETitle of every match);
    ``transfer_syntax`` the presentation context's, which the responses are encoded in (see
    :class:`ResponseIdentifiers`). See the module documentation for the statuses."""
    if model not in MODEL_LEVELS:
        raise ValueError(f"unknown information model {model!r}")
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in MODEL_LEVELS[model]:
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
        return
    try:
        keys, asked = _keys(identifier, level)
        returned = {e.keyword for e in asked if e.keyword in ATTRIBUTES} | set(unique_keys(level, model))
        rows = find(store, level, keys, limit=MAX_MATCHES, returned=returned)
    except MatchingError:
        yield UNABLE_TO_PROCESS, None
        return
    access = recorder.begin(
        reader,
        action="query",
        channel="c-find",
        study_uid=_named_uid(keys, "StudyInstanceUID"),
        series_uid=_named_uid(keys, "SeriesInstanceUID"),
        patient_id=_single_patient(keys),
        query=_query_text(asked, level),
        results=len(rows),
    )
    identifiers = ResponseIdentifiers(asked, level, ae_title, model, transfer_syntax)
    # the first responses are built while the access event becomes durable; none leaves before it is
    ahead = [identifiers(row) for row in rows[:BUILT_AHEAD]]
    access.wait()
    for response in ahead:
        yield PENDING, response
    for row in rows[BUILT_AHEAD:]:
        yield PENDING, identifiers(row)


def _single_patient(keys: Mapping[str, Condition]) -> str | None:
    condition = keys.get("PatientID")
    if not isinstance(condition, Text) or condition.patterns or len(condition.exact) != 1:
        return None
    return condition.exact[0]
