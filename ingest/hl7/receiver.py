"""One HL7 message in, one acknowledgement out: :class:`HL7Receiver` reads the header, decodes
the body in its declared character set, interprets it (:mod:`ingest.hl7.messages`), appends its
events -- durable -- and only then answers AA. A refused message is a ``MessageRejected`` event
(also durable) and an AE/AR with an ERR segment saying where and why. When the log cannot take
the events the answer is AE 207 and nothing is claimed: the MIS sends the message again.

Synchronous and thread-safe; the MLLP listener (:mod:`ingest.hl7.listener`) calls it from its
worker threads, a test may call it directly."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

import hl7

from ingest.hl7.messages import Context, Sender, check_header, interpret
from ingest.hl7.wire import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    SEGMENT_SEQUENCE_ERROR,
    Header,
    MessageRefused,
    acknowledgement,
    codec_of,
    decode,
    read_header,
    sha256,
)
from ingest.reports.rules import ReportState
from schemas.events import SYSTEM, Event, new_event
from schemas.payload import InvalidEvent
from streams.log import EventLog
from streams.publisher import publish, publish_many

log = logging.getLogger("cami.hl7")

#: the header an ACK is built on when the message had none that could be read
_NO_HEADER = Header("|", "^~\\&", ("MSH", "|", "^~\\&"))


@dataclass(frozen=True)
class Received:
    """What the receiver answered: the ACK's bytes, its code, and the events recorded."""

    ack: bytes
    ack_code: str
    events: tuple[Event, ...]


class HL7Receiver:
    def __init__(
        self,
        event_log: EventLog,
        *,
        organisation_of: Callable[[str], str | None] = lambda facility: None,
        study_of_accession: Callable[[str], str | None] = lambda accession: None,
        report_state: Callable[[str], ReportState | None] = lambda report_id: None,
        zone: tzinfo = UTC,
        default_charset: str = "utf-8",
        application: str = "CAMI",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.event_log = event_log
        self.organisation_of = organisation_of
        self.study_of_accession = study_of_accession
        self.report_state = report_state
        self.zone = zone
        self.default_charset = default_charset
        self.application = application
        self.clock = clock
        # results change reports: one at a time, so each sees the state the last one left
        self._results = threading.Lock()

    def receive(self, block: bytes, peer_address: str | None = None) -> Received:
        now = self.clock()
        header = _NO_HEADER
        codec = "ascii"
        try:
            header = read_header(block)
            codec = codec_of(header, self.default_charset) if header.charset else self.default_charset
            check_header(header)
            text = decode(block, header, self.default_charset)
            try:
                message = hl7.parse(text)
            except Exception as exc:  # the library raises several kinds for a broken tree
                raise MessageRefused(
                    "AR", SEGMENT_SEQUENCE_ERROR, "malformed", f"not an HL7 v2 message: {exc}"
                ) from None
            sender = self._sender(header, peer_address)
            context = Context(sender, now, self.zone, self.study_of_accession, self.report_state)
            if header.component(9, 1) == "ORU":
                with self._results:
                    events = self._interpret(message, header, context)
                    publish_many(self.event_log, events)
            else:
                events = self._interpret(message, header, context)
                publish_many(self.event_log, events)  # durable before the ACK says so
        except MessageRefused as refusal:
            return self._refuse(block, header, codec, refusal, peer_address, now)
        except Exception:
            log.exception("HL7 message %s from %s not recorded", header.control_id or "?", peer_address or "?")
            return self._not_recorded(header, codec, now)
        return Received(self._ack(header, codec, "AA", now), "AA", tuple(events))

    def _not_recorded(self, header: Header, codec: str, now: datetime) -> Received:
        """AE 207: the log could not take the events; nothing is claimed, the MIS sends again."""
        failure = MessageRefused(
            "AE",
            APPLICATION_INTERNAL_ERROR,
            "not-recorded",
            "the archive could not record the message now: send it again",
        )
        return Received(self._ack(header, codec, "AE", now, failure), "AE", ())

    def unframed(self, peer_address: str | None = None) -> Received:
        """The answer to bytes that were not an MLLP block (<VT> message <FS><CR>)."""
        refusal = MessageRefused(
            "AR", SEGMENT_SEQUENCE_ERROR, "unframed", "bytes outside an MLLP block (<VT> message <FS><CR>)"
        )
        return self._refuse(b"", _NO_HEADER, "ascii", refusal, peer_address, self.clock())

    def too_large(self, peer_address: str | None, limit: int) -> Received:
        """The answer to a message over the listener's size limit (the connection closes after it)."""
        refusal = MessageRefused("AR", SEGMENT_SEQUENCE_ERROR, "too-large", f"the message is larger than {limit} bytes")
        return self._refuse(b"", _NO_HEADER, "ascii", refusal, peer_address, self.clock())

    def _interpret(self, message: hl7.Message, header: Header, context: Context) -> list[Event]:
        try:
            return interpret(message, header, context)
        except InvalidEvent as exc:  # a value the event schema refuses: the message's fault
            raise MessageRefused("AE", DATA_TYPE_ERROR, "invalid-value", str(exc)) from None

    def _sender(self, header: Header, peer_address: str | None) -> Sender:
        application, facility = header.component(3), header.component(4)
        return Sender(application, facility, self.organisation_of(facility) if facility else None, peer_address)

    def _refuse(
        self,
        block: bytes,
        header: Header,
        codec: str,
        refusal: MessageRefused,
        peer_address: str | None,
        now: datetime,
    ) -> Received:
        sender = self._sender(header, peer_address)
        payload = {
            "reason": refusal.reason,
            "ack_code": refusal.ack_code,
            "error_code": refusal.error_code,
            "error_text": refusal.text,
            "error_location": refusal.location,
            "message_type": header.message_type or None,
            "control_id": header.control_id or None,
            "hl7_version": header.version or None,
            "sending_application": sender.application or None,
            "sending_facility": sender.facility or None,
            "PatientID": _patient_id_of(block),
            "received_bytes": len(block),
            "received_sha256": sha256(block),
            "peer_address": peer_address,
        }
        aggregate = sender.name if header is not _NO_HEADER else f"hl7:{peer_address or 'unknown'}"
        rejected = new_event(
            "MessageRejected",
            payload,
            aggregate_id=aggregate,
            source_node=f"hl7:{sender.name}",
            organisation=sender.organisation,
            actor=SYSTEM,
            occurred_at=now,
        )
        log.info(
            "HL7 %s from %s refused (%s %s): %s",
            header.message_type or "message",
            peer_address or "?",
            refusal.ack_code,
            refusal.reason,
            refusal.text,
        )
        try:
            publish(self.event_log, rejected)
        except Exception:
            log.exception("the rejection of HL7 message %s was not recorded", header.control_id or "?")
            return self._not_recorded(header, codec, now)
        return Received(self._ack(header, codec, refusal.ack_code, now, refusal), refusal.ack_code, (rejected,))

    def _ack(self, header: Header, codec: str, code: str, now: datetime, error: MessageRefused | None = None) -> bytes:
        text = acknowledgement(
            header, code, control_id=uuid.uuid4().hex[:20], now=now, application=self.application, error=error
        )
        return text.encode(codec, errors="replace")


def _patient_id_of(block: bytes) -> str | None:
    """PID-3's first ID from the raw bytes, for the rejection event (best effort, never raises)."""
    for line in block.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"PID") and len(line) > 3:
            fields = line.split(line[3:4])
            if len(fields) > 3:
                identifier = fields[3].split(b"~")[0].split(b"^")[0].decode("utf-8", errors="replace").strip()
                return identifier[:64] or None
    return None
