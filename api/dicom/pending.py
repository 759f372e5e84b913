"""Pending C-FIND responses sent as one P-DATA-TF PDU each, their command set encoded once.

pynetdicom answers each match of a C-FIND with a whole DIMSE message: it builds a response
primitive, converts it to a message, encodes the command set (twice: once to learn its group
length) and sends the command and the identifier as two PDUs, each passed through its state
machine. The command set of every pending response of one request is the same (the message ID
it answers, the SOP class, the status), so here it is encoded once per request and status, and
each match goes out as ONE P-DATA-TF holding two PDVs: the command (last command fragment) and
the identifier (last data set fragment) — the layout PS3.8 9.3.5 and Annex E describe, which
dcmtk sends too. One message per PDU, never several: a receiver may stop reading a PDU's PDVs
at the end of the message it completes (pynetdicom's does).

Only what fits the peer's maximum PDU length in one PDU, on a non-deflated transfer syntax, is
sent here; anything else goes back to pynetdicom's own path (:meth:`PendingResponses.send`
returns False). The final response (Success, or a failure or cancel) is pynetdicom's, as ever.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

#: PDV header bytes (PS3.8 E.2): command, last fragment / data set, last fragment
LAST_COMMAND = b"\x03"
LAST_DATA_SET = b"\x02"
#: the pending statuses (PS3.4 C.4.1.1.4): matches continue; optional keys were not all supported
PENDING_CODES = frozenset({0xFF00, 0xFF01})
#: a PDV item's own bytes around its data: item length (4), presentation context ID (1), header (1)
PDV_OVERHEAD = 6


class PendingResponses:
    """The pending responses of one C-FIND request on one association (the reactor thread's)."""

    def __init__(self, event: Any) -> None:
        self._assoc = event.assoc
        self._request = event.request
        context_id, _abstract, syntax = event.context
        self._context_id = int(context_id)
        self._syntax = syntax
        self._commands: dict[int, bytes] = {}

    def _command(self, status: int) -> bytes:
        command = self._commands.get(status)
        if command is None:
            primitive = C_FIND()
            primitive.MessageIDBeingRespondedTo = self._request.MessageID
            primitive.AffectedSOPClassUID = self._request.AffectedSOPClassUID
            primitive.Status = status
            primitive.Identifier = BytesIO(b"\x00")  # an identifier follows (CommandDataSetType)
            message = C_FIND_RSP()
            message.primitive_to_message(primitive)
            command = encode(message.command_set, True, True)  # PS3.7 6.3.1: implicit VR little endian
            if not command:
                raise ValueError("the C-FIND response command set does not encode")
            self._commands[status] = command
        return command

    def send(self, status: int, identifier: Dataset) -> bool:
        """Send one pending response; False when it must take pynetdicom's path instead."""
        if self._syntax.is_deflated or not self._assoc.is_established:
            return False
        data = encode(identifier, self._syntax.is_implicit_VR, self._syntax.is_little_endian, False)
        if not data:
            return False  # pynetdicom answers 0xC312 for an identifier that does not encode
        command = self._command(status)
        limit = self._assoc.dimse.maximum_pdu_size
        if limit and 2 * PDV_OVERHEAD + len(command) + len(data) > limit:
            return False  # the PDU's two PDV items would exceed the peer's maximum length
        # pynetdicom checks for [ID, PDV] lists at run time (its annotation says tuples)
        values: Any = [[self._context_id, LAST_COMMAND + command], [self._context_id, LAST_DATA_SET + data]]
        pdu = P_DATA()
        pdu.presentation_data_value_list = values
        self._assoc.dul.send_pdu(pdu)
        return True
