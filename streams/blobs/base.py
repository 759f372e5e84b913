"""Content-addressed blob store for DICOM objects (original bytes, never transcoded).

A blob's name is the SHA-256 of its bytes. Two backends implement this interface (a local
directory and S3); the contract tests in ``tests/contract/test_blob_store.py`` hold both to it:

* ``put`` verifies the bytes against the expected hash (when given) and returns only once the
  blob is durable; a partially written blob is never visible under its name;
* storing the same bytes twice is harmless (one blob);
* ``get``/``read_range`` verify what they read and raise :class:`BlobIntegrityError` when the
  stored bytes no longer match their hash.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import struct
from dataclasses import dataclass

from streams.health import Health

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobStoreError(Exception):
    """The store could not complete the operation; nothing was acknowledged."""


class BlobUnavailable(BlobStoreError):
    """The backend is unreachable; the caller must not report success."""


class BlobNotFound(BlobStoreError):
    """No blob with that hash."""


class BlobIntegrityError(BlobStoreError):
    """Bytes do not match their SHA-256 (on write: the sender's hash; on read: the blob's name)."""


class InvalidBlobId(BlobStoreError, ValueError):
    """The identifier is not a lowercase hex SHA-256 (guards against path tricks)."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str
    size: int
    #: True when this put stored new bytes, False when the blob already existed
    created: bool = True


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_blob_id(sha256: str) -> str:
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        raise InvalidBlobId(f"not a SHA-256 blob id: {sha256!r:.80}")
    return sha256


class BlobStore(abc.ABC):
    backend: str = "?"

    @abc.abstractmethod
    def put(
        self,
        data: bytes,
        expected_sha256: str | None = None,
        *,
        known_sha256: str | None = None,
        likely_new: bool = False,
    ) -> BlobRef:
        """Store ``data``; durable on return. Raises BlobIntegrityError if the hash differs from
        ``expected_sha256``. ``known_sha256`` is the digest the caller has just computed from these
        very bytes (immutable ``bytes``): it is trusted, and the store does not hash them again.
        ``likely_new``: the caller knows of no copy (a new instance), so a store whose existence
        check costs a round trip (S3's HEAD) writes at once; rewriting identical bytes is harmless,
        and ``created`` is then True."""

    @abc.abstractmethod
    def get(self, sha256: str) -> bytes:
        """The whole blob, verified against its hash."""

    @abc.abstractmethod
    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (shorter at the end of the blob), verified."""

    @abc.abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abc.abstractmethod
    def size(self, sha256: str) -> int: ...

    def put_file(self, path: str | os.PathLike[str], expected_sha256: str | None = None) -> BlobRef:
        """Store the bytes of the file at ``path``; durable on return, same rules as :meth:`put`.

        Backends override this to stream large files in chunks; this default reads the whole file.
        """
        with open(path, "rb") as f:
            data = f.read()
        return self.put(data, expected_sha256)

    @abc.abstractmethod
    def health(self, timeout: float = 2.0) -> Health:
        """Whether a put would be durable now (readiness probes): answered within about
        ``timeout`` seconds, never raised; ``degraded`` when it would, with less redundancy than
        the store is built for."""

    def ensure_ready(self) -> None:  # noqa: B027 - optional hook
        """Create what the store needs (an S3 bucket); the local store needs nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- additions: streaming puts, range checks and per-chunk digests ------------------------------
#
# A blob larger than one chunk gets a *chunk manifest* (a "sidecar") listing the SHA-256 of each
# fixed-size chunk, written before the blob itself becomes visible. ``read_range`` on a large blob
# then reads and verifies only the chunks that cover the range instead of re-hashing the whole blob.
# The manifest carries the blob id, its size and a trailing SHA-256 of its own bytes, so a damaged or
# misplaced manifest is recognised as such (the stores then fall back to verifying the whole blob).

#: Chunk size of the per-chunk digests (1 MiB). Blobs up to this size are verified as a whole.
CHUNK_SIZE = 1024 * 1024
#: Read size used when streaming files.
STREAM_BUFFER = 1024 * 1024

_MANIFEST_MAGIC = b"CAMI-CHUNKS-v1\n\x00"  # 16 bytes
_MANIFEST_HEADER = struct.Struct(">16s32sQII")  # magic, blob digest, size, chunk size, chunk count
_DIGEST_LEN = 32


def check_range(start: int, length: int) -> None:
    """Reject negative or non-integer offsets (``read_range`` arguments)."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"range start must be a non-negative int, got {start!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"range length must be a non-negative int, got {length!r}")


class ManifestError(ValueError):
    """A chunk manifest is malformed or belongs to another blob (the blob itself may be fine)."""


@dataclass(frozen=True, slots=True)
class ChunkManifest:
    """Per-chunk SHA-256 digests of one blob."""

    sha256: str
    size: int
    chunk_size: int
    digests: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ManifestError(f"chunk size must be positive, got {self.chunk_size}")
        expected = -(-self.size // self.chunk_size)
        if len(self.digests) != expected or any(len(d) != _DIGEST_LEN for d in self.digests):
            raise ManifestError(
                f"manifest of blob {self.sha256}: {len(self.digests)} digests for {self.size} bytes "
                f"in chunks of {self.chunk_size} (expected {expected})"
            )

    @classmethod
    def of_bytes(cls, data: bytes | memoryview, chunk_size: int = CHUNK_SIZE, sha256: str = "") -> ChunkManifest:
        view = memoryview(data)
        digests = tuple(hashlib.sha256(view[i : i + chunk_size]).digest() for i in range(0, len(view), chunk_size))
        return cls(sha256 or hashlib.sha256(view).hexdigest(), len(view), chunk_size, digests)

    def encode(self) -> bytes:
        header = _MANIFEST_HEADER.pack(
            _MANIFEST_MAGIC, bytes.fromhex(self.sha256), self.size, self.chunk_size, len(self.digests)
        )
        body = header + b"".join(self.digests)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def decode(cls, raw: bytes, sha256: str) -> ChunkManifest:
        """Parse and check a manifest read for blob ``sha256``; :class:`ManifestError` if unusable."""
        if len(raw) < _MANIFEST_HEADER.size + _DIGEST_LEN:
            raise ManifestError(f"manifest of blob {sha256}: truncated ({len(raw)} bytes)")
        body, trailer = raw[:-_DIGEST_LEN], raw[-_DIGEST_LEN:]
        if hashlib.sha256(body).digest() != trailer:
            raise ManifestError(f"manifest of blob {sha256}: checksum mismatch")
        magic, digest, size, chunk_size, count = _MANIFEST_HEADER.unpack_from(body)
        if magic != _MANIFEST_MAGIC:
            raise ManifestError(f"manifest of blob {sha256}: unknown format")
        if digest.hex() != sha256:
            raise ManifestError(f"manifest of blob {sha256}: belongs to blob {digest.hex()}")
        if len(body) != _MANIFEST_HEADER.size + count * _DIGEST_LEN:
            raise ManifestError(f"manifest of blob {sha256}: length does not match {count} chunks")
        payload = body[_MANIFEST_HEADER.size :]
        digests = tuple(payload[i : i + _DIGEST_LEN] for i in range(0, len(payload), _DIGEST_LEN))
        return cls(sha256, size, chunk_size, digests)

    def covering(self, start: int, end: int) -> tuple[int, int]:
        """First and last chunk index covering bytes ``[start, end)`` (``0 <= start < end <= size``)."""
        return start // self.chunk_size, (end - 1) // self.chunk_size

    def verify_chunks(self, first: int, data: bytes | memoryview) -> bool:
        """True when ``data`` (chunks ``first``, ``first + 1``, ... back to back) matches the digests."""
        view = memoryview(data)
        index = first
        for offset in range(0, len(view), self.chunk_size):
            piece = view[offset : offset + self.chunk_size]
            expected_len = min(self.chunk_size, self.size - index * self.chunk_size)
            if index >= len(self.digests) or len(piece) != expected_len:
                return False
            if hashlib.sha256(piece).digest() != self.digests[index]:
                return False
            index += 1
        return True


class BlobHasher:
    """Incremental SHA-256 of a whole blob plus the digests of its fixed-size chunks."""

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._chunk_fill = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._whole.update(view)
        self.size += len(view)
        while len(view):
            take = min(len(view), self.chunk_size - self._chunk_fill)
            self._chunk.update(view[:take])
            self._chunk_fill += take
            view = view[take:]
            if self._chunk_fill == self.chunk_size:
                self._digests.append(self._chunk.digest())
                self._chunk = hashlib.sha256()
                self._chunk_fill = 0

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def manifest(self) -> ChunkManifest:
        digests = list(self._digests)
        if self._chunk_fill:
            digests.append(self._chunk.digest())
        return ChunkManifest(self.hexdigest(), self.size, self.chunk_size, tuple(digests))
