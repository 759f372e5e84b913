"""Content-addressed blobs in an S3-compatible object store (MinIO in tests, any S3 in production).

Keys under ``prefix``::

    sha256/ab/cd/<sha256>      the blob, byte for byte
    chunks/ab/cd/<sha256>      chunk manifest (per-1 MiB SHA-256 digests), only for blobs > 1 chunk

Every PUT carries ``x-amz-checksum-sha256`` (base64 of the SHA-256 of the body), so the server
rejects a body damaged on the way (``BadDigest``) instead of storing it; an S3 PUT is atomic (the key
shows the old state or the complete new object, never a part) and acknowledged only once stored.
The chunk manifest of a large blob is PUT before the blob, so a visible large blob has its manifest.
A put first asks (HEAD) whether the blob is already there, which makes retries cheap.

Network failures, timeouts and server errors (5xx, throttling) raise :class:`BlobUnavailable`
after a short, bounded time (configurable timeouts and attempts), so an ingest can answer
"out of resources" quickly when the store is down instead of holding the sender.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, NoCredentialsError, ReadTimeoutError

from streams.blobs.base import (
    CHUNK_SIZE,
    STREAM_BUFFER,
    BlobHasher,
    BlobIntegrityError,
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobStoreError,
    BlobUnavailable,
    ChunkManifest,
    ManifestError,
    check_blob_id,
    check_range,
)
from streams.errors import OperatorError
from streams.health import Health

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Largest object a single PUT may carry (S3 limit).
MAX_SINGLE_PUT = 5 * 1024**3

_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_INTEGRITY_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"})
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "XMinioServerNotInitialized",
        "XMinioStorageFull",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
    }
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MANIFEST_CACHE_SIZE = 1024


def _b64_digest(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status)


# -- refusals and unreachable endpoints at start (one line for the operator) ------------------------

#: codes an S3 server answers when it will not take the request's credentials
REFUSAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
    }
)
#: where boto3's credential chain found the key it used (``Credentials.method``), as people set it
_CREDENTIAL_SOURCES = {
    "explicit": "CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY",
    "env": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    "shared-credentials-file": "the shared credentials file (~/.aws/credentials, AWS_PROFILE)",
    "config-file": "the AWS config file (~/.aws/config, AWS_PROFILE)",
}
_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class S3AccessRefused(BlobStoreError, OperatorError):
    """The S3 server refused the credentials (or there are none): the message names the endpoint,
    the bucket, the access key (never the secret) and what to set."""


class S3Unreachable(BlobUnavailable, OperatorError):
    """The S3 endpoint did not answer at start: the message names its address."""


def credentials_source(method: str | None) -> str:
    """Where the key came from, named as the operator sets it (boto3's ``Credentials.method``)."""
    if not method:
        return "CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    return _CREDENTIAL_SOURCES.get(method, f"boto3's credential chain ({method})")


def refusal_message(
    code: str, *, endpoint: str, bucket: str, access_key: str | None, source: str, creating: bool = False
) -> str:
    """One line on credentials the server refused: which server and bucket, which key (the access
    key id, which is no secret; never the secret key), why, and what to change."""
    where = f"S3 at {endpoint}"
    if access_key is None:
        return f"no S3 credentials for bucket {bucket} at {endpoint}: set {credentials_source(None)}"
    key = f"access key {access_key!r}"
    if code == "InvalidAccessKeyId":
        return (
            f"{where} does not know {key} (InvalidAccessKeyId), bucket {bucket}: set {source} to a key of that server"
        )
    if code == "SignatureDoesNotMatch":
        secret = source.split(" / ", 1)[1] if " / " in source else source  # "ACCESS_VAR / SECRET_VAR"
        return (
            f"{where} refused the secret key of {key} (SignatureDoesNotMatch), bucket {bucket}:"
            f" the secret is wrong; correct {secret}"
        )
    if code in ("InvalidToken", "ExpiredToken", "TokenRefreshRequired"):
        return f"{where} refused the session token of {key} ({code}), bucket {bucket}: renew the credentials ({source})"
    if code == "RequestTimeTooSkewed":
        return (
            f"{where} refused the request for bucket {bucket} (RequestTimeTooSkewed): this host's clock is"
            " more than 15 minutes off the server's; set the time (NTP)"
        )
    if code == "AccessDenied" and creating:
        return (
            f"{where} does not let {key} create bucket {bucket} (AccessDenied):"
            " create the bucket, or give the key the right to create it"
        )
    shown = code if code and not code.isdigit() else "HTTP 403"
    return (
        f"{where} denies {key} the bucket {bucket} ({shown}): give that key list, read and write on the"
        f" bucket, or set {source} to a key that has them"
    )


def unreachable_message(exc: Exception, *, endpoint: str, bucket: str) -> str:
    """One line on an endpoint that does not answer: its address and what was seen."""
    if isinstance(exc, ConnectTimeoutError):
        why = "no connection within the connect timeout"
    elif isinstance(exc, ReadTimeoutError):
        why = "no answer within the read timeout"
    else:
        detail = str(getattr(exc, "kwargs", {}).get("error") or exc)
        found = _ERRNO_TEXT.search(detail)
        why = found.group(1).strip().lower() if found else detail
    return (
        f"S3 endpoint {endpoint} does not answer ({why}), bucket {bucket}:"
        " start the S3 server or correct the endpoint in CAMI_BLOBS"
    )


class S3BlobStore(BlobStore):
    """Blobs as objects in one bucket (see the module docstring for keys and guarantees)."""

    backend = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        max_pool_connections: int = 32,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise ValueError(f"not a valid S3 bucket name: {bucket!r}")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.chunk_size = chunk_size
        config = Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            # Path-style addressing works with any endpoint (MinIO, Ceph RGW) without DNS tricks.
            s3={"addressing_style": "path"} if endpoint_url else {},
            # We send our own SHA-256 checksum; no extra CRC trailer on top of it.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        self._manifests: OrderedDict[str, ChunkManifest] = OrderedDict()
        self._manifests_lock = threading.Lock()
        #: what :meth:`health` builds its own client from (short timeouts, one attempt), on first use
        self._probe_client: S3Client | None = None
        self._probe_lock = threading.Lock()
        self._credentials = (access_key, secret_key)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}{where})"

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client (for operations and tests; blobs go through the store's methods)."""
        return self._client

    def close(self) -> None:
        self._client.close()
        if self._probe_client is not None:
            self._probe_client.close()

    # -- keys and errors -----------------------------------------------------------------------------

    def key_for(self, sha256: str) -> str:
        """Object key of the blob named ``sha256``."""
        check_blob_id(sha256)
        return f"{self.prefix}sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def manifest_key_for(self, sha256: str) -> str:
        check_blob_id(sha256)
        return f"{self.prefix}chunks/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    @contextlib.contextmanager
    def _errors(self, what: str, sha256: str, subject: str = "") -> Iterator[None]:
        """Translate botocore/network errors into the blob store's errors (messages name the blob)."""
        subject = subject or f"blob {sha256}"
        try:
            yield
        except BlobStoreError:
            raise
        except ClientError as exc:
            code, status = _error_code(exc)
            detail = f"{what} {subject} in s3://{self.bucket}: {code or status}"
            if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
                raise BlobNotFound(f"no blob {sha256}") from exc
            if code in _INTEGRITY_CODES:
                raise BlobIntegrityError(f"{detail}: the server rejected the bytes as damaged") from exc
            if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
                raise BlobUnavailable(f"cannot {detail}") from exc
            raise BlobStoreError(f"cannot {detail} ({exc})") from exc
        except NoCredentialsError as exc:
            raise BlobStoreError(f"cannot {what} {subject}: no S3 credentials configured") from exc
        except (BotoCoreError, OSError) as exc:
            # Connection refused/reset, timeouts, truncated responses: the store is not reachable now.
            raise BlobUnavailable(
                f"cannot {what} {subject}: S3 endpoint {self.endpoint_url or '(default)'} unavailable ({exc})"
            ) from exc

    # -- bucket --------------------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        self.ensure_bucket()

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (idempotent). Refused credentials are
        :class:`S3AccessRefused` and an endpoint that does not answer :class:`S3Unreachable`, each
        one line naming the endpoint, the bucket and the fix."""
        creating = False
        try:
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                code, status = _error_code(exc)
                if status != 404 and code not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            creating = True
            try:
                if self.region == "us-east-1":
                    self._client.create_bucket(Bucket=self.bucket)
                else:
                    self._client.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration={"LocationConstraint": self.region},  # type: ignore[typeddict-item]
                    )
            except ClientError as exc:
                if _error_code(exc)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        except NoCredentialsError as exc:
            raise S3AccessRefused(self._refusal("", creating)) from exc
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in REFUSAL_CODES or status in (401, 403):
                raise S3AccessRefused(self._refusal(code, creating)) from exc
            with self._errors("create", "", subject=f"bucket {self.bucket}"):
                raise
        except (BotoCoreError, OSError) as exc:
            endpoint = self._client.meta.endpoint_url
            raise S3Unreachable(unreachable_message(exc, endpoint=endpoint, bucket=self.bucket)) from exc

    def _refusal(self, code: str, creating: bool) -> str:
        """The line for refused credentials. A HEAD answer has no body, so a bare 403 is asked
        again with a request whose answer names the reason (InvalidAccessKeyId, SignatureDoesNotMatch...)."""
        if code in ("", "403", "Forbidden") and not creating:
            try:
                self._client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as exc:
                code = _error_code(exc)[0] or code
            except (BotoCoreError, OSError):
                pass
        # the credentials the client signs with (``explicit``: the ones given, else boto3's chain)
        credentials = getattr(getattr(self._client, "_request_signer", None), "_credentials", None)
        access_key = getattr(credentials, "access_key", None)
        return refusal_message(
            code,
            endpoint=self._client.meta.endpoint_url,
            bucket=self.bucket,
            access_key=access_key,
            source=credentials_source(getattr(credentials, "method", None)),
            creating=creating,
        )

    # -- writing -------------------------------------------------------------------------------------

    def _head_size(self, key: str) -> int | None:
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            code, status = _error_code(exc)
            if (status == 404 and code != "NoSuchBucket") or code in _NOT_FOUND_CODES:
                return None
            raise

    def _put_object(self, key: str, body: bytes | IO[bytes], size: int, digest: bytes) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentLength=size,
            ContentType="application/octet-stream",
            ChecksumSHA256=_b64_digest(digest),
        )

    def _store_manifest(self, manifest: ChunkManifest) -> None:
        raw = manifest.encode()
        self._put_object(self.manifest_key_for(manifest.sha256), raw, len(raw), hashlib.sha256(raw).digest())
        self._remember(manifest)

    def _ensure_manifest(self, manifest: ChunkManifest) -> None:
        if manifest.size <= self.chunk_size:
            return
        if self._head_size(self.manifest_key_for(manifest.sha256)) is None:
            self._store_manifest(manifest)

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
        # a known digest still travels as ChecksumSHA256: the S3 server verifies what it received
        digest = bytes.fromhex(check_blob_id(known_sha256)) if known_sha256 else hashlib.sha256(view).digest()
        sha256 = digest.hex()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise BlobIntegrityError(f"blob {expected_sha256}: received bytes hash to {sha256}")
        size = len(view)
        if size > MAX_SINGLE_PUT:
            raise BlobStoreError(f"blob {sha256}: {size} bytes exceed the single PUT limit")
        manifest = ChunkManifest.of_bytes(view, self.chunk_size, sha256) if size > self.chunk_size else None
        key = self.key_for(sha256)
        with self._errors("store", sha256):
            if not likely_new and self._head_size(key) == size:
                if manifest is not None:
                    self._ensure_manifest(manifest)
                return BlobRef(sha256, size, created=False)
            if manifest is not None:
                self._store_manifest(manifest)
            self._put_object(key, bytes(data), size, digest)
        return BlobRef(sha256, size, created=True)

    def put_file(self, path: str | os.PathLike[str], expected_sha256: str | None = None) -> BlobRef:
        """Stream the file at ``path``: one pass to hash it, then a streamed PUT (never all in memory)."""
        if expected_sha256 is not None:
            check_blob_id(expected_sha256)
        hasher = BlobHasher(self.chunk_size)
        with open(path, "rb") as src:
            buffer = bytearray(STREAM_BUFFER)
            while n := src.readinto(buffer):
                hasher.update(memoryview(buffer)[:n])
            sha256 = hasher.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise BlobIntegrityError(f"blob {expected_sha256}: file {path} hashes to {sha256}")
            if hasher.size > MAX_SINGLE_PUT:
                raise BlobStoreError(f"blob {sha256}: {hasher.size} bytes exceed the single PUT limit")
            manifest = hasher.manifest()
            key = self.key_for(sha256)
            with self._errors("store", sha256):
                if self._head_size(key) == hasher.size:
                    self._ensure_manifest(manifest)
                    return BlobRef(sha256, hasher.size, created=False)
                if hasher.size > self.chunk_size:
                    self._store_manifest(manifest)
                src.seek(0)
                # If the file changed since it was hashed, the server's checksum check rejects it.
                self._put_object(key, src, hasher.size, bytes.fromhex(sha256))
        return BlobRef(sha256, hasher.size, created=True)

    # -- reading -------------------------------------------------------------------------------------

    def _remember(self, manifest: ChunkManifest) -> None:
        with self._manifests_lock:
            self._manifests[manifest.sha256] = manifest
            self._manifests.move_to_end(manifest.sha256)
            while len(self._manifests) > _MANIFEST_CACHE_SIZE:
                self._manifests.popitem(last=False)

    def _load_manifest(self, sha256: str, size: int) -> ChunkManifest | None:
        """The blob's manifest (cached: manifests never change), None when missing or unusable."""
        with self._manifests_lock:
            manifest = self._manifests.get(sha256)
        if manifest is None:
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self.manifest_key_for(sha256))
                manifest = ChunkManifest.decode(response["Body"].read(), sha256)
            except ClientError as exc:
                if _error_code(exc)[0] in _NOT_FOUND_CODES:
                    return None
                raise
            except ManifestError:
                return None
            self._remember(manifest)
        if manifest.size != size:
            raise BlobIntegrityError(f"blob {sha256} is corrupt: {size} bytes stored, {manifest.size} expected")
        return manifest

    @staticmethod
    def _verified(sha256: str, data: bytes) -> bytes:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BlobIntegrityError(f"blob {sha256} is corrupt: stored bytes hash to {actual}")
        return data

    def _get(self, sha256: str, byte_range: str | None = None) -> tuple[bytes, int]:
        """GET the blob (or a ``bytes=a-b`` range of it): ``(body, total size)``."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key_for(sha256)}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        response = self._client.get_object(**kwargs)
        body = response["Body"].read()
        content_range = response.get("ContentRange")
        if content_range:
            match = _CONTENT_RANGE.match(content_range)
            if not match:
                raise BlobStoreError(f"blob {sha256}: unexpected Content-Range {content_range!r}")
            return body, int(match.group(3))
        return body, int(response.get("ContentLength", len(body)))

    def get(self, sha256: str) -> bytes:
        check_blob_id(sha256)
        with self._errors("read", sha256):
            body, _ = self._get(sha256)
        return self._verified(sha256, body)

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        check_blob_id(sha256)
        check_range(start, length)
        if length == 0:
            self.size(sha256)  # BlobNotFound when absent
            return b""
        cs = self.chunk_size
        # Ask for whole chunks: a small blob comes back entire in one request, a large one with
        # exactly the chunks its manifest can verify.
        first_byte = (start // cs) * cs
        last_byte = ((start + length - 1) // cs + 1) * cs - 1
        with self._errors("read", sha256):
            try:
                covered, total = self._get(sha256, f"bytes={first_byte}-{last_byte}")
            except ClientError as exc:
                if _error_code(exc)[0] != "InvalidRange":
                    raise
                self.size(sha256)  # the range starts past the end (or the blob is empty)
                return b""
            if start >= total:
                return b""
            end = min(start + length, total)
            if total <= cs:
                return self._verified(sha256, covered)[start:end]
            manifest = self._load_manifest(sha256, total)
            if manifest is None or manifest.chunk_size != cs:
                whole = self._verified(sha256, self._get(sha256)[0])
                if manifest is None:
                    with contextlib.suppress(BlobStoreError, BotoCoreError, ClientError, OSError):
                        self._store_manifest(ChunkManifest.of_bytes(whole, cs, sha256))
                return whole[start:end]
        first = first_byte // cs
        if not manifest.verify_chunks(first, covered):
            raise BlobIntegrityError(
                f"blob {sha256} is corrupt: chunk digest mismatch in bytes {first_byte}..{first_byte + len(covered)}"
            )
        return covered[start - first_byte : end - first_byte]

    def exists(self, sha256: str) -> bool:
        key = self.key_for(sha256)
        with self._errors("look up", sha256):
            return self._head_size(key) is not None

    def size(self, sha256: str) -> int:
        key = self.key_for(sha256)
        with self._errors("look up", sha256):
            size = self._head_size(key)
        if size is None:
            raise BlobNotFound(f"no blob {sha256}")
        return size

    # -- health --------------------------------------------------------------------------------------

    def health(self, timeout: float = 2.0) -> Health:
        """A HEAD on the bucket (reachable, the credentials accepted, the bucket there); on MinIO
        also its unauthenticated cluster probe, which says whether the erasure sets have write
        quorum and how many drives are healing."""
        where = f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        try:
            answer = self._probe(timeout).head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code, status = _error_code(exc)
            hint = {403: " (check CAMI_S3_ACCESS_KEY / CAMI_S3_SECRET_KEY)", 404: " (no such bucket)"}.get(status, "")
            return Health.down(f"{where}: HEAD bucket answered {status} {code}{hint}".rstrip())
        except NoCredentialsError:
            return Health.down(f"{where}: no S3 credentials configured")
        except (BotoCoreError, OSError) as exc:
            return Health.down(f"{where}: unreachable ({exc})")
        server = str(answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", ""))
        if self.endpoint_url and server.lower().startswith("minio"):
            return self._minio_cluster(where, timeout)
        return Health.ok(where)

    def _probe(self, timeout: float) -> S3Client:
        with self._probe_lock:
            if self._probe_client is None:
                config = self._client.meta.config.merge(
                    Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
                )
                access_key, secret_key = self._credentials
                self._probe_client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=access_key,
                    aws_secret_access_key=secret_key,
                    config=config,
                )
            return self._probe_client

    def _minio_cluster(self, where: str, timeout: float) -> Health:
        url = f"{(self.endpoint_url or '').rstrip('/')}/minio/health/cluster"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                healing = int(answer.headers.get("X-Minio-Healing-Drives") or 0)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 503:
                return Health.down(f"{where}: MinIO has no write quorum (/minio/health/cluster answered 503)")
            return Health.ok(f"{where} (MinIO cluster probe answered {exc.code})")
        except (OSError, ValueError):
            return Health.ok(f"{where} (MinIO cluster probe unanswered)")
        if healing:
            return Health.degraded(f"{where}: MinIO is healing {healing} drive(s)")
        offline = self._minio_drives_offline(timeout)
        if offline:
            return Health.degraded(f"{where}: MinIO drive(s) not in service: {', '.join(offline)}")
        return Health.ok(where)

    def _minio_drives_offline(self, timeout: float) -> list[str]:
        """The drives MinIO's admin API reports in another state than ``ok`` (taken away, offline,
        unformatted), as ``path (state)``: with write quorum kept the cluster probe answers 200 and
        says nothing of them. Empty when the credentials may not ask (not an administrator)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        # the credentials the client signs with (the ones given, else boto3's chain)
        resolved = getattr(getattr(self._client, "_request_signer", None), "_credentials", None)
        access_key = getattr(resolved, "access_key", None)
        secret_key = getattr(resolved, "secret_key", None)
        if not (access_key and secret_key):
            return []
        url = f"{(self.endpoint_url or '').rstrip('/')}/minio/admin/v3/info"
        signed = AWSRequest(method="GET", url=url, data=b"")
        S3SigV4Auth(Credentials(access_key, secret_key), "s3", self.region or "us-east-1").add_auth(signed)
        request = urllib.request.Request(url, method="GET", headers=dict(signed.headers.items()))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                info = json.load(answer)
        except urllib.error.HTTPError as exc:  # 403: these credentials are not an administrator's
            exc.close()
            return []
        except (OSError, ValueError):
            return []
        return [
            f"{drive.get('endpoint', '?')} ({drive.get('state', '?')})"
            for server in info.get("servers", [])
            for drive in server.get("drives", [])
            if drive.get("state") != "ok"
        ]
