"""The PROXY protocol header parser (versions 1 and 2) and the socket reader, on a socket pair."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ingest.proxy_protocol import (
    V2_SIGNATURE,
    ClosedBeforeHeader,
    ProxyHeaderError,
    parse_v1,
    parse_v2,
    read_header,
)


def v2(command: int, family: int, protocol: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, (family << 4) | protocol]) + struct.pack("!H", len(body)) + body


def tcp4(source: str, sport: int, destination: str = "10.0.0.5", dport: int = 11112, extra: bytes = b"") -> bytes:
    body = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
    return v2(0x1, 0x1, 0x1, body + struct.pack("!HH", sport, dport) + extra)


def test_v1_lines() -> None:
    assert parse_v1(b"PROXY TCP4 192.0.2.10 10.0.0.5 51234 11112\r\n") == ("192.0.2.10", 51234)
    assert parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 104\r\n") == ("2001:db8::7", 4000)
    assert parse_v1(b"PROXY UNKNOWN\r\n") is None
    assert parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.10 10.0.0.5 51234 11112\n",  # no CR
        b"PROXY TCP4 192.0.2.10 10.0.0.5 51234\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::7 10.0.0.5 1 2\r\n",  # an IPv6 address under TCP4
        b"PROXY TCP4 192.0.2.10 10.0.0.5 0 11112\r\n",  # port 0
        b"PROXY TCP4 192.0.2.10 10.0.0.5 70000 11112\r\n",
        b"PROXY TCP4 192.0.2.10 10.0.0.5 0051 11112\r\n",  # leading zeros
        b"PROXY UDP4 192.0.2.10 10.0.0.5 1 2\r\n",
        b"proxy TCP4 192.0.2.10 10.0.0.5 1 2\r\n",
        b"PROXY TCP4 192.0.2.\xff 10.0.0.5 1 2\r\n",
        b"PROXY TCP4 " + b"1" * 100 + b"\r\n",
    ],
)
def test_bad_v1_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_v2_headers() -> None:
    header = tcp4("192.0.2.10", 51234, extra=b"\x04\x00\x01\x00")  # a TLV after the addresses is skipped
    assert parse_v2(header[:16], header[16:]) == ("192.0.2.10", 51234)
    six = ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("2001:db8::1").packed
    header = v2(0x1, 0x2, 0x1, six + struct.pack("!HH", 4000, 104))
    assert parse_v2(header[:16], header[16:]) == ("2001:db8::7", 4000)
    local = v2(0x0, 0x0, 0x0, b"")  # the balancer's own connection check
    assert parse_v2(local[:16], local[16:]) is None
    unix = v2(0x1, 0x3, 0x1, b"\0" * 216)
    assert parse_v2(unix[:16], unix[16:]) is None


@pytest.mark.parametrize(
    "header",
    [
        tcp4("192.0.2.10", 1)[:-2],  # cut short: the length does not match
        V2_SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + b"\0" * 12,  # version 1 in a v2 header
        V2_SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + b"\0" * 12,  # command 2
        v2(0x1, 0x1, 0x1, b"\0" * 8),  # IPv4 addresses cut short
    ],
)
def test_bad_v2_headers_are_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v2(header[:16], header[16:])


@pytest.mark.parametrize(
    ("sent", "source"),
    [
        (b"PROXY TCP4 192.0.2.10 10.0.0.5 51234 11112\r\n", ("192.0.2.10", 51234)),
        (tcp4("198.51.100.4", 3000), ("198.51.100.4", 3000)),
    ],
)
def test_the_reader_takes_exactly_the_header(sent: bytes, source: tuple[str, int]) -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(sent + b"\x01\x00A-ASSOCIATE-RQ...")  # the DICOM request follows at once
        assert read_header(ours, 2.0) == source
        assert ours.recv(100) == b"\x01\x00A-ASSOCIATE-RQ..."


def test_the_reader_refuses_a_connection_without_a_header() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(b"\x01\x00\x00\x00\x00\xcd\x00\x01\x00\x00CAMI            ")  # a plain A-ASSOCIATE-RQ
        with pytest.raises(ProxyHeaderError, match="did not begin with a PROXY"):
            read_header(ours, 2.0)


def test_the_reader_gives_up_on_a_silent_or_closed_peer() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(b"PROXY TCP4 192.0")
        with pytest.raises(ProxyHeaderError, match="in time"):
            read_header(ours, 0.3)
    ours, peer = socket.socketpair()
    with ours:
        peer.close()
        with pytest.raises(ClosedBeforeHeader):
            read_header(ours, 2.0)
