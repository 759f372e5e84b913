"""Content-addressed blob store: one interface, a local-directory and an S3 backend.

Backends are chosen by URL (see :func:`open_blob_store`)::

    file:///var/lib/cami/blobs
    s3://cami-blobs/archive?endpoint=http://127.0.0.1:9000&region=us-east-1

S3 credentials come from the environment, never from the URL: ``CAMI_S3_ACCESS_KEY`` /
``CAMI_S3_SECRET_KEY`` when set, else boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, shared config files, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from streams.blobs.base import (
    CHUNK_SIZE,
    BlobIntegrityError,
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobStoreError,
    BlobUnavailable,
    InvalidBlobId,
    check_blob_id,
    sha256_hex,
)

#: the environment variables a blob store URL is completed with (read by the archive's settings)
ENVIRONMENT = ("CAMI_S3_ACCESS_KEY", "CAMI_S3_SECRET_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")

__all__ = [
    "CHUNK_SIZE",
    "ENVIRONMENT",
    "BlobIntegrityError",
    "BlobNotFound",
    "BlobRef",
    "BlobStore",
    "BlobStoreError",
    "BlobStoreSpec",
    "BlobUnavailable",
    "InvalidBlobId",
    "check_blob_id",
    "open_blob_store",
    "parse_blob_url",
    "sha256_hex",
]

# Query parameters of s3:// URLs -> S3BlobStore keyword and type.
_S3_PARAMS: dict[str, tuple[str, type]] = {
    "endpoint": ("endpoint_url", str),
    "region": ("region", str),
    "connect_timeout": ("connect_timeout", float),
    "read_timeout": ("read_timeout", float),
    "max_attempts": ("max_attempts", int),
}


@dataclass(frozen=True)
class BlobStoreSpec:
    """What a blob store URL asks for: backend ``scheme`` and constructor keywords (no secrets)."""

    scheme: str
    options: dict[str, Any] = field(default_factory=dict)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password or parts.username:
        return url.replace(parts.netloc, parts.hostname or "", 1)
    return url


def _parse_file(url: str) -> BlobStoreSpec:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file blob store URL must be file:///absolute/path, got host {parts.netloc!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"file blob store URL takes no query or fragment: {url!r}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"file blob store URL needs an absolute path: {url!r}")
    if "\x00" in path:
        raise ValueError("file blob store path contains a NUL byte")
    return BlobStoreSpec("file", {"root": Path(path)})


def _parse_s3(url: str, env: Mapping[str, str]) -> BlobStoreSpec:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"credentials do not belong in the blob store URL ({_redact(url)}); "
            "set CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if parts.fragment:
        raise ValueError(f"s3 blob store URL takes no fragment: {url!r}")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"s3 blob store URL needs a bucket: s3://BUCKET[/prefix], got {url!r}")
    prefix = unquote(parts.path).strip("/")
    if any(segment in (".", "..") for segment in prefix.split("/")) or "//" in prefix:
        raise ValueError(f"s3 blob store prefix must be plain path segments: {prefix!r}")
    options: dict[str, Any] = {"bucket": bucket, "prefix": prefix}
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    for name, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        if name not in _S3_PARAMS:
            raise ValueError(f"unknown s3 blob store URL parameter {name!r} (known: {', '.join(_S3_PARAMS)})")
        if len(values) != 1 or not values[0]:
            raise ValueError(f"s3 blob store URL parameter {name!r} needs exactly one non-empty value")
        keyword, kind = _S3_PARAMS[name]
        try:
            value = kind(values[0])
        except ValueError:
            raise ValueError(f"s3 blob store URL parameter {name!r}: not a {kind.__name__}: {values[0]!r}") from None
        if kind is not str and value <= 0:
            raise ValueError(f"s3 blob store URL parameter {name!r} must be positive")
        options[keyword] = value
    endpoint = options.get("endpoint_url")
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.netloc:
            raise ValueError(f"s3 endpoint must be an http(s):// URL, got {endpoint!r}")
    access_key = env.get("CAMI_S3_ACCESS_KEY")
    secret_key = env.get("CAMI_S3_SECRET_KEY")
    if bool(access_key) != bool(secret_key):
        raise ValueError("set both CAMI_S3_ACCESS_KEY and CAMI_S3_SECRET_KEY, or neither")
    if access_key and secret_key:
        options["access_key"] = access_key
        options["secret_key"] = secret_key
    return BlobStoreSpec("s3", options)


def parse_blob_url(url: str, env: Mapping[str, str]) -> BlobStoreSpec:
    """Parse a blob store URL (pure: reads only ``env``, the variables the settings read -- see
    :data:`ENVIRONMENT`). ValueError if bad."""
    if not isinstance(url, str) or not url:
        raise ValueError("blob store URL is empty")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return _parse_file(url)
    if scheme == "s3":
        return _parse_s3(url, env)
    raise ValueError(f"unknown blob store URL scheme {scheme!r} in {_redact(url)!r} (use file:// or s3://)")


def open_blob_store(url: str, env: Mapping[str, str]) -> BlobStore:
    """Build the blob store a URL names. No network I/O: call ``ensure_bucket()`` on S3 if needed."""
    spec = parse_blob_url(url, env)
    if spec.scheme == "file":
        from streams.blobs.local import LocalBlobStore

        return LocalBlobStore(**spec.options)
    from streams.blobs.s3 import S3BlobStore

    return S3BlobStore(**spec.options)
