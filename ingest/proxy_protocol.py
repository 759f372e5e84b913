"""The PROXY protocol header (versions 1 and 2, as haproxy's ``send-proxy``/``send-proxy-v2`` write
it): a TCP load balancer in front of several ingest nodes tells each node where a connection
really comes from, so the senders file's ``addresses`` rules and the ``AssociationRejected`` /
``InstanceReceived`` events name the modality, not the balancer.

Only connections from the balancers named in ``CAMI_DICOM_PROXY_FROM`` are read this way, and
from them a header is required: anyone else could otherwise claim any address. The header comes
before anything else on the connection (before the TLS handshake on the TLS port).

Version 1 is one text line, at most 107 bytes with its CRLF::

    PROXY TCP4 192.0.2.10 10.0.0.5 51234 11112\\r\\n
    PROXY UNKNOWN\\r\\n

Version 2 is a 16-byte binary header (a 12-byte signature, version and command, address family
and protocol, the length of what follows) and the addresses; a ``LOCAL`` command (the balancer's
own health check) keeps the connection's own address.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

#: the 12 bytes a version 2 header starts with
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: the longest version 1 line, CRLF included
V1_MAX = 107
#: the most a version 2 header may carry after its 16 bytes (its length field is 16 bits)
V2_MAX_BODY = 0xFFFF

Source = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The connection did not begin with a valid PROXY protocol header."""


class ClosedBeforeHeader(ProxyHeaderError):
    """The connection closed before sending anything (a balancer's plain connection check)."""


def parse_v1(line: bytes) -> Source | None:
    """A version 1 line (with its CRLF) -> the source (address, port); None for ``UNKNOWN``."""
    if not line.endswith(b"\r\n") or len(line) > V1_MAX:
        raise ProxyHeaderError("a PROXY v1 line must end with CRLF within 107 bytes")
    try:
        fields = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("a PROXY v1 line must be ASCII") from None
    if fields[0] != "PROXY" or len(fields) < 2:
        raise ProxyHeaderError("not a PROXY v1 line")
    if fields[1] == "UNKNOWN":
        return None
    if fields[1] not in ("TCP4", "TCP6") or len(fields) != 6:
        raise ProxyHeaderError(f"PROXY v1: unknown protocol or wrong number of fields: {' '.join(fields[:2])!r}")
    family = ipaddress.IPv4Address if fields[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source = family(fields[2])
        family(fields[3])
        source_port, destination_port = int(fields[4]), int(fields[5])
    except ValueError:
        raise ProxyHeaderError("PROXY v1: an address or port is not valid") from None
    if not (0 < source_port <= 0xFFFF and 0 < destination_port <= 0xFFFF) or fields[4] != str(source_port):
        raise ProxyHeaderError("PROXY v1: a port is out of range")
    return str(source), source_port


def v2_body_length(header: bytes) -> int:
    """How many bytes follow the 16-byte version 2 header."""
    if len(header) != 16 or not header.startswith(V2_SIGNATURE):
        raise ProxyHeaderError("not a PROXY v2 header")
    if header[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2: version {header[12] >> 4} is not 2")
    return int(struct.unpack("!H", header[14:16])[0])


def parse_v2(header: bytes, body: bytes) -> Source | None:
    """A version 2 header and what follows it -> the source; None for ``LOCAL`` (the balancer's
    own connection, e.g. a health check) and for families other than TCP over IPv4/IPv6."""
    if len(body) != v2_body_length(header):
        raise ProxyHeaderError("PROXY v2: the header's length does not match")
    command = header[12] & 0x0F
    if command == 0x0:  # LOCAL
        return None
    if command != 0x1:
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    family, protocol = header[13] >> 4, header[13] & 0x0F
    if protocol != 0x1:  # not STREAM (TCP): nothing a DICOM listener can use
        return None
    if family == 0x1:  # AF_INET: 4 + 4 + 2 + 2 bytes
        if len(body) < 12:
            raise ProxyHeaderError("PROXY v2: the IPv4 addresses are cut short")
        return str(ipaddress.IPv4Address(body[0:4])), int(struct.unpack("!H", body[8:10])[0])
    if family == 0x2:  # AF_INET6: 16 + 16 + 2 + 2 bytes
        if len(body) < 36:
            raise ProxyHeaderError("PROXY v2: the IPv6 addresses are cut short")
        return str(ipaddress.IPv6Address(body[0:16])), int(struct.unpack("!H", body[32:34])[0])
    return None  # AF_UNSPEC, AF_UNIX: keep the connection's own address


def read_header(client: socket.socket, timeout: float) -> Source | None:
    """Read the PROXY header at the start of ``client`` (exactly its bytes, nothing of what follows)
    within ``timeout`` seconds; the source it names, or None when it names none (``LOCAL``,
    ``UNKNOWN``). :class:`ProxyHeaderError` when there is none or it is not valid."""
    deadline = time.monotonic() + timeout
    before = client.gettimeout()
    try:
        start = _read(client, 12, deadline)
        if start == V2_SIGNATURE:
            header = start + _read(client, 4, deadline)
            return parse_v2(header, _read(client, v2_body_length(header), deadline))
        if not start.startswith(b"PROXY "):
            raise ProxyHeaderError("the connection did not begin with a PROXY protocol header")
        line = start
        while not line.endswith(b"\r\n"):  # byte by byte: what follows the line is the peer's
            if len(line) >= V1_MAX:
                raise ProxyHeaderError("a PROXY v1 line must end with CRLF within 107 bytes")
            line += _read(client, 1, deadline)
        return parse_v1(line)
    finally:
        client.settimeout(before)


def _read(client: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProxyHeaderError("the PROXY protocol header did not arrive in time")
        client.settimeout(left)
        try:
            chunk = client.recv(count - len(data))
        except TimeoutError:
            raise ProxyHeaderError("the PROXY protocol header did not arrive in time") from None
        if not chunk:
            if not data and count == 12:  # nothing at all was sent
                raise ClosedBeforeHeader("the connection closed before sending anything")
            raise ProxyHeaderError("the connection closed within the PROXY protocol header")
        data += chunk
    return data
