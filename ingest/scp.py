"""The archive's DICOM Storage SCP: wiring only (handlers live in ``ingest.handlers``).

Accepts C-ECHO, C-STORE for every standard storage SOP class in every transfer syntax
pynetdicom knows (compressed ones included: objects are kept as received, never transcoded),
and Storage Commitment (push model) when a commitment service is given. Of the syntaxes a peer
proposes in one context, its first choice the archive supports is accepted
(:func:`follow_proposed_order`).

Other services answer on the same AE title and port (as Orthanc and dcm4chee do) through
:class:`ExtraServices`: presentation contexts and event handlers the composition root passes in
(``api.qr_scp`` builds Query/Retrieve this way; ingest imports nothing from the api).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from ingest import netio
from ingest.handlers import handle_echo, handle_established, handle_rejected, handle_store
from ingest.pipeline import Ingestor
from ingest.senders import Senders
from streams import EventLog

netio.install()  # pynetdicom must survive descriptor numbers above 1023 (see ingest/netio.py)

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

#: bigger PDUs mean fewer round trips for large objects; peers may still send smaller ones
MAX_PDU = 256 * 1024


@dataclass(frozen=True)
class ExtraServices:
    """More services on the Storage SCP's AE: ``contexts`` are (abstract syntax, transfer
    syntaxes) to accept; ``handlers`` are pynetdicom ``(event, handler[, args])`` bindings,
    added after the storage ones (notification events may have several handlers, intervention
    events one); ``storage_roles`` accepts SCP/SCU role selection on the storage contexts, so
    the archive can act as the storage SCU on a peer's association (C-GET sub-operations)."""

    contexts: Sequence[tuple[str, Sequence[str]]] = ()
    handlers: Sequence[Any] = ()
    storage_roles: bool = False


class StorageSCP:
    def __init__(
        self,
        ingestor: Ingestor,
        senders: Senders,
        event_log: EventLog,
        *,
        host: str = "127.0.0.1",
        port: int = 11112,
        commitment: Any | None = None,
        extra: Sequence[ExtraServices] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.ae = AE(ae_title=senders.ae_title)
        self.ae.maximum_pdu_size = MAX_PDU
        self.ae.require_called_aet = False  # checked in handle_established (the emergency AE title too)
        # unknown callers get A-ASSOCIATE-RJ "calling AE title not recognised" (unless in pilot mode)
        self.ae.require_calling_aet = [] if senders.accept_unknown else senders.known_ae_titles
        self.ae.maximum_associations = 32
        self.ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
        syntaxes, roles = list(ALL_TRANSFER_SYNTAXES), {}
        if any(e.storage_roles for e in extra):
            roles = {"scu_role": True, "scp_role": True}
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, syntaxes, **roles)
        self.handlers: list[Any] = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [ingestor, senders]),
            (evt.EVT_ESTABLISHED, handle_established, [senders, event_log]),
            (evt.EVT_REJECTED, handle_rejected, [senders, event_log]),
            (evt.EVT_REQUESTED, follow_proposed_order),
        ]
        if commitment is not None:
            from ingest.commitment import handle_n_action

            self.ae.add_supported_context(STORAGE_COMMITMENT_PUSH)
            self.handlers.append((evt.EVT_N_ACTION, handle_n_action, [commitment]))
        for services in extra:
            for abstract_syntax, transfer_syntaxes in services.contexts:
                self.ae.add_supported_context(abstract_syntax, list(transfer_syntaxes))
            self.handlers.extend(services.handlers)
        self._server: Any = None

    def start(self) -> None:
        server = self._make_server()
        threading.Thread(target=server.serve_forever, name="cami-dicom", daemon=True).start()
        self._server = server
        self.port = server.server_address[1]

    def serve_forever(self) -> None:
        server = self._make_server()
        self._server = server
        server.serve_forever()

    def _make_server(self) -> _NoDelayServer:
        # what AE.start_server does, with our server class (it only takes one when blocking);
        # registered with the AE like its own servers, which is where shutdown() looks for it
        server = self.ae.make_server((self.host, self.port), evt_handlers=self.handlers, server_class=_NoDelayServer)
        self.ae._servers.append(server)
        return cast(_NoDelayServer, server)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def follow_proposed_order(event: Any) -> None:
    """Among the transfer syntaxes of a proposed context, accept the peer's first choice that the
    archive supports. pynetdicom goes by the acceptor's order, which would override the peer: a
    retrieving peer (C-GET) proposing an object's stored syntax first would get another one, in
    which a compressed object cannot be sent at all. Runs on A-ASSOCIATE-RQ, before negotiation,
    on the association's own copy of the supported contexts."""
    assoc = event.assoc
    preferred: dict[str, list[str]] = {}
    for proposed in assoc.requestor.requested_contexts:  # the first context of an abstract syntax rules
        preferred.setdefault(str(proposed.abstract_syntax), [str(ts) for ts in proposed.transfer_syntax])
    for context in assoc.acceptor.supported_contexts:
        order = preferred.get(str(context.abstract_syntax))
        if order and len(context.transfer_syntax) > 1:
            supported = [str(ts) for ts in context.transfer_syntax]
            first = [ts for ts in dict.fromkeys(order) if ts in supported]
            context.transfer_syntax = first + [ts for ts in supported if ts not in first]


class _NoDelayServer(ThreadedAssociationServer):
    """Our answers are often small PDUs in a row (C-FIND matches, N-EVENT-REPORTs, C-STORE
    sub-operations of a C-GET): without TCP_NODELAY, Nagle's algorithm and the peer's delayed ACK
    hold each exchange about 40 ms (DESIGN.md, 5 measured the same stall in dcmtk's tools)."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address
