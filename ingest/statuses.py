"""DICOM status codes the archive answers with (PS3.4 Annex B / C), named so handlers never
carry bare hex. Failure codes in the 0xA7xx/0xA9xx/0xCxxx ranges are what C-STORE defines."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    #: stored, but an attribute was coerced or the object was already held (PS3.4 B.2.3)
    WARNING_COERCED = 0xB000
    #: blob store or event log not available: nothing was acknowledged, the sender may retry
    OUT_OF_RESOURCES = 0xA700
    #: required identifiers missing or invalid, or the object contradicts the request
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: the bytes are not a parseable DICOM data set (truncated, bad lengths, not DICOM)
    CANNOT_UNDERSTAND = 0xC000
    #: the object would change what the archive holds under its UIDs: another organisation's
    #: instance, or another patient or study than the held one. A failure in C-STORE's 0xCxxx
    #: range (PS3.4 B.2.3 leaves its codes to the SCP), not 0xA7xx, so senders do not retry it;
    #: its own code, not 0xC000, so their logs tell it from malformed bytes (409 as in HTTP)
    CONFLICTS_WITH_HELD = 0xC409
    #: the calling AE title may not use this service (a Q/R caller storing; PS3.7 C.5 general status)
    NOT_AUTHORISED = 0x0124
    #: the presentation context's SOP class is not one the archive stores
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: storage commitment / N-ACTION: processing failure
    PROCESSING_FAILURE = 0x0110
    #: N-ACTION with an action type the SOP class does not define
    NO_SUCH_ACTION = 0x0123
    #: N-ACTION / N-EVENT-REPORT arguments invalid
    INVALID_ARGUMENT_VALUE = 0x0115
