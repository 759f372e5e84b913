"""Content-addressed blobs in a local directory (the embedded backend).

Layout under ``root``::

    objects/ab/cd/<sha256>     the blob, byte for byte, read-only (0444)
    chunks/ab/cd/<sha256>      chunk manifest (per-1 MiB SHA-256 digests), only for blobs > 1 chunk
    tmp/                       files being written; never read, safe to delete when no put runs

A put writes into ``tmp/``, fsyncs the file, renames it into place with ``os.replace`` and fsyncs
the directory, so the final name only ever holds a complete blob and the blob survives a crash
once ``put`` has returned. The chunk manifest of a large blob is made durable *before* the blob
is renamed into place: a visible large blob always has its manifest (unless someone deletes it,
in which case reads fall back to verifying the whole blob and rewrite the manifest).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from streams.blobs.base import (
    CHUNK_SIZE,
    STREAM_BUFFER,
    BlobHasher,
    BlobIntegrityError,
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobStoreError,
    ChunkManifest,
    ManifestError,
    check_blob_id,
    check_range,
)
from streams.health import Health

_BLOB_MODE = 0o444


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer only at end of file)."""
    parts: list[bytes] = []
    while length > 0:
        piece = os.pread(fd, length, offset)
        if not piece:
            break
        parts.append(piece)
        length -= len(piece)
        offset += len(piece)
    return b"".join(parts)


class _TempFile:
    __slots__ = ("fd", "path", "published")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.published = False

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root`` (see the module docstring for the layout)."""

    backend = "local"

    def __init__(self, root: Path | str, *, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.root = Path(root).absolute()
        self.chunk_size = chunk_size
        self._objects = self.root / "objects"
        self._chunks = self.root / "chunks"
        self._tmp = self.root / "tmp"
        self._known_dirs: set[Path] = set()
        for directory in (self._objects, self._chunks, self._tmp):
            self._ensure_dir(directory)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` lives (whether or not it exists)."""
        check_blob_id(sha256)
        return self._objects / sha256[:2] / sha256[2:4] / sha256

    def manifest_path(self, sha256: str) -> Path:
        check_blob_id(sha256)
        return self._chunks / sha256[:2] / sha256[2:4] / sha256

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` (and missing parents), making each new entry durable."""
        if directory in self._known_dirs:
            return
        if not directory.is_dir():
            parent = directory.parent
            if parent != directory:
                self._ensure_dir(parent)
            try:
                directory.mkdir()
            except FileExistsError:
                if not directory.is_dir():
                    raise
            # also when another writer made it a moment ago: its fsync of the parent may not
            # have happened yet, and a blob renamed into the directory must not outlive its name
            _fsync_dir(parent)
        self._known_dirs.add(directory)

    # -- writing -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _temp_file(self, hint: str) -> Iterator[_TempFile]:
        """An open temporary file in ``tmp/``; removed on exit unless it was published."""
        fd, name = tempfile.mkstemp(prefix=f"{hint[:16]}.", suffix=".tmp", dir=self._tmp)
        tmp = _TempFile(fd, Path(name))
        try:
            yield tmp
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
            if not tmp.published:
                with contextlib.suppress(FileNotFoundError):
                    tmp.path.unlink()

    def _publish(self, tmp: _TempFile, dest: Path) -> None:
        """Atomically move a fully written, fsynced temp file to ``dest`` and make it durable."""
        os.fsync(tmp.fd)
        os.fchmod(tmp.fd, _BLOB_MODE)
        self._ensure_dir(dest.parent)
        try:
            os.replace(tmp.path, dest)
        except FileNotFoundError:  # the directory was removed behind our back: create it again
            self._known_dirs.clear()
            self._ensure_dir(dest.parent)
            os.replace(tmp.path, dest)
        tmp.published = True
        _fsync_dir(dest.parent)

    def _write_manifest(self, manifest: ChunkManifest) -> None:
        with self._temp_file("chunks") as tmp:
            tmp.write(manifest.encode())
            self._publish(tmp, self.manifest_path(manifest.sha256))

    def _existing_size(self, sha256: str) -> int | None:
        try:
            return self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def _ensure_manifest(self, manifest: ChunkManifest) -> None:
        if manifest.size > self.chunk_size and not self.manifest_path(manifest.sha256).is_file():
            self._write_manifest(manifest)

    def put(
        self,
        data: bytes,
        expected_sha256: str | None = None,
        *,
        known_sha256: str | None = None,
        likely_new: bool = False,
    ) -> BlobRef:
        if expected_sha256 is not None:
            check_blob_id(expected_sha256)
        view = memoryview(data)
        sha256 = check_blob_id(known_sha256) if known_sha256 is not None else hashlib.sha256(view).hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise BlobIntegrityError(f"blob {expected_sha256}: received bytes hash to {sha256}")
        size = len(view)
        manifest = ChunkManifest.of_bytes(view, self.chunk_size, sha256) if size > self.chunk_size else None
        if self._existing_size(sha256) == size:  # a stat(): checked even when likely_new
            if manifest is not None:
                self._ensure_manifest(manifest)
            return BlobRef(sha256, size, created=False)
        try:
            with self._temp_file(sha256) as tmp:
                tmp.write(view)
                if manifest is not None:
                    self._write_manifest(manifest)
                self._publish(tmp, self.blob_path(sha256))
        except OSError as exc:
            raise self._io_error("store", sha256, exc) from exc
        return BlobRef(sha256, size, created=True)

    def put_file(self, path: str | os.PathLike[str], expected_sha256: str | None = None) -> BlobRef:
        """Stream the file at ``path`` into the store (one pass: copy, hash and chunk digests)."""
        if expected_sha256 is not None:
            check_blob_id(expected_sha256)
        hasher = BlobHasher(self.chunk_size)
        with open(path, "rb", buffering=0) as src:  # errors opening the source are the caller's
            try:
                with self._temp_file("incoming") as tmp:
                    buffer = bytearray(STREAM_BUFFER)
                    while n := src.readinto(buffer):
                        view = memoryview(buffer)[:n]
                        hasher.update(view)
                        tmp.write(view)
                    sha256 = hasher.hexdigest()
                    if expected_sha256 is not None and sha256 != expected_sha256:
                        raise BlobIntegrityError(f"blob {expected_sha256}: file {path} hashes to {sha256}")
                    manifest = hasher.manifest()
                    if self._existing_size(sha256) == hasher.size:
                        self._ensure_manifest(manifest)
                        return BlobRef(sha256, hasher.size, created=False)
                    self._ensure_manifest(manifest)
                    self._publish(tmp, self.blob_path(sha256))
            except OSError as exc:
                raise self._io_error("store", expected_sha256 or f"from {path}", exc) from exc
        return BlobRef(sha256, hasher.size, created=True)

    @staticmethod
    def _io_error(what: str, sha256: str, exc: OSError) -> BlobStoreError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return BlobStoreError(f"cannot {what} blob {sha256}: no space left ({exc})")
        return BlobStoreError(f"cannot {what} blob {sha256}: {exc}")

    def remove_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp files older than ``max_age_s`` (left by a crashed put); returns how many."""
        removed = 0
        cutoff = time.time() - max_age_s
        for entry in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    # -- reading -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self, sha256: str) -> Iterator[tuple[int, int]]:
        """Open the blob read-only: yields ``(fd, size)``; BlobNotFound when absent."""
        path = self.blob_path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None
        except OSError as exc:
            raise self._io_error("read", sha256, exc) from exc
        try:
            yield fd, os.fstat(fd).st_size
        finally:
            os.close(fd)

    @staticmethod
    def _verified(sha256: str, data: bytes) -> bytes:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BlobIntegrityError(f"blob {sha256} is corrupt: stored bytes hash to {actual}")
        return data

    def get(self, sha256: str) -> bytes:
        check_blob_id(sha256)
        with self._open(sha256) as (fd, size):
            try:
                return self._verified(sha256, _pread_exact(fd, size, 0))
            except OSError as exc:
                raise self._io_error("read", sha256, exc) from exc

    def _load_manifest(self, sha256: str, size: int) -> ChunkManifest | None:
        """The blob's manifest, or None when missing or unusable (the caller then verifies it all)."""
        try:
            raw = self.manifest_path(sha256).read_bytes()
            manifest = ChunkManifest.decode(raw, sha256)
        except (FileNotFoundError, ManifestError):
            return None
        if manifest.size != size:
            # A valid manifest for this id but a blob of another length: the blob was damaged.
            raise BlobIntegrityError(f"blob {sha256} is corrupt: {size} bytes stored, {manifest.size} expected")
        return manifest

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        check_blob_id(sha256)
        check_range(start, length)
        with self._open(sha256) as (fd, size):
            if length == 0 or start >= size:
                return b""
            end = min(start + length, size)
            try:
                if size <= self.chunk_size:
                    return self._verified(sha256, _pread_exact(fd, size, 0))[start:end]
                manifest = self._load_manifest(sha256, size)
                if manifest is None:
                    data = self._verified(sha256, _pread_exact(fd, size, 0))
                    with contextlib.suppress(OSError):
                        self._write_manifest(ChunkManifest.of_bytes(data, self.chunk_size, sha256))
                    return data[start:end]
                first, last = manifest.covering(start, end)
                offset = first * manifest.chunk_size
                covered = _pread_exact(fd, min((last + 1) * manifest.chunk_size, size) - offset, offset)
            except OSError as exc:
                raise self._io_error("read", sha256, exc) from exc
            if not manifest.verify_chunks(first, covered):
                raise BlobIntegrityError(
                    f"blob {sha256} is corrupt: chunk digest mismatch in bytes {offset}..{offset + len(covered)}"
                )
            return covered[start - offset : end - offset]

    def exists(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None

    # -- health --------------------------------------------------------------------------------------

    def health(self, timeout: float = 2.0) -> Health:
        """The directories are there (an unmounted volume leaves them missing; nothing is created
        here, which would write the blobs onto the wrong disk) and a file can be made in ``tmp/``."""
        where = f"directory {self.root}"
        for directory in (self._objects, self._chunks, self._tmp):
            if not directory.is_dir():
                return Health.down(f"{where}: {directory.name}/ is missing (is the volume mounted?)")
        try:
            fd, name = tempfile.mkstemp(prefix="health.", suffix=".tmp", dir=self._tmp)
            os.close(fd)
            os.unlink(name)
            free = shutil.disk_usage(self._tmp).free
        except OSError as exc:
            return Health.down(f"{where}: cannot write ({exc.strerror or exc})")
        return Health.ok(f"{where}, {free / 2**30:.1f} GiB free")
