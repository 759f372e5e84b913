"""The one grammar of network addresses: ports, hosts, ``host:port`` and the address of a URL,
for every layer that reads one (the settings, the ``cami`` options, the agent's file).

Pure functions, no DNS: a value is checked by its form only, before anything is opened, so that
a typo is one clear line for the operator instead of an error deep in a socket library.

- A port is decimal digits 1-65535; 0 only where a listener may pick a free port (``free=True``).
- A host is an IPv4 literal (``10.1.2.3``), an IPv6 literal (``::1``; in ``host:port`` and
  URLs in brackets, ``[::1]:8042``) or a host name of RFC 1123 labels (letters, digits, inner
  hyphens, 1-63 characters each, at most 253 in all) whose last label is not all digits, so
  ``999.1.1.1`` is neither an address nor a name.

Each function raises :class:`AddressError` whose message says what was wrong and what is allowed;
the caller puts the setting's or the option's name in front.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

#: the largest TCP port
MAX_PORT = 65535
#: RFC 1035 2.3.4 / RFC 1123 2.1: the longest host name (without a trailing dot)
MAX_HOST_NAME = 253

#: what a host may be, in words (for messages and ``--help``)
HOST_RULE = "an IPv4 or IPv6 address or a host name (letters, digits, hyphens, dot-separated)"
#: the words that turn an optional listener off
OFF = ("off", "none", "")

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]+")
_SHOWN = 80  # the most of a bad value a message repeats


class AddressError(ValueError):
    """A port or an address that cannot be used (the message says what is allowed)."""


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def port_rule(*, free: bool = False, off: bool = False) -> str:
    """What a port may be, in words (for messages and ``--help``)."""
    words = [f"an integer 1-{MAX_PORT}", *(["0 for a free one"] if free else []), *(["off"] if off else [])]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])}, or {words[-1]}"


def parse_port(value: str | int, *, free: bool = False) -> int:
    """The port ``value`` names: decimal digits (a TOML integer too) from 1 to 65535, or 0 with
    ``free`` (a listener that picks a free port). No sign, no spaces inside, no other digits."""
    return _port(value, free=free, rule=port_rule(free=free))


def parse_port_or_off(value: str, *, free: bool = False) -> int | None:
    """As :func:`parse_port`, or None for ``off`` (also ``none`` or nothing): a listener closed."""
    if isinstance(value, str) and value.strip().lower() in OFF:
        return None
    return _port(value, free=free, rule=port_rule(free=free, off=True))


def _port(value: str | int, *, free: bool, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise AddressError(f"{value!r} is not a port: {rule}")
    text = str(value).strip()
    lowest = 0 if free else 1
    if not _DIGITS.fullmatch(text) or len(text) > len(str(MAX_PORT)) or not lowest <= int(text) <= MAX_PORT:
        raise AddressError(f"{_shown(str(value))} is not a port: {rule}")
    return int(text)


def is_ip_literal(value: str) -> bool:
    """True for an IPv4 address in dotted decimal or an IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_host_name(value: str) -> bool:
    """True for a host name of RFC 1123 labels (a trailing dot allowed), its last label not all
    digits (RFC 1123 2.1: a name never looks like a dotted-decimal address)."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > MAX_HOST_NAME or not name.isascii():
        return False
    labels = name.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def check_host(value: str) -> str:
    """``value`` (outer spaces removed) when it is an IP literal or a host name; else AddressError."""
    if not isinstance(value, str):
        raise AddressError(f"{value!r} is not a host: {HOST_RULE}")
    host = value.strip()
    if is_ip_literal(host) or is_host_name(host):
        return host
    raise AddressError(f"{_shown(value)} is not a host: {HOST_RULE}")


def parse_host_port(value: str, *, port_required: bool = True) -> tuple[str, int | None]:
    """``host:port`` -> (host, port); an IPv6 host in brackets (``[::1]:8042``). Without
    ``port_required`` the port may be left out (then None)."""
    return _host_port(value, value, port_required=port_required)


def url_address(url: str, *, schemes: tuple[str, ...] = ()) -> tuple[str, int | None]:
    """The host and port (None: the scheme's default) of ``scheme://[user[:password]@]host[:port]/...``;
    ``schemes``, when given, are the ones allowed. Messages never repeat the URL's credentials."""
    shown = _without_credentials(url.strip())
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # an unclosed [IPv6 bracket
        raise AddressError(f"{_shown(shown)} is not a URL: {exc}") from None
    if schemes and parts.scheme.lower() not in schemes:
        raise AddressError(f"{_shown(shown)}: the scheme must be {' or '.join(s + '://' for s in schemes)}")
    if not parts.netloc:
        raise AddressError(f"{_shown(shown)} names no host: scheme://host[:port]/...")
    return _host_port(parts.netloc.rpartition("@")[2], shown, port_required=False)


def _host_port(text: str, whole: str, *, port_required: bool) -> tuple[str, int | None]:
    """``host[:port]`` of ``whole`` (what messages show: a URL, or the value itself)."""
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ipv6(inside) or (rest and not rest.startswith(":")):
            raise AddressError(f"{_shown(whole)}: an IPv6 address goes in brackets, [::1]:8042")
        host, port_text = inside, (rest[1:] if rest else None)
    else:
        before, colon, after = text.rpartition(":")
        if colon and ":" in before:
            raise AddressError(f"{_shown(whole)}: an IPv6 address goes in brackets, [::1]:8042")
        host, port_text = (before, after) if colon else (text, None)
        try:
            host = check_host(host)
        except AddressError as exc:
            raise AddressError(f"{_shown(whole)}: {exc}") from None
    if port_text is None:
        if port_required:
            raise AddressError(f"{_shown(whole)} has no port: host:port, the port {port_rule()}")
        return host, None
    try:
        return host, parse_port(port_text)
    except AddressError as exc:
        raise AddressError(f"{_shown(whole)}: {exc}") from None


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        return f"{scheme}{sep}***@{authority.rpartition('@')[2]}{slash}{path}"
    return url
