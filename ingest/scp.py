"""The archive's DICOM Storage SCP: wiring only (handlers live in ``ingest.handlers``).

Accepts C-ECHO, C-STORE for every standard storage SOP class in every transfer syntax
pynetdicom knows (compressed ones included: objects are kept as received, never transcoded),
Storage Commitment (push model) when a commitment service is given, and Modality Performed
Procedure Step (``ingest.mpps``) when a procedure-step service is given. Of the syntaxes a peer
proposes in one context, its first choice the archive supports is accepted
(:func:`follow_proposed_order`).

Other services answer on the same AE title and port (as Orthanc and dcm4chee do) through
:class:`ExtraServices`: presentation contexts and event handlers the composition root passes in
(``api.dicom.qr`` builds Query/Retrieve this way; ingest imports nothing from the api).

With an ``ssl_context`` the same AE also listens on a second, TLS port (as DICOM's 2762 beside
104): every service answers on both; a ``[[sender]]``/``[[qr_caller]]`` with a TLS rule
(``ingest.senders``) is accepted only over TLS with the client certificate it names.

**Connections that say nothing.** A connection must begin its A-ASSOCIATE-RQ within
``CAMI_DICOM_REQUEST_TIMEOUT`` seconds (default 5) or it is closed; until its first bytes arrive
it waits outside pynetdicom and holds none of the ``CAMI_DICOM_MAX_ASSOCIATIONS`` (default 32)
association slots, so idle or half-open sockets cannot lock out a modality. At most
``MAX_SILENT_CONNECTIONS`` wait at once; beyond that the longest-waiting one is closed first (a
real peer sends its request within milliseconds of connecting, so it is never the oldest). A
request begun but not finished within the same time is closed too (it then holds a slot for at
most those few seconds).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from ingest import netio, proxy_protocol
from ingest.ae_titles import ae_title, called_ae_title
from ingest.handlers import (
    handle_echo,
    handle_established,
    handle_rejected,
    handle_store,
    record_association_rejected,
)
from ingest.pipeline import Ingestor
from ingest.senders import Senders
from ingest.tls import peer_transport
from streams import EventLog

netio.install()  # pynetdicom must survive descriptor numbers above 1023 (see ingest/netio.py)

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"

#: bigger PDUs mean fewer round trips for large objects; peers may still send smaller ones
MAX_PDU = 256 * 1024
#: seconds a peer on the TLS port has to complete its handshake
TLS_HANDSHAKE_TIMEOUT = 10.0
#: seconds a new connection has to begin its A-ASSOCIATE-RQ (and then to complete it)
DEFAULT_REQUEST_TIMEOUT = 5.0
#: associations at once (connections that have not yet spoken are not counted)
DEFAULT_MAX_ASSOCIATIONS = 32
#: connections waiting for their first bytes at once; more close the longest-waiting one
MAX_SILENT_CONNECTIONS = 256


log = logging.getLogger("cami.scp")


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
        port: int | None = 11112,
        commitment: Any | None = None,
        procedure_steps: Any | None = None,
        extra: Sequence[ExtraServices] = (),
        tls_port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
        proxy_from: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.plain = port is not None  # False: TLS only
        self.port = port or 0
        # None: no such listener; 0 picks a free port (``start()`` then sets the one it got)
        self.tls_port = tls_port if ssl_context is not None else None
        self.ssl_context = ssl_context
        self.event_log = event_log
        self.request_timeout = request_timeout
        #: load balancers whose connections begin with a PROXY protocol header naming the real peer
        self.proxy_from = frozenset(proxy_from)
        self.ae = AE(ae_title=senders.ae_title)
        self.ae.maximum_pdu_size = MAX_PDU
        self.ae.require_called_aet = False  # checked in handle_established (the emergency AE title too)
        # unknown callers get A-ASSOCIATE-RJ "calling AE title not recognised" (unless in pilot mode)
        self.ae.require_calling_aet = [] if senders.accept_unknown else senders.known_ae_titles
        # counts associations only: a connection that has not spoken yet holds no slot (see
        # _NoDelayServer.process_request_thread), and an unknown AE title is rejected at once, so
        # the slots go to known callers without reserving any for them by name
        self.ae.maximum_associations = max_associations
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
            (evt.EVT_ESTABLISHED, handle_transport, [senders, event_log]),  # TLS rules, after the above
        ]
        if commitment is not None:
            from ingest.commitment import handle_n_action

            self.ae.add_supported_context(STORAGE_COMMITMENT_PUSH)
            self.handlers.append((evt.EVT_N_ACTION, handle_n_action, [commitment]))
        if procedure_steps is not None:  # MPPS: what a modality reports it performed
            from ingest.mpps import MPPS_SOP_CLASS, handle_n_create, handle_n_set

            self.ae.add_supported_context(MPPS_SOP_CLASS)
            self.handlers.append((evt.EVT_N_CREATE, handle_n_create, [procedure_steps]))
            self.handlers.append((evt.EVT_N_SET, handle_n_set, [procedure_steps]))
        for services in extra:
            for abstract_syntax, transfer_syntaxes in services.contexts:
                self.ae.add_supported_context(abstract_syntax, list(transfer_syntaxes))
            self.handlers.extend(services.handlers)
        self._server: Any = None
        self._tls_server: _TlsServer | None = None
        self._tls_thread: threading.Thread | None = None

    def start(self) -> None:
        self._start_tls()
        if not self.plain:
            return
        server = self._make_server()
        threading.Thread(target=server.serve_forever, name="cami-dicom", daemon=True).start()
        self._server = server
        self.port = server.server_address[1]

    def serve_forever(self) -> None:
        self._start_tls()
        if not self.plain:  # TLS only: until stop()
            if self._tls_thread is not None:
                self._tls_thread.join()
            return
        server = self._make_server()
        self._server = server
        server.serve_forever()

    def _start_tls(self) -> None:
        if self.ssl_context is None or self.tls_port is None:
            return
        # the context is not handed to pynetdicom: it would do the handshake in the accepting
        # thread, where one silent peer holds up every other connection (see _TlsServer)
        server = self.ae.make_server(
            (self.host, self.tls_port),
            evt_handlers=self.handlers,
            server_class=_TlsServer,
            request_timeout=self.request_timeout,
        )
        self.ae._servers.append(server)
        tls_server = cast(_TlsServer, server)
        tls_server.tls_context = self.ssl_context
        tls_server.event_log = self.event_log
        tls_server.proxy_from = self.proxy_from
        self._tls_thread = threading.Thread(target=tls_server.serve_forever, name="cami-dicom-tls", daemon=True)
        self._tls_thread.start()
        self._tls_server = tls_server
        self.tls_port = tls_server.server_address[1]

    def _make_server(self) -> _NoDelayServer:
        # what AE.start_server does, with our server class (it only takes one when blocking);
        # registered with the AE like its own servers, which is where shutdown() looks for it
        server = self.ae.make_server(
            (self.host, self.port),
            evt_handlers=self.handlers,
            server_class=_NoDelayServer,
            request_timeout=self.request_timeout,
        )
        self.ae._servers.append(server)
        plain = cast(_NoDelayServer, server)
        plain.event_log = self.event_log
        plain.proxy_from = self.proxy_from
        return plain

    def stop(self) -> None:
        if self._tls_server is not None:
            self._tls_server.shutdown()
            self._tls_server = None
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
    hold each exchange about 40 ms (dcmtk's own tools stall the same way without TCP_NODELAY=1)."""

    #: where rejections are recorded (set by StorageSCP)
    event_log: EventLog | None = None
    #: balancers whose connections begin with a PROXY protocol header (:mod:`ingest.proxy_protocol`)
    proxy_from: frozenset[str] = frozenset()

    def __init__(self, *args: Any, request_timeout: float = DEFAULT_REQUEST_TIMEOUT, **kwargs: Any) -> None:
        self.request_timeout = request_timeout
        #: connections waiting for their first bytes, oldest first; True once closed to make room
        self._silent: dict[socket.socket, bool] = {}
        self._silent_lock = threading.Lock()
        kwargs.setdefault("request_handler", _RequestHandler)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # pynetdicom makes every connection an Association at once, and pynetdicom's
        # maximum_associations counts it while it waits (acse_timeout, 30 s) for a request that
        # may never come: 32 idle sockets refused every modality. Here, in the connection's own
        # thread, nothing is created until the peer's first bytes arrive.
        if not self._request_begins(request):
            self.shutdown_request(request)
            return
        if not isinstance(request, ssl.SSLSocket):  # the TLS port read it before its handshake
            client_address = self._proxied(request, client_address)
            if client_address is None:
                return
        super().process_request_thread(request, client_address)

    def _proxied(self, request: socket.socket, client_address: Any) -> Any:
        """The connection's real peer: from a balancer in ``proxy_from``, the one its PROXY header
        names (the balancer's own address for its health checks); from anyone else, the peer
        itself. None (the connection closed, a rejection recorded) for a balancer's connection
        without a valid header."""
        if client_address[0] not in self.proxy_from:
            return client_address
        try:
            source = proxy_protocol.read_header(request, self.request_timeout)
        except proxy_protocol.ClosedBeforeHeader:  # the balancer's plain connection check
            self.shutdown_request(request)
            return None
        except (proxy_protocol.ProxyHeaderError, OSError) as exc:
            address, port = client_address[0], client_address[1]
            log.warning("connection from the balancer %s:%s refused: %s", address, port, exc)
            if self.event_log is not None:
                record_association_rejected(self.event_log, "proxy-header-invalid", "", None, address, port)
            self.shutdown_request(request)
            return None
        return client_address if source is None else source

    def _request_begins(self, client: socket.socket) -> bool:
        """Whether the peer sends something within ``request_timeout`` (and was not closed to
        make room for newer connections meanwhile)."""
        with self._silent_lock:
            self._silent[client] = False
            waiting = [c for c, evicted in self._silent.items() if not evicted]
            oldest = waiting[: max(0, len(waiting) - MAX_SILENT_CONNECTIONS)]
            for old in oldest:
                self._silent[old] = True
        for old in oldest:
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)  # wakes its thread, which closes it
        try:
            if isinstance(client, ssl.SSLSocket) and client.pending():
                return True
            poller = select.poll()  # not select(): descriptors may be numbered above 1023
            poller.register(client, select.POLLIN | select.POLLPRI)
            arrived = bool(poller.poll(self.request_timeout * 1000))
        finally:
            with self._silent_lock:
                evicted = self._silent.pop(client, True)
        if arrived and not evicted:
            # a request begun and left unfinished must not hold pynetdicom's reader (and a slot)
            # for ever: reads time out until the whole A-ASSOCIATE-RQ is in (_request_received)
            client.settimeout(self.request_timeout)
            return True
        return False


class _RequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # the request has begun to arrive: the rest of it gets the same few seconds, not the AE's
        # acse_timeout (which C-MOVE's outgoing associations keep); also the ARTIM timer
        assoc.acse_timeout = cast(_NoDelayServer, self.server).request_timeout
        assoc.bind(evt.EVT_REQUESTED, _request_received)
        return assoc


def _request_received(event: Any) -> None:
    """The A-ASSOCIATE-RQ is in: from here reads wait as long as the association lives (a
    sender may pause between objects; pynetdicom's own timeouts apply)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.settimeout(None)


class _TlsServer(_NoDelayServer):
    """The TLS port: the handshake runs in the association's own thread and is bounded by
    TLS_HANDSHAKE_TIMEOUT; a failed one (no TLS, an untrusted or missing client certificate) is
    logged and recorded as an ``AssociationRejected`` event, and the listener carries on."""

    tls_context: ssl.SSLContext
    event_log: EventLog

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # the PROXY header, when a balancer sends one, comes before the TLS handshake; the socket
        # is wrapped here, in the connection's own thread, not in the accepting one
        if client_address[0] in self.proxy_from:
            if not self._request_begins(request):
                self.shutdown_request(request)
                return
            client_address = self._proxied(request, client_address)
            if client_address is None:
                return
        request = self.tls_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        before = request.gettimeout()
        try:
            request.settimeout(TLS_HANDSHAKE_TIMEOUT)
            request.do_handshake()
            request.settimeout(before)
        except (OSError, ValueError) as exc:  # ssl.SSLError, a timeout, a reset
            address, port = client_address[0], client_address[1]
            log.warning("TLS handshake with %s:%s failed: %s", address, port, exc)
            record_association_rejected(self.event_log, "tls-handshake-failed", "", None, address, port)
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def handle_transport(event: Any, senders: Senders, event_log: EventLog) -> None:
    """Refuse a caller whose ``[[sender]]``/``[[qr_caller]]`` entries demand TLS or a certain
    client certificate that this association does not have."""
    assoc = event.assoc
    if getattr(assoc, "_sent_abort", False):  # handle_established refused it already: one event is enough
        return
    calling = ae_title(assoc.requestor.ae_title)
    allowed, reason = senders.transport_allowed(calling, peer_transport(assoc.dul.socket.socket))
    if not allowed:
        address, port = assoc.requestor.address, assoc.requestor.port
        log.warning("refusing association from %s@%s: %s", calling, address, reason)
        record_association_rejected(event_log, reason, calling, called_ae_title(assoc) or None, address, port)
        assoc.abort()
