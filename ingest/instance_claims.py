"""Claims on instance versions, shared by every ingest node: which node records version N of a
SOPInstanceUID, and for which bytes.

Each node's SOP index (:mod:`ingest.sop_index`) learns other nodes' arrivals from the log, a
moment after they happen. Two nodes receiving the same object at the same moment would each find
nothing held and each record version 1: two events of the same bytes. So before a node appends
``InstanceReceived`` for version N it *claims* ``(SOPInstanceUID, N)`` in the store all nodes share
(the blob store's bucket or directory), with an atomic create-if-absent:

* the claim is new: this node records version N;
* another node holds it for the **same bytes**: that node is recording them; this one waits until
  the claim says *recorded* (the holder marks it once its event is durable) and answers "already
  held" (no second event). If that never happens (the holder died between its claim and its
  append), the claim is taken over once it is older than :data:`TAKEOVER_SECONDS` (at once when
  its process, on this machine, has ended: :func:`holder_gone`), and until then the sender is
  asked to retry;
* another node holds it for **other bytes**: this node learns what was recorded and claims N+1.

Two implementations: :class:`LocalClaims` (files created with ``O_EXCL`` beside the blobs: nodes
on one machine sharing a directory) and :class:`S3Claims` (objects written with ``If-None-Match:
*``, which S3 and MinIO refuse with 412 when the key exists).
"""

from __future__ import annotations

import abc
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: a claim whose node recorded nothing for this long is taken over (its node died or lost its log)
TAKEOVER_SECONDS = 30.0
_UID = re.compile(r"[0-9.]{1,64}")


class ClaimError(Exception):
    """The shared store could not be asked (the arrival is refused as out of resources)."""


@dataclass(frozen=True)
class Claim:
    """Who holds version ``version`` of an instance, for which bytes, since how long."""

    sha256: str
    node: str
    age: float
    #: the holder's event is durable
    recorded: bool = False


def holder_gone(node: str) -> bool:
    """Whether the process that made a claim is known to have ended: a node on this machine
    (``host:pid:...``) whose process no longer runs. A restarted node or an import run again after
    a crash takes its own unfinished claims over at once instead of waiting them out."""
    host, _, rest = node.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs under another user: alive
        return False
    return False


def _key(sop_instance_uid: str, version: int) -> str:
    if not _UID.fullmatch(sop_instance_uid) or version < 1:
        raise ValueError("a claim names a SOPInstanceUID and a version from 1")
    return f"claims/{sop_instance_uid}/v{version}"


def _value(sha256: str, node: str, recorded: bool = False) -> bytes:
    return json.dumps({"sha256": sha256, "node": node, "recorded": recorded}).encode()


def _parse(data: bytes, age: float) -> Claim:
    try:
        fields: Any = json.loads(data)
        return Claim(str(fields["sha256"]), str(fields["node"]), age, bool(fields.get("recorded")))
    except (ValueError, KeyError, TypeError):
        return Claim("", "", age)  # torn or foreign: no bytes match it, it ages out


class InstanceClaims(abc.ABC):
    @abc.abstractmethod
    def claim(self, sop_instance_uid: str, version: int, sha256: str, node: str) -> Claim | None:
        """None when this call created the claim; otherwise the claim that was there."""

    @abc.abstractmethod
    def read(self, sop_instance_uid: str, version: int) -> Claim | None:
        """The claim on this version, if any."""

    @abc.abstractmethod
    def replace(self, sop_instance_uid: str, version: int, sha256: str, node: str, *, recorded: bool) -> None:
        """Write this node's claim over whatever is there (a stale claim taken over, or its own
        marked recorded once the event is durable)."""


class LocalClaims(InstanceClaims):
    """Claims as files under ``root``/claims (nodes sharing the blob directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sop_instance_uid: str, version: int) -> Path:
        return self.root / _key(sop_instance_uid, version)

    def claim(self, sop_instance_uid: str, version: int, sha256: str, node: str) -> Claim | None:
        path = self._path(sop_instance_uid, version)
        # written whole under another name, then linked into place: link() creates the name only
        # if it is free, so no node ever reads a claim half written
        spare = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            spare.write_bytes(_value(sha256, node))
            try:
                os.link(spare, path)
                return None
            except FileExistsError:
                return _parse(path.read_bytes(), time.time() - path.stat().st_mtime)
            finally:
                spare.unlink(missing_ok=True)
        except OSError as exc:
            raise ClaimError(f"cannot claim {path}: {exc}") from exc

    def read(self, sop_instance_uid: str, version: int) -> Claim | None:
        path = self._path(sop_instance_uid, version)
        try:
            return _parse(path.read_bytes(), time.time() - path.stat().st_mtime)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ClaimError(f"cannot read the claim {path}: {exc}") from exc

    def replace(self, sop_instance_uid: str, version: int, sha256: str, node: str, *, recorded: bool) -> None:
        path = self._path(sop_instance_uid, version)
        spare = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            spare.write_bytes(_value(sha256, node, recorded))
            os.replace(spare, path)
        except OSError as exc:
            raise ClaimError(f"cannot write the claim {path}: {exc}") from exc


class S3Claims(InstanceClaims):
    """Claims as objects under ``prefix``claims/ in the blob bucket (conditional writes)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def claim(self, sop_instance_uid: str, version: int, sha256: str, node: str) -> Claim | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + _key(sop_instance_uid, version)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=_value(sha256, node), IfNoneMatch="*")
            return None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status not in (409, 412):  # 412: it exists; 409: another conditional write raced
                raise ClaimError(f"cannot claim s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise ClaimError(f"cannot claim s3://{self.bucket}/{key}: {exc}") from exc
        held = self.read(sop_instance_uid, version)
        return held if held is not None else Claim("", "", 0.0)  # gone again: it ages out

    def read(self, sop_instance_uid: str, version: int) -> Claim | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + _key(sop_instance_uid, version)
        try:
            held = self.client.get_object(Bucket=self.bucket, Key=key)
            age = time.time() - held["LastModified"].timestamp()
            return _parse(held["Body"].read(), age)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise ClaimError(f"cannot read the claim s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise ClaimError(f"cannot read the claim s3://{self.bucket}/{key}: {exc}") from exc

    def replace(self, sop_instance_uid: str, version: int, sha256: str, node: str, *, recorded: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.prefix + _key(sop_instance_uid, version)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=_value(sha256, node, recorded))
        except (ClientError, BotoCoreError) as exc:
            raise ClaimError(f"cannot write the claim s3://{self.bucket}/{key}: {exc}") from exc


def instance_claims(blobs: Any) -> InstanceClaims | None:
    """The claims that go with a blob store: objects in its bucket, files in its directory (None
    for a store nodes cannot share)."""
    if getattr(blobs, "backend", None) == "s3":
        return S3Claims(blobs.client, blobs.bucket, blobs.prefix)
    root = getattr(blobs, "root", None)
    return LocalClaims(Path(root)) if root is not None else None
