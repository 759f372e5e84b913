"""What both ClickHouse backends share: query parameter checks, readable server messages and
the ClickHouse URL grammar. A leaf module, so the backends need not import their package."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from projections.warehouse.base import WarehouseError

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
