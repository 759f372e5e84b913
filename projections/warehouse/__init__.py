"""The warehouse (ClickHouse, where read models live), opened from a URL.

    chdb:///abs/dir                      embedded ClickHouse on a data directory (the default)
    chdb://                              embedded ClickHouse in memory (gone at close)
    clickhouse://user:pass@host:8123/db  a ClickHouse server over HTTP (clickhouse-connect)
    clickhouses://user:pass@host:8443/db the same over TLS

One registry maps a scheme to its backend; backends are imported only when opened, so a
deployment that talks to a server never loads the embedded engine and vice versa.

This module also holds the two rules both backends share: parameters only ever travel as
``{name:Type}`` placeholders bound by ClickHouse (``check_parameters``), and an error carries the
ClickHouse exception text (``clickhouse_message``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from projections.warehouse.base import QueryResult, Warehouse, WarehouseError

__all__ = [
    "ClickHouseUrl",
    "QueryResult",
    "Warehouse",
    "WarehouseError",
    "chdb_path_from_url",
    "check_parameters",
    "clickhouse_message",
    "open_warehouse",
    "parse_clickhouse_url",
]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]+\}")
_VERSION_TRAILER = re.compile(r"\s*\(version\s+(?:[^()]|\([^()]*\))*\)\s*$")


def check_parameters(sql: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every parameter must be a ``{name:Type}`` placeholder of ``sql``; returns them as a dict.

    ClickHouse binds such placeholders itself, so values never become SQL text. clickhouse-connect
    would instead format parameters into the SQL client-side when a statement has no
    placeholder, so a parameter without one is refused rather than silently spliced.
    """
    if not parameters:
        return {}
    names = set(_PLACEHOLDER.findall(sql))
    missing = sorted(str(k) for k in parameters if k not in names)
    if missing:
        raise WarehouseError(
            f"parameters {missing} have no {{name:Type}} placeholder in the statement; "
            "values are only bound by ClickHouse, never spliced into SQL"
        )
    return dict(parameters)


def clickhouse_message(exc: BaseException) -> str:
    """The ClickHouse exception text (``Code: N. DB::Exception: ... (NAME)``) of an error."""
    text = str(exc)
    start = text.find("Code: ")
    if start >= 0:
        text = text[start:]
    if " (for url " in text:
        text = text[: text.rindex(" (for url ")]
    return _VERSION_TRAILER.sub("", text).strip() or type(exc).__name__


def chdb_path_from_url(url: str) -> str | None:
    """``chdb:///abs/dir`` -> ``/abs/dir``; ``chdb://`` -> None (in memory)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "chdb":
        raise ValueError(f"not a chdb:// URL: {url!r}")
    if rest == "//":
        return None
    if not rest.startswith("///") or rest == "///":
        raise ValueError(f"a chdb URL is chdb:///absolute/dir (3 slashes) or chdb:// (in memory), got {url!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"a chdb URL takes no ?query or #fragment: {url!r}")
    return os.path.normpath(unquote(rest[2:]))


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_COMPRESSIONS = frozenset({"lz4", "zstd", "gzip", "br"})
# URL options handed to clickhouse_connect.get_client, by kind.
_INT_OPTIONS = frozenset({"connect_timeout", "send_receive_timeout", "query_retries"})
_BOOL_OPTIONS = frozenset({"verify"})
_STR_OPTIONS = frozenset({"ca_cert", "client_cert", "client_cert_key", "client_name", "server_host_name"})


@dataclass(frozen=True)
class ClickHouseUrl:
    """A parsed ``clickhouse://`` / ``clickhouses://`` URL."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    database: str | None
    secure: bool
    compress: bool | str
    options: Mapping[str, Any]


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"clickhouse URL option {name} must be true or false, got {value!r}")


def parse_clickhouse_url(url: str) -> ClickHouseUrl:
    """Split ``clickhouse[s]://user:pass@host:port/db?options``; ValueError when malformed.

    Options: ``compress`` (true/false or lz4/zstd/gzip/br; default false), ``secure``,
    ``verify``, ``ca_cert``, ``client_cert``, ``client_cert_key``, ``server_host_name``,
    ``client_name``, ``connect_timeout``, ``send_receive_timeout``, ``query_retries``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("clickhouse", "clickhouses"):
        raise ValueError(f"not a clickhouse:// or clickhouses:// URL (scheme {parts.scheme!r})")
    if parts.fragment:
        raise ValueError("a clickhouse URL takes no #fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in clickhouse URL: {exc}") from exc
    if not parts.hostname:
        raise ValueError("a clickhouse URL needs a host, e.g. clickhouse://127.0.0.1:8123/default")
    database = parts.path.strip("/")
    if "/" in database:
        raise ValueError(f"the path of a clickhouse URL is one database name, got {parts.path!r}")
    secure = scheme == "clickhouses"
    compress: bool | str = False
    options: dict[str, Any] = {}
    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in seen:
            raise ValueError(f"clickhouse URL option {name!r} given twice")
        seen.add(name)
        if name == "compress":
            lowered = value.strip().lower()
            compress = lowered if lowered in _COMPRESSIONS else _bool(name, value)
        elif name == "secure":
            secure = _bool(name, value)
        elif name in _INT_OPTIONS:
            try:
                options[name] = int(value)
            except ValueError:
                raise ValueError(f"clickhouse URL option {name} must be an integer, got {value!r}") from None
        elif name in _BOOL_OPTIONS:
            options[name] = _bool(name, value)
        elif name in _STR_OPTIONS:
            options[name] = value
        else:
            known = ", ".join(sorted({"compress", "secure", *_INT_OPTIONS, *_BOOL_OPTIONS, *_STR_OPTIONS}))
            raise ValueError(f"unknown clickhouse URL option {name!r} (known: {known})")
    return ClickHouseUrl(
        host=parts.hostname,
        port=port if port is not None else (8443 if secure else 8123),
        username=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        database=unquote(database) or None,
        secure=secure,
        compress=compress,
        options=options,
    )


def _open_chdb(url: str) -> Warehouse:
    path = chdb_path_from_url(url)  # a malformed URL fails before the engine is loaded
    from projections.warehouse.chdb_backend import ChdbWarehouse

    return ChdbWarehouse(path)


def _open_clickhouse(url: str) -> Warehouse:
    parse_clickhouse_url(url)  # a malformed URL fails before the client library is loaded
    from projections.warehouse.http_backend import ClickHouseHttpWarehouse

    return ClickHouseHttpWarehouse(url)


BACKENDS: Mapping[str, Callable[[str], Warehouse]] = {
    "chdb": _open_chdb,
    "clickhouse": _open_clickhouse,
    "clickhouses": _open_clickhouse,
}


def open_warehouse(url: str) -> Warehouse:
    """Open the warehouse named by ``url`` (see the module docstring for the schemes)."""
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    opener = BACKENDS.get(scheme)
    if opener is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        shown = repr(scheme) if scheme else "missing"
        # The URL itself is not echoed: it may carry a password.
        raise ValueError(f"unknown warehouse URL scheme ({shown}); expected one of {known}")
    return opener(url)
