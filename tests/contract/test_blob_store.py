"""Contract of the content-addressed blob store, held against both backends.

``local`` is :class:`~streams.blobs.local.LocalBlobStore` on a temporary directory; ``s3`` is
:class:`~streams.blobs.s3.S3BlobStore` on a real MinIO server (``infra/minio.sh``), never a mock.
Tampering goes behind the store's back (editing the file, overwriting the object with plain boto3);
crashes are real ``kill -9`` of writer subprocesses and of the MinIO server.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from streams.blobs import (
    CHUNK_SIZE,
    BlobIntegrityError,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobUnavailable,
    InvalidBlobId,
    open_blob_store,
)
from streams.blobs.local import LocalBlobStore
from streams.blobs.s3 import S3BlobStore
from tests.support.servers import MinioServer, free_port

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
BUCKET = "cami-contract"

BACKENDS = [pytest.param("local", id="local"), pytest.param("s3", id="s3", marks=pytest.mark.s3)]
# S3-only tests carry the id too, so the per-backend summary of conftest counts them.
S3_ONLY = [pytest.param("s3", id="s3", marks=pytest.mark.s3)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


# ---- backends: the store plus ways to reach behind its back ---------------------------------------


@dataclass
class Backend:
    """A store under test, its URL (for subprocesses) and raw access to what it stored."""

    id: str
    store: BlobStore
    url: str
    env: dict[str, str] = field(default_factory=dict)

    def reopen(self) -> BlobStore:
        """A fresh store on the same data (what a restarted process would open)."""
        return open_blob_store(self.url, {**os.environ, **self.env})

    # raw access, overridden per backend
    def stored_names(self) -> list[str]:
        """Every blob name (not manifests) visible under its final name."""
        raise NotImplementedError

    def stored_count(self) -> int:
        """Everything stored: blobs and manifests."""
        raise NotImplementedError

    def corrupt(self, blob_id: str, offset: int) -> None:
        raise NotImplementedError

    def truncate(self, blob_id: str, size: int) -> None:
        raise NotImplementedError

    def has_manifest(self, blob_id: str) -> bool:
        raise NotImplementedError

    def damage_manifest(self, blob_id: str, delete: bool) -> None:
        raise NotImplementedError


class LocalBackend(Backend):
    store: LocalBlobStore

    @property
    def root(self) -> Path:
        return self.store.root

    def stored_names(self) -> list[str]:
        return sorted(p.name for p in (self.root / "objects").rglob("*") if p.is_file())

    def stored_count(self) -> int:
        return sum(1 for d in ("objects", "chunks") for p in (self.root / d).rglob("*") if p.is_file())

    def _rewrite(self, path: Path, edit: Callable[[bytearray], bytes]) -> None:
        os.chmod(path, 0o644)  # blobs are stored read-only
        path.write_bytes(edit(bytearray(path.read_bytes())))

    def corrupt(self, blob_id: str, offset: int) -> None:
        def flip(data: bytearray) -> bytes:
            data[offset] ^= 0xFF
            return bytes(data)

        self._rewrite(self.store.blob_path(blob_id), flip)

    def truncate(self, blob_id: str, size: int) -> None:
        self._rewrite(self.store.blob_path(blob_id), lambda data: bytes(data[:size]))

    def has_manifest(self, blob_id: str) -> bool:
        return self.store.manifest_path(blob_id).is_file()

    def damage_manifest(self, blob_id: str, delete: bool) -> None:
        path = self.store.manifest_path(blob_id)
        if delete:
            path.unlink()
        else:
            self._rewrite(path, lambda data: bytes(data[:-1]) + bytes([data[-1] ^ 1]))


class S3Backend(Backend):
    store: S3BlobStore

    def _raw_get(self, key: str) -> bytearray:
        return bytearray(self.store.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def _raw_put(self, key: str, data: bytes) -> None:
        self.store.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def _keys(self, under: str) -> list[str]:
        paginator = self.store.client.get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=BUCKET, Prefix=self.store.prefix + under)
            for obj in page.get("Contents", [])
        ]

    def stored_names(self) -> list[str]:
        return sorted(key.rsplit("/", 1)[-1] for key in self._keys("sha256/"))

    def stored_count(self) -> int:
        return len(self._keys(""))

    def corrupt(self, blob_id: str, offset: int) -> None:
        key = self.store.key_for(blob_id)
        data = self._raw_get(key)
        data[offset] ^= 0xFF
        self._raw_put(key, bytes(data))

    def truncate(self, blob_id: str, size: int) -> None:
        key = self.store.key_for(blob_id)
        self._raw_put(key, bytes(self._raw_get(key)[:size]))

    def has_manifest(self, blob_id: str) -> bool:
        return bool(self._keys(f"chunks/{blob_id[:2]}/{blob_id[2:4]}/{blob_id}"))

    def damage_manifest(self, blob_id: str, delete: bool) -> None:
        key = self.store.manifest_key_for(blob_id)
        if delete:
            self.store.client.delete_object(Bucket=BUCKET, Key=key)
        else:
            data = self._raw_get(key)
            data[-1] ^= 1
            self._raw_put(key, bytes(data))


def s3_backend(server: MinioServer, **store_options: Any) -> S3Backend:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    store = S3BlobStore(
        BUCKET,
        server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        prefix=prefix,
        **store_options,
    )
    store.ensure_bucket()
    url = f"s3://{BUCKET}/{prefix}?" + urlencode({"endpoint": server.endpoint, "region": "us-east-1"})
    env = {"CAMI_S3_ACCESS_KEY": server.access_key, "CAMI_S3_SECRET_KEY": server.secret_key}
    return S3Backend("s3", store, url, env)


def local_backend(root: Path) -> LocalBackend:
    return LocalBackend("local", LocalBlobStore(root), f"file://{root}")


@pytest.fixture(scope="module")
def crash_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A MinIO of this module's own, for tests that kill, stop or freeze the server."""
    server = MinioServer(tmp_path_factory.mktemp("minio-crash"))
    server.start()
    yield server
    with contextlib.suppress(Exception):
        os.kill(_minio_pid(server), signal.SIGCONT)
    server.stop()


def _make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path, server_fixture: str) -> Backend:
    if kind == "local":
        return local_backend(tmp_path / "blobs")
    server = request.getfixturevalue(server_fixture)
    return s3_backend(server)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The store under test; s3 runs on the session's MinIO (``minio_server`` in conftest)."""
    b = _make_backend(request.param, request, tmp_path, "minio_server")
    yield b
    b.store.close()


@pytest.fixture(params=BACKENDS)
def crash_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Like ``backend``, but s3 runs on ``crash_minio`` (this module's server that may be killed)."""
    b = _make_backend(request.param, request, tmp_path, "crash_minio")
    yield b
    b.store.close()


@pytest.fixture
def store(backend: Backend) -> BlobStore:
    return backend.store


def test_health_is_ok_on_a_reachable_store(store: BlobStore) -> None:
    healthy = store.health(timeout=5)
    assert healthy.status == "ok", healthy.detail


# ---- round trip, dedup, hashes --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MiB], ids=["empty", "1-byte", "5MiB"])
def test_put_get_round_trip(store: BlobStore, size: int) -> None:
    data = random_bytes(size)
    ref = store.put(data)
    assert (ref.sha256, ref.size, ref.created) == (sha(data), size, True)
    assert store.get(ref.sha256) == data
    assert store.exists(ref.sha256)
    assert store.size(ref.sha256) == size


def test_put_with_matching_expected_hash(store: BlobStore) -> None:
    data = random_bytes(1000)
    assert store.put(data, expected_sha256=sha(data)).sha256 == sha(data)


def test_put_with_a_known_hash_reads_back(store: BlobStore) -> None:
    data = random_bytes(600_000)  # a CT image's size: the ingest path hashes it once and says so
    ref = store.put(data, known_sha256=sha(data))
    assert (ref.sha256, ref.size, ref.created) == (sha(data), len(data), True)
    assert store.get(sha(data)) == data
    with pytest.raises(InvalidBlobId):
        store.put(data, known_sha256="not-a-digest")


@pytest.mark.parametrize("size", [1000, 3 * MiB], ids=["small", "chunked"])
def test_a_put_said_likely_new_of_held_bytes_keeps_one_copy(backend: Backend, size: int) -> None:
    """The ingest path skips the existence check for new instances; bytes already held (a retry
    after a failed event append) are simply written again, never stored twice or damaged."""
    data = random_bytes(size)
    backend.store.put(data)
    count = backend.stored_count()
    again = backend.store.put(data, known_sha256=sha(data), likely_new=True)
    assert (again.sha256, again.size) == (sha(data), size)
    assert backend.stored_count() == count
    assert backend.store.get(sha(data)) == data
    assert backend.store.read_range(sha(data), size - 10, 10) == data[-10:]


def test_a_wrong_known_hash_never_serves_other_bytes(store: BlobStore) -> None:
    """A caller's wrong digest is trusted by the local store, not by S3 (ChecksumSHA256); either
    way no reader ever gets bytes that do not hash to the name it asked for."""
    data = random_bytes(1000)
    claimed = sha(b"something else")
    try:
        store.put(data, known_sha256=claimed)
    except BlobStoreError:
        assert not store.exists(claimed)
        return
    with pytest.raises(BlobIntegrityError):
        store.get(claimed)


def test_second_put_deduplicates(backend: Backend) -> None:
    data = random_bytes(3 * MiB + 7)
    first = backend.store.put(data)
    count = backend.stored_count()
    second = backend.store.put(data, expected_sha256=sha(data))
    assert second.created is False
    assert (second.sha256, second.size) == (first.sha256, first.size)
    assert backend.stored_count() == count == 2  # the blob and its chunk manifest, once
    assert backend.store.get(first.sha256) == data


def test_concurrent_puts_of_same_bytes(backend: Backend) -> None:
    data = random_bytes(2 * MiB + 1)
    with ThreadPoolExecutor(8) as pool:
        refs = list(pool.map(lambda _: backend.store.put(data), range(8)))
    assert {(r.sha256, r.size) for r in refs} == {(sha(data), len(data))}
    assert backend.stored_names() == [sha(data)]
    assert backend.store.get(sha(data)) == data


@pytest.mark.parametrize("size", [10, 3 * MiB], ids=["small", "chunked"])
def test_wrong_expected_hash_stores_nothing(backend: Backend, size: int) -> None:
    data = random_bytes(size)
    claimed = sha(b"something else")
    with pytest.raises(BlobIntegrityError, match=claimed):
        backend.store.put(data, expected_sha256=claimed)
    assert not backend.store.exists(claimed)
    assert not backend.store.exists(sha(data))
    assert backend.stored_count() == 0


def test_put_file_streams_and_dedups(backend: Backend, tmp_path: Path) -> None:
    data = random_bytes(3 * MiB + 500)
    path = tmp_path / "in.dcm"
    path.write_bytes(data)
    ref = backend.store.put_file(path, expected_sha256=sha(data))
    assert (ref.sha256, ref.size, ref.created) == (sha(data), len(data), True)
    assert backend.store.get(ref.sha256) == data
    assert backend.store.read_range(ref.sha256, MiB - 5, 10) == data[MiB - 5 : MiB + 5]
    assert backend.store.put(data).created is False
    assert backend.store.put_file(path).created is False
    with pytest.raises(BlobIntegrityError):
        backend.store.put_file(path, expected_sha256=sha(b"other"))
    assert backend.stored_count() == 2


def test_put_file_does_not_load_the_file(backend: Backend, tmp_path: Path) -> None:
    size = 48 * MiB
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(random_bytes(MiB))
    tracemalloc.start()
    try:
        ref = backend.store.put_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.size == size
    assert peak < 16 * MiB, f"put_file peaked at {peak / MiB:.1f} MiB for a {size // MiB} MiB file"
    assert backend.store.read_range(ref.sha256, size - 3, 10) == path.read_bytes()[-3:]


# ---- ranges ---------------------------------------------------------------------------------------

BIG = 5 * MiB + 123  # six chunks, the last one short

RANGES = {
    "start": (0, 100),
    "middle": (2 * MiB + 12345, 1000),
    "across-boundary": (MiB - 10, 20),
    "across-two-boundaries": (MiB - 1, MiB + 2),
    "last-chunk": (5 * MiB + 100, 23),
    "to-end-clipped": (BIG - 10, 100),
    "past-end": (BIG + 5, 10),
    "at-end": (BIG, 1),
    "zero-length": (3 * MiB, 0),
    "whole": (0, BIG),
}


@pytest.mark.parametrize(("start", "length"), list(RANGES.values()), ids=list(RANGES))
def test_read_range_large_blob(store: BlobStore, start: int, length: int) -> None:
    data = random_bytes(BIG)
    ref = store.put(data)
    assert store.read_range(ref.sha256, start, length) == data[start : start + length]


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 10), (500, 100), (1000, 100), (1024, 5), (0, 0), (CHUNK_SIZE, 1)],
    ids=["start", "middle", "clipped", "past-end", "zero-length", "beyond-chunk"],
)
def test_read_range_small_blob(store: BlobStore, start: int, length: int) -> None:
    data = random_bytes(1024)
    ref = store.put(data)
    assert store.read_range(ref.sha256, start, length) == data[start : start + length]


def test_read_range_of_exactly_one_chunk_and_empty_blob(store: BlobStore) -> None:
    data = random_bytes(CHUNK_SIZE)
    ref = store.put(data)
    assert store.read_range(ref.sha256, CHUNK_SIZE - 4, 10) == data[-4:]
    empty = store.put(b"")
    assert store.read_range(empty.sha256, 0, 10) == b""


def test_read_range_rejects_negative_arguments(store: BlobStore) -> None:
    ref = store.put(b"abc")
    for start, length in [(-1, 2), (0, -1)]:
        with pytest.raises(ValueError):
            store.read_range(ref.sha256, start, length)


# ---- missing blobs and bad ids --------------------------------------------------------------------


def test_missing_blob(store: BlobStore) -> None:
    missing = sha(b"never stored")
    assert not store.exists(missing)
    with pytest.raises(BlobNotFound):
        store.get(missing)
    with pytest.raises(BlobNotFound):
        store.size(missing)
    with pytest.raises(BlobNotFound):
        store.read_range(missing, 0, 10)
    with pytest.raises(BlobNotFound):
        store.read_range(missing, 0, 0)


GOOD = sha(b"x")
BAD_IDS = [
    "../x",
    "",
    "../../../../etc/passwd",
    f"../{GOOD[3:]}",
    f"ab/../{GOOD[6:]}",
    GOOD.upper(),
    GOOD[:-1],
    GOOD + "0",
    GOOD + "/",
    GOOD[:-1] + "\x00",
    GOOD[:-1] + "\n",
    "/" + GOOD[1:],
    "sha256:" + GOOD,
]


def _all_operations(store: BlobStore, blob_id: Any) -> list[Callable[[], object]]:
    operations: list[Callable[[], object]] = [
        lambda: store.get(blob_id),
        lambda: store.read_range(blob_id, 0, 1),
        lambda: store.exists(blob_id),
        lambda: store.size(blob_id),
    ]
    if blob_id is not None:  # expected_sha256=None means "no expectation"
        operations.append(lambda: store.put(b"x", expected_sha256=blob_id))
        operations.append(lambda: store.put_file(__file__, expected_sha256=blob_id))
    return operations


@pytest.mark.parametrize("blob_id", [*BAD_IDS, None, 12], ids=[repr(i)[:24] for i in [*BAD_IDS, None, 12]])
def test_invalid_ids_are_rejected(backend: Backend, blob_id: Any) -> None:
    for operation in _all_operations(backend.store, blob_id):
        with pytest.raises(InvalidBlobId):
            operation()
    assert backend.stored_count() == 0


@pytest.mark.parametrize("kind", [p.values[0] for p in BACKENDS], ids=[p.id for p in BACKENDS])
def test_invalid_ids_rejected_before_any_io(kind: str, tmp_path: Path) -> None:
    """With the backing storage gone (directory removed / nothing listening), a bad id still gets
    InvalidBlobId: the check comes before any filesystem or network access."""
    store: BlobStore
    if kind == "local":
        store = LocalBlobStore(tmp_path / "gone")
        for p in sorted((tmp_path / "gone").rglob("*"), reverse=True):
            p.rmdir()
        (tmp_path / "gone").rmdir()
    else:
        store = S3BlobStore(BUCKET, f"http://127.0.0.1:{free_port()}", access_key="k" * 8, secret_key="s" * 8)
    for blob_id in BAD_IDS:
        for operation in _all_operations(store, blob_id):
            with pytest.raises(InvalidBlobId):
                operation()
    assert not (tmp_path / "gone").exists()


# ---- tampering behind the store's back ------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, CHUNK_SIZE, BIG], ids=["1-byte", "small", "one-chunk", "chunked"])
def test_corrupted_bytes_are_detected(backend: Backend, size: int) -> None:
    data = random_bytes(size)
    ref = backend.store.put(data)
    offset = size // 2
    backend.corrupt(ref.sha256, offset)
    with pytest.raises(BlobIntegrityError, match=ref.sha256):
        backend.store.get(ref.sha256)
    with pytest.raises(BlobIntegrityError, match=ref.sha256):
        backend.store.read_range(ref.sha256, offset, 1)
    with pytest.raises(BlobIntegrityError, match=ref.sha256):
        backend.store.read_range(ref.sha256, max(0, offset - 100), 200)


def test_range_away_from_damage_still_reads(backend: Backend) -> None:
    """Chunk verification is local: a damaged chunk does not make the other chunks unreadable."""
    data = random_bytes(BIG)
    ref = backend.store.put(data)
    backend.corrupt(ref.sha256, 4 * MiB + 10)
    assert backend.store.read_range(ref.sha256, 100, 1000) == data[100:1100]
    with pytest.raises(BlobIntegrityError):
        backend.store.read_range(ref.sha256, 4 * MiB, 20)


@pytest.mark.parametrize("size", [1000, BIG], ids=["small", "chunked"])
def test_truncated_blob_is_detected_and_healed_by_put(backend: Backend, size: int) -> None:
    data = random_bytes(size)
    ref = backend.store.put(data)
    backend.truncate(ref.sha256, size - 1)
    with pytest.raises(BlobIntegrityError, match=ref.sha256):
        backend.store.get(ref.sha256)
    with pytest.raises(BlobIntegrityError, match=ref.sha256):
        backend.store.read_range(ref.sha256, 0, 10)
    again = backend.store.put(data)  # the sender retries: the damaged copy is replaced
    assert again.created is True
    assert backend.store.get(ref.sha256) == data


@pytest.mark.parametrize("delete", [True, False], ids=["manifest-deleted", "manifest-damaged"])
def test_damaged_manifest_falls_back_to_whole_blob(backend: Backend, delete: bool) -> None:
    data = random_bytes(BIG)
    ref = backend.store.put(data)
    assert backend.has_manifest(ref.sha256)
    backend.damage_manifest(ref.sha256, delete=delete)
    fresh = backend.reopen()  # no cached manifest
    assert fresh.read_range(ref.sha256, 3 * MiB - 2, 4) == data[3 * MiB - 2 : 3 * MiB + 2]
    backend.damage_manifest(ref.sha256, delete=True)
    backend.corrupt(ref.sha256, 10)
    with pytest.raises(BlobIntegrityError):
        backend.reopen().read_range(ref.sha256, 3 * MiB, 4)
    fresh.close()


def test_small_blobs_have_no_manifest(backend: Backend) -> None:
    small = backend.store.put(random_bytes(CHUNK_SIZE))
    big = backend.store.put(random_bytes(CHUNK_SIZE + 1))
    assert not backend.has_manifest(small.sha256)
    assert backend.has_manifest(big.sha256)


# ---- crashes: writer subprocesses killed -9, MinIO killed -9 --------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys
    from streams.blobs import open_blob_store

    store = open_blob_store(sys.argv[1], os.environ)
    mode = sys.argv[2]
    if mode == "one":
        data = os.urandom(int(sys.argv[3]))
        if store.backend == "s3":
            def announce(request, **kwargs):
                if "/sha256/" in request.url:
                    print("sending", flush=True)
            store.client.meta.events.register("before-send.s3.PutObject", announce)
        import hashlib
        print("sha", hashlib.sha256(data).hexdigest(), flush=True)
        store.put(data)
        print("done", flush=True)
    else:
        size, count = int(sys.argv[3]), int(sys.argv[4])
        for _ in range(count):
            ref = store.put(os.urandom(size))
            print("stored", ref.sha256, flush=True)
    """
)


class Writer:
    """A writer subprocess whose stdout lines arrive on a queue."""

    def __init__(self, backend: Backend, *args: str) -> None:
        env = {**os.environ, **backend.env, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, backend.url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float = 60.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"writer said nothing for {timeout}s (exit {self.proc.poll()})") from None

    def kill(self, must_be_running: bool = True) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)  # an exited but unreaped child is still ours to signal
        self.proc.wait(30)
        if must_be_running:
            assert self.proc.returncode == -signal.SIGKILL, "the writer finished before it was killed"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _tmp_file_sizes(root: Path) -> list[int]:
    sizes = []
    for entry in os.scandir(root / "tmp"):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(entry.stat().st_size)
    return sizes


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def assert_every_visible_blob_is_complete(backend: Backend) -> list[str]:
    fresh = backend.reopen()
    names = backend.stored_names()
    for name in names:
        data = fresh.get(name)  # verifies the hash: complete and correct
        assert fresh.read_range(name, len(data) - 1, 1) == data[-1:]
    fresh.close()
    return names


ONE_SIZE = 192 * MiB


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["writing", "published-window", "random"])
def test_kill_during_put_leaves_no_partial_blob(crash_backend: Backend, moment: str) -> None:
    """kill -9 a writer in the middle of a large put: the blob is absent or complete, never partial."""
    writer = Writer(crash_backend, "one", str(ONE_SIZE))
    try:
        tag, blob_id = writer.next_line().split()
        assert tag == "sha"
        if moment == "random":  # anywhere in the put (about a second): absent or complete
            time.sleep((uuid.uuid4().int % 1500) / 1000)
        elif crash_backend.id == "local":
            root = Path(crash_backend.url.removeprefix("file://"))
            if moment == "writing":  # the temp file is half written
                _wait_for(lambda: any(ONE_SIZE // 2 <= s < ONE_SIZE for s in _tmp_file_sizes(root)))
            else:  # fully written: fsync, manifest and rename are under way
                _wait_for(lambda: ONE_SIZE in _tmp_file_sizes(root), what="complete temp file")
        else:
            assert writer.next_line() == "sending"  # the manifest is stored, the blob PUT starts
            time.sleep(0.02 if moment == "writing" else 0.0)
        writer.kill(must_be_running=moment != "random")
    finally:
        writer.close()
    names = assert_every_visible_blob_is_complete(crash_backend)
    assert names in ([], [blob_id])
    if moment == "writing":
        assert names == [], "a blob killed mid-write must not be visible"
    if crash_backend.id == "s3" and moment != "random":
        assert crash_backend.has_manifest(blob_id), "the manifest goes first"
    if names:
        assert crash_backend.has_manifest(blob_id)
    if isinstance(crash_backend.store, LocalBlobStore):  # the killed put may have left its temp file
        crash_backend.store.remove_stale_temp(max_age_s=0)
        assert _tmp_file_sizes(crash_backend.store.root) == []


@pytest.mark.slow
def test_acknowledged_blobs_survive_crashes(crash_backend: Backend, request: pytest.FixtureRequest) -> None:
    """Blobs acknowledged by a writer that is then kill -9'd are all readable; for s3 also after
    MinIO itself is kill -9'd and restarted."""
    writer = Writer(crash_backend, "many", str(512 * 1024), "2000")
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 60:
            tag, blob_id = writer.next_line().split()
            assert tag == "stored"
            acknowledged.append(blob_id)
        writer.kill()
    finally:
        writer.close()
    while not writer.lines.empty():  # acknowledgements printed just before the kill
        acknowledged.append(writer.lines.get().split()[1])

    def check() -> None:
        fresh = crash_backend.reopen()
        for blob_id in acknowledged:
            assert hashlib.sha256(fresh.get(blob_id)).hexdigest() == blob_id
        fresh.close()
        visible = assert_every_visible_blob_is_complete(crash_backend)
        assert set(acknowledged) <= set(visible)
        assert len(visible) - len(acknowledged) <= 1  # at most the one in flight

    check()
    if crash_backend.id == "s3":
        server: MinioServer = request.getfixturevalue("crash_minio")
        server.kill()
        server.start()
        check()


# ---- S3 down: fail fast with BlobUnavailable ------------------------------------------------------


def _minio_pid(server: MinioServer) -> int:
    return int((server.data_dir / "minio.pid").read_text().strip())


def _assert_unavailable_quickly(store: BlobStore, limit_s: float) -> None:
    blob_id = sha(b"some blob")
    operations: list[Callable[[], object]] = [
        lambda: store.put(b"new bytes"),
        lambda: store.get(blob_id),
        lambda: store.read_range(blob_id, 0, 10),
        lambda: store.exists(blob_id),
        lambda: store.size(blob_id),
    ]
    for operation in operations:
        began = time.monotonic()
        with pytest.raises(BlobUnavailable):
            operation()
        took = time.monotonic() - began
        assert took < limit_s, f"took {took:.1f}s to report the store unavailable"


@pytest.mark.parametrize("kind", S3_ONLY)
def test_s3_nothing_listening_is_unavailable_fast(kind: str) -> None:
    store = S3BlobStore(BUCKET, f"http://127.0.0.1:{free_port()}", access_key="k" * 8, secret_key="s" * 8)
    _assert_unavailable_quickly(store, 5.0)
    with pytest.raises(BlobUnavailable):
        store.ensure_bucket()


@pytest.mark.slow
@pytest.mark.parametrize("kind", S3_ONLY)
def test_s3_server_stopped_then_back(kind: str, crash_minio: MinioServer) -> None:
    backend = s3_backend(crash_minio)
    ref = backend.store.put(b"before the outage")
    crash_minio.stop()
    try:
        _assert_unavailable_quickly(backend.store, 5.0)
    finally:
        crash_minio.start()
    assert backend.store.get(ref.sha256) == b"before the outage"  # the same client recovers
    assert backend.store.put(b"after the outage").created


@pytest.mark.slow
@pytest.mark.parametrize("kind", S3_ONLY)
def test_s3_frozen_server_times_out(kind: str, crash_minio: MinioServer) -> None:
    """A server that accepts connections but never answers (SIGSTOP): bounded by the read timeout."""
    backend = s3_backend(crash_minio, connect_timeout=1.0, read_timeout=1.0, max_attempts=2)
    backend.store.put(b"warm the connection pool")
    pid = _minio_pid(crash_minio)
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(BlobUnavailable):
            backend.store.get(sha(b"warm the connection pool"))
        assert time.monotonic() - began < 6.0
    finally:
        os.kill(pid, signal.SIGCONT)


# ---- S3 specifics: the server checks our checksum ---------------------------------------------


@pytest.mark.parametrize("kind", S3_ONLY)
def test_s3_server_rejects_bytes_damaged_in_transit(kind: str, minio_server: MinioServer) -> None:
    """Flip a byte of the PUT body after the store computed its checksum (as a faulty link or proxy
    would): MinIO verifies x-amz-checksum-sha256, refuses the object, the store raises."""
    backend = s3_backend(minio_server)

    def damage(request: Any, **kwargs: Any) -> None:
        if "/sha256/" in request.url:
            body = bytearray(request.data.getvalue())  # botocore wraps a bytes body in BytesIO
            body[len(body) // 2] ^= 0xFF
            request.data = io.BytesIO(bytes(body))
            damaged.append(request.url)

    damaged: list[str] = []
    data = random_bytes(10_000)
    backend.store.client.meta.events.register("before-sign.s3.PutObject", damage)
    try:
        with pytest.raises(BlobIntegrityError, match=sha(data)):
            backend.store.put(data)
    finally:
        backend.store.client.meta.events.unregister("before-sign.s3.PutObject", damage)
    assert damaged, "the hook did not see the PUT"
    assert not backend.store.exists(sha(data))
    assert backend.stored_count() == 0
    assert backend.store.put(data).created  # undamaged, the same put goes through
