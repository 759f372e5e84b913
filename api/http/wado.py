"""DICOMweb: WADO-RS retrieve (instances, metadata, frames, rendered) and WADO-URI (issue 5).

WADO-RS (PS3.18 10.4) under ``/dicomweb``:

=====================================================================  ===========================
``GET /studies/{study}[/series/{series}[/instances/{instance}]]``      the objects, as stored
``GET .../metadata`` (study, series, instance)                         DICOM JSON (PS3.18 F.2)
``GET .../instances/{instance}/frames/{n[,m...]}``                     raw pixel data per frame
``GET .../instances/{instance}/rendered``                              first frame, PNG or JPEG
``GET .../instances/{instance}/frames/{n}/rendered``                   frame n, PNG or JPEG
=====================================================================  ===========================

WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..`` with
``contentType`` application/dicom, image/jpeg (the default) or image/png, ``frameNumber``,
``windowCenter``/``windowWidth``, ``rows``/``columns``, ``imageQuality`` and ``transferSyntax``.

**Objects leave exactly as they were stored** (original quality, a regional rule): the bytes of the newest version of
each instance, streamed from the blob store, are the parts of a ``multipart/related;
type="application/dicom"`` answer. The archive never transcodes, so a retrieve has
``transfer-syntax=*`` semantics: an Accept without a transfer syntax (or with ``*``) gets every
object in its own syntax; a client that insists on syntaxes some object is not stored in gets 406
naming the syntaxes it would have to accept. Frames are the exception a client can ask for: the
pixel data of a frame may be sent decoded (``application/octet-stream``, native little endian)
when the client does not accept the compressed form.

**Access.** Objects, frames and rendered images need ``Action.READ_IMAGES`` (:mod:`schemas.policy`);
metadata needs ``Action.READ_PATIENT_DATA``. A refused request is recorded with
``outcome="denied"`` and answered 403. Every successful request leaves exactly one RecordAccessed
event, appended before the first byte is sent: ``retrieve`` (objects, metadata, frames) on channel
``wado-rs``, or ``retrieve``/``view`` on ``wado-uri``, with the UIDs asked for, the patient and the
number of instances sent. Rendered frames (WADO-RS) are the exception: a viewer asks for hundreds
of them, so they are recorded per series viewed (:class:`api.access.SeriesViews`): the first frame
a browser session or token asks of a series writes one ``view`` event naming the series and its
frame count, durable before that frame leaves; the viewer's further frames of that series go out
under it.

**Caching rendered frames.** A rendered frame is the same picture as long as the instance's
stored bytes and the request (frame, window, viewport, quality, media type) are: it carries a
strong ``ETag`` from those, and ``If-None-Match`` is answered 304 without rendering. A URL that
names the instance's content (``v``, the first 16 hex digits of its SHA-256, as the study page
gives it) is ``private, max-age=43200, immutable``: a second visit within the session costs
nothing. Without ``v`` it is ``private, no-cache`` (kept, revalidated). ``Vary: Cookie,
Authorization`` keeps one session's frames from being shown to another.

**Errors** are JSON ``{"error", "detail"}`` naming the parameter (400: a UID that is not a UID, a
bad window, frame, viewport or quality, a frame list naming a frame twice or more than
:data:`MAX_FRAMES_PER_REQUEST` frames, so an answer never exceeds the instance's pixel data; path
tricks such as ``..``, encoded slashes or NUL never get past the UID check and never reach the
blob store), 401 / 403, 404 (unknown study, series or
instance: no patient data), 406 (a media type or transfer syntax the archive cannot give), 503 (a
blob cannot be read).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass
from email.message import Message
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

import api.http.rendering as rendering
from api.access import AccessRecorder, Reader, SeriesScope, SeriesViews
from api.auth import SESSION_COOKIE, User
from api.http.base_url import base_url
from api.http.deps import require
from api.http.errors import ApiError
from projections.archive_index.views import Stored, resolve_patients, stored_instances
from projections.warehouse.base import Warehouse
from schemas.policy import Action, may, roles_that
from schemas.uids import is_uid
from streams.blobs import BlobStore, BlobStoreError

log = logging.getLogger("cami.wado")

#: Cache-Control of a rendered frame whose URL names the instance's content (``v``): the session's lifetime
IMMUTABLE = "private, max-age=43200, immutable"
#: Cache-Control of any other rendered frame: kept, but asked for again (answered 304 when unchanged)
REVALIDATE = "private, no-cache"
_CONTENT_TAG = re.compile(r"[0-9a-f]{16}")


class Archive(Protocol):
    """What the WADO routes read: the archive index and the blob store."""

    @property
    def warehouse(self) -> Warehouse: ...

    @property
    def blobs(self) -> BlobStore: ...


DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
#: binary values longer than this are bulk data: left out of metadata (pixel data: a BulkDataURI)
BULK_DATA_THRESHOLD = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: the media type a compressed frame is sent as (PS3.18 Table 8.7.3-3)
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: native syntaxes whose pixel data pydicom holds as little-endian bytes (deflate is inflated on read)
_LITTLE_ENDIAN_NATIVE = frozenset({EXPLICIT_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"})
MAX_FRAMES_PER_REQUEST = 10_000


# -- content negotiation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str]
    q: float


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first (q=0 dropped); ``*/*`` when absent."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges: list[MediaRange] = []
    for item in _split_commas(header):
        message = Message()
        message["content-type"] = item
        media = item.split(";", 1)[0].strip().lower()
        if "/" not in media:
            continue
        params = {str(k).lower(): str(v) for k, v in message.get_params(failobj=[])[1:]}
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _split_commas(header: str) -> list[str]:
    """Split on commas outside quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    return [i for i in items if i]


def _matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", media_type):
        return True
    major, _, minor = pattern.partition("/")
    return minor == "*" and media_type.startswith(major + "/")


def dicom_syntaxes(ranges: Sequence[MediaRange]) -> set[str] | None:
    """For a retrieve of objects: None = any transfer syntax; else the syntaxes the client accepts.
    Raises 406 when no range accepts DICOM objects at all."""
    accepted: set[str] = set()
    for r in ranges:
        if r.type == "multipart/related":
            part = r.params.get("type", DICOM).strip().lower()
            if not _matches(part, DICOM):
                continue
        elif not (_matches(r.type, "multipart/related") or _matches(r.type, DICOM)):
            continue
        syntax = r.params.get("transfer-syntax", "*").strip()
        if syntax == "*":
            return None
        accepted.add(syntax)
    if not accepted:
        raise ApiError(406, "not-acceptable", 'objects are sent as multipart/related; type="application/dicom"')
    return accepted


def _check_syntaxes(instances: Sequence[Stored], accepted: set[str] | None) -> None:
    if accepted is None:
        return
    refused = sorted({i.transfer_syntax for i in instances} - accepted)
    if refused:
        raise ApiError(
            406,
            "transfer-syntax-not-available",
            "the archive sends objects only in the transfer syntax they were stored in and does not transcode; "
            f"accept transfer-syntax=* or {', '.join(refused)}",
        )


def rendered_media_type(ranges: Sequence[MediaRange]) -> str:
    """image/jpeg or image/png, as the client prefers; 406 if it accepts neither."""
    for r in ranges:
        for candidate in (rendering.JPEG, rendering.PNG):
            if _matches(r.type, candidate):
                return candidate
    raise ApiError(406, "not-acceptable", "rendered images are available as image/jpeg or image/png")


def _metadata_acceptable(ranges: Sequence[MediaRange]) -> None:
    if not any(_matches(r.type, DICOM_JSON) or _matches(r.type, "application/json") for r in ranges):
        raise ApiError(406, "not-acceptable", "metadata is available as application/dicom+json")


# -- multipart -------------------------------------------------------------------------------------
def multipart(parts: Iterator[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """RFC 2387 body: each part with its Content-Type and Content-Length, then the close delimiter."""
    for content_type, data in parts:
        yield (
            (f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n").encode("ascii")
            + data
            + b"\r\n"
        )
    yield f"--{boundary}--\r\n".encode("ascii")


def _boundary() -> str:
    return f"cami-{uuid.uuid4().hex}"


# -- the objects -----------------------------------------------------------------------------------
def _blob(archive: Archive, stored: Stored) -> bytes:
    try:
        return archive.blobs.get(stored.sha256)
    except BlobStoreError as exc:
        log.error("blob %s of an instance cannot be read: %s", stored.sha256, type(exc).__name__)
        raise ApiError(503, "blob-unavailable", "the stored object cannot be read now; try again later") from None


def _objects(archive: Archive, instances: Sequence[Stored], first: bytes) -> Iterator[tuple[str, bytes]]:
    for index, stored in enumerate(instances):
        data = first if index == 0 else _blob(archive, stored)  # mid-stream: the connection is cut
        yield f"{DICOM}; transfer-syntax={stored.transfer_syntax}", data


def metadata_json(data: bytes, instance_url: str) -> dict[str, Any]:
    """PS3.18 F.2 DICOM JSON of a stored object: bulk binary values are left out, the pixel data
    is a BulkDataURI to the instance's frames."""
    ds = dcmread(io.BytesIO(data))
    pixel = ds.data_element("PixelData")  # None when absent
    frames = rendering.frame_count(ds)
    if "PixelData" in ds:
        del ds.PixelData
    _strip_bulk(ds)
    out: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, suppress_invalid_tags=True)
    if pixel is not None:
        vr = "OB" if ds.file_meta.get("TransferSyntaxUID", UID(EXPLICIT_LE)).is_encapsulated else str(pixel.VR)
        frame_list = ",".join(str(n) for n in range(1, frames + 1))
        out["7FE00010"] = {"vr": "OW" if vr == "OB or OW" else vr, "BulkDataURI": f"{instance_url}/frames/{frame_list}"}
    return out


def _strip_bulk(ds: Dataset) -> None:
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _strip_bulk(item)
        elif (
            any(vr in _BINARY_VRS for vr in str(element.VR).split(" or "))
            and element.value is not None
            and len(element.value) > BULK_DATA_THRESHOLD
        ):
            del ds[element.tag]


# -- frames ----------------------------------------------------------------------------------------
def parse_frames(text: str) -> list[int]:
    """``1`` or ``1,3,5`` -> frame numbers (1-based, each once); 400 naming ``frames`` otherwise."""
    numbers: list[int] = []
    for part in text.split(","):
        try:
            numbers.append(rendering.parse_frame(part.strip(), "frames"))
        except rendering.RenderError as exc:
            raise ApiError(400, "invalid-frames", str(exc)) from None
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise ApiError(400, "invalid-frames", f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    # each frame at most once: the answer is then never larger than the instance's pixel data
    seen: set[int] = set()
    for number in numbers:
        if number in seen:
            raise ApiError(400, "invalid-frames", f"frame {number} is asked for more than once")
        seen.add(number)
    return numbers


def frame_parts(
    data: bytes, numbers: Sequence[int], ranges: Sequence[MediaRange]
) -> tuple[str, list[tuple[str, bytes]]]:
    """(part media type of the response, [(part content type, frame bytes)]) for the frames asked
    for: native pixel data as stored; compressed frames as stored when the client accepts their
    media type or transfer syntax, else decoded to native little endian (application/octet-stream)."""
    ds = dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise ApiError(400, "invalid-frames", "the instance has no pixel data")
    count = rendering.frame_count(ds)
    outside = [n for n in numbers if n > count]
    if outside:
        raise ApiError(400, "invalid-frames", f"frame {outside[0]} is out of range: the instance has {count} frame(s)")
    syntax = ds.file_meta.get("TransferSyntaxUID", UID(EXPLICIT_LE))
    if not syntax.is_encapsulated:
        if not _accepts_part(ranges, OCTET_STREAM, EXPLICIT_LE):
            raise ApiError(
                406, "not-acceptable", 'native frames are sent as multipart/related; type="application/octet-stream"'
            )
        content_type = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}"
        bits = int(ds.BitsAllocated)
        if syntax in _LITTLE_ENDIAN_NATIVE and bits % 8 == 0:  # the stored bytes are the frames
            size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
            pixel = bytes(ds.PixelData)
            return OCTET_STREAM, [(content_type, pixel[(n - 1) * size : n * size]) for n in numbers]
        return OCTET_STREAM, [(content_type, _native(ds, n)) for n in numbers]
    media = FRAME_MEDIA_TYPES.get(str(syntax), OCTET_STREAM)
    if _accepts_part(ranges, media, str(syntax)) or _accepts_part(ranges, OCTET_STREAM, str(syntax), exact=True):
        compressed = [get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in numbers]
        return media, [(f"{media}; transfer-syntax={syntax}", frame) for frame in compressed]
    if _accepts_part(ranges, OCTET_STREAM, EXPLICIT_LE):
        decoded = [_native(ds, n) for n in numbers]
        return OCTET_STREAM, [(f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}", frame) for frame in decoded]
    raise ApiError(406, "not-acceptable", f"frames of this instance are available as {media} or {OCTET_STREAM}")


def _native(ds: Dataset, number: int) -> bytes:
    arr = pixel_array(ds, index=number - 1)
    return bytes(arr.astype(arr.dtype.newbyteorder("<")).tobytes())


def _accepts_part(ranges: Sequence[MediaRange], media: str, syntax: str, *, exact: bool = False) -> bool:
    """Does a range accept multipart parts of ``media`` in ``syntax``? ``exact``: only when the
    client names that syntax (or ``*``); otherwise an absent transfer-syntax means the default
    (explicit VR little endian for octet-stream, the media type's own syntax otherwise)."""
    for r in ranges:
        if r.type == "multipart/related":
            part = r.params.get("type", OCTET_STREAM).strip().lower()
        elif r.type in ("*/*", "multipart/*"):
            part = "*/*"
        else:
            part = r.type
        if not _matches(part, media):
            continue
        wanted = r.params.get("transfer-syntax")
        if wanted is None:
            if exact:
                continue
            if media != OCTET_STREAM or syntax == EXPLICIT_LE:
                return True
            continue
        if wanted.strip() in ("*", syntax):
            return True
    return False


# -- the routes ------------------------------------------------------------------------------------
def _reader(request: Request, user: User) -> Reader:
    return Reader(user.actor, user.organisation, request.client.host if request.client else None)


def _viewer(request: Request) -> str:
    """Who is viewing, for grouping rendered frames: the browser session, else the bearer token,
    else the address (a digest: the key is kept in memory, never the credential itself)."""
    credential = request.cookies.get(SESSION_COOKIE) or request.headers.get("authorization")
    if credential is None:
        credential = "address:" + (request.client.host if request.client else "")
    return hashlib.sha256(credential.encode("utf-8", "surrogateescape")).hexdigest()


def content_tag(stored: Stored) -> str:
    """The instance version's tag a viewer puts in ``v`` (the first 16 hex digits of its SHA-256)."""
    return stored.sha256[:16]


@dataclass(frozen=True)
class Picture:
    """A rendered frame as asked for: which frame, as what, in which window, size and quality."""

    frame: int
    media: str
    window: rendering.Window | None = None
    viewport: rendering.Viewport | None = None
    quality: int | None = None

    def etag(self, stored: Stored) -> str:
        """A strong ETag: the same stored bytes rendered the same way give the same picture."""
        key = json.dumps([rendering.RENDERER, stored.sha256, astuple(self)], separators=(",", ":"))
        return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def _matches_etag(header: str | None, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2: weak comparison, ``*`` matches any)."""
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _uid(value: str | None, parameter: str) -> str:
    if value is None or value == "":
        raise ApiError(400, f"missing-{parameter}", f"{parameter} is required")
    if not is_uid(value):
        raise ApiError(400, f"invalid-{parameter}", f"{parameter} is not a valid DICOM UID")
    return value


def _safe(value: str | None) -> str | None:
    return value if value and is_uid(value) else None


def _render_error(exc: rendering.RenderError) -> ApiError:
    if exc.parameter == "object":
        return ApiError(400, "not-renderable", str(exc))
    return ApiError(400, f"invalid-{exc.parameter}", str(exc))


class Wado:
    """The routes' work, over one archive and one access recorder."""

    def __init__(self, archive: Archive, recorder: AccessRecorder) -> None:
        self.archive = archive
        self.recorder = recorder
        self.series_views = SeriesViews(recorder)

    # -- access --------------------------------------------------------------------------------
    def allow(
        self,
        reader: Reader,
        needed: Action,
        *,
        action: str,
        channel: str,
        study: str | None,
        series: str | None = None,
        sop: str | None = None,
    ) -> None:
        if may(reader.role, needed):
            return
        self.recorder.record(
            reader,
            action=action,
            channel=channel,
            study_uid=_safe(study),
            series_uid=_safe(series),
            sop_uid=_safe(sop),
            outcome="denied",
        )
        allowed = ", ".join(sorted(roles_that(needed)))
        raise ApiError(403, "forbidden", f"role {reader.role} may not do this (allowed: {allowed})")

    def locate(self, study: str, series: str | None = None, sop: str | None = None) -> list[Stored]:
        found = stored_instances(self.archive.warehouse, study, series, sop)
        if not found:
            what = "instance" if sop else "series" if series else "study"
            raise ApiError(404, "not-found", f"the archive holds no such {what}")
        return found

    def patient(self, instances: Sequence[Stored]) -> str | None:
        ids = [i.patient_id for i in instances if i.patient_id]
        if not ids:
            return None
        return resolve_patients(self.archive.warehouse, set(ids))[ids[0]]

    def record(
        self,
        reader: Reader,
        instances: Sequence[Stored],
        *,
        action: str,
        channel: str,
        study: str,
        series: str | None,
        sop: str | None,
        query: Mapping[str, Any] | None = None,
    ) -> None:
        self.recorder.record(
            reader,
            action=action,
            channel=channel,
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            patient_id=self.patient(instances),
            query=query,
            results=len(instances),
        )

    # -- WADO-RS -------------------------------------------------------------------------------
    def retrieve(self, request: Request, reader: Reader, study: str, series: str | None, sop: str | None) -> Response:
        self.allow(
            reader, Action.READ_IMAGES, action="retrieve", channel="wado-rs", study=study, series=series, sop=sop
        )
        study = _uid(study, "study")
        series = None if series is None else _uid(series, "series")
        sop = None if sop is None else _uid(sop, "instance")
        accepted = dicom_syntaxes(parse_accept(request.headers.get("accept")))
        instances = self.locate(study, series, sop)
        _check_syntaxes(instances, accepted)
        first = _blob(self.archive, instances[0])  # an unreadable store answers 503 before anything is sent
        self.record(reader, instances, action="retrieve", channel="wado-rs", study=study, series=series, sop=sop)
        boundary = _boundary()
        syntaxes = {i.transfer_syntax for i in instances}
        media = f'multipart/related; type="{DICOM}"; boundary={boundary}'
        if len(syntaxes) == 1:
            media += f"; transfer-syntax={next(iter(syntaxes))}"
        return StreamingResponse(multipart(_objects(self.archive, instances, first), boundary), media_type=media)

    def metadata(self, request: Request, reader: Reader, study: str, series: str | None, sop: str | None) -> Response:
        self.allow(
            reader, Action.READ_PATIENT_DATA, action="retrieve", channel="wado-rs", study=study, series=series, sop=sop
        )
        study = _uid(study, "study")
        series = None if series is None else _uid(series, "series")
        sop = None if sop is None else _uid(sop, "instance")
        _metadata_acceptable(parse_accept(request.headers.get("accept")))
        instances = self.locate(study, series, sop)
        base = base_url(request) + "/dicomweb"
        body = []
        for stored in instances:
            url = f"{base}/studies/{stored.study_uid}/series/{stored.series_uid}/instances/{stored.sop_uid}"
            try:
                body.append(metadata_json(_blob(self.archive, stored), url))
            except ApiError:
                raise
            except Exception as exc:  # a stored object pydicom cannot read: say so, without its content
                log.error("metadata of a stored instance failed: %s", type(exc).__name__)
                raise ApiError(500, "unreadable-object", "a stored object cannot be converted to DICOM JSON") from None
        self.record(reader, instances, action="retrieve", channel="wado-rs", study=study, series=series, sop=sop)
        return JSONResponse(body, media_type=DICOM_JSON)

    def frames(self, request: Request, reader: Reader, study: str, series: str, sop: str, frames: str) -> Response:
        self.allow(
            reader, Action.READ_IMAGES, action="retrieve", channel="wado-rs", study=study, series=series, sop=sop
        )
        study, series, sop = _uid(study, "study"), _uid(series, "series"), _uid(sop, "instance")
        numbers = parse_frames(frames)
        instances = self.locate(study, series, sop)
        data = _blob(self.archive, instances[0])
        try:
            media, parts = frame_parts(data, numbers, parse_accept(request.headers.get("accept")))
        except ApiError:
            raise
        except Exception as exc:  # pixel data pydicom cannot split or decode: say so, without its content
            log.error("frames of a stored instance failed: %s", type(exc).__name__)
            raise ApiError(500, "unreadable-object", "the stored object's pixel data cannot be read") from None
        self.record(
            reader,
            instances,
            action="retrieve",
            channel="wado-rs",
            study=study,
            series=series,
            sop=sop,
            query={"frames": numbers},
        )
        boundary = _boundary()
        return StreamingResponse(
            multipart(iter(parts), boundary), media_type=f'multipart/related; type="{media}"; boundary={boundary}'
        )

    def rendered(
        self, request: Request, reader: Reader, study: str, series: str, sop: str, frames: str | None
    ) -> Response:
        self.allow(reader, Action.READ_IMAGES, action="view", channel="wado-rs", study=study, series=series, sop=sop)
        study, series, sop = _uid(study, "study"), _uid(series, "series"), _uid(sop, "instance")
        frame = 1
        if frames is not None:
            numbers = parse_frames(frames)
            if len(numbers) != 1:
                raise ApiError(400, "invalid-frames", "a rendered frame takes one frame number")
            frame = numbers[0]
        q = request.query_params
        try:
            window = rendering.parse_window(q["window"]) if "window" in q else None
            viewport = rendering.parse_viewport(q["viewport"]) if "viewport" in q else None
            quality = rendering.parse_quality(q["quality"]) if "quality" in q else None
        except rendering.RenderError as exc:
            raise _render_error(exc) from None
        pinned = q.get("v")
        if pinned is not None and not _CONTENT_TAG.fullmatch(pinned):
            raise ApiError(400, "invalid-v", "v is the instance's content tag: 16 hexadecimal digits")
        media = rendered_media_type(parse_accept(request.headers.get("accept")))
        instances = self.locate(study, series, sop)
        stored = instances[0]
        asked = Picture(frame, media, window, viewport, quality)
        etag = asked.etag(stored)
        headers = {
            "ETag": etag,
            # immutable while the URL names this content; otherwise kept but revalidated (a new
            # version of the instance changes the ETag); private: patient data, never in a shared cache
            "Cache-Control": IMMUTABLE if pinned == content_tag(stored) else REVALIDATE,
            # a cached frame is reused only by the session (or token) that was served it, so another
            # user of the same browser is asked for, and recorded, again
            "Vary": "Accept, Authorization, Cookie",
        }
        if _matches_etag(request.headers.get("if-none-match"), etag):
            self.view_series(request, reader, stored)
            return Response(status_code=304, headers=headers)
        picture = self._render(stored, asked, frame_parameter="frames")
        self.view_series(request, reader, stored)
        return Response(picture, media_type=media, headers=headers)

    def view_series(self, request: Request, reader: Reader, stored: Stored) -> None:
        """The series-view access event (one per viewer and series, :class:`api.access.SeriesViews`)."""

        def scope() -> SeriesScope:
            series = self.locate(stored.study_uid, stored.series_uid)
            frames = sum(max(s.frames or 1, 1) for s in series)
            return SeriesScope(self.patient(series), frames, len(series))

        self.series_views.record(reader, _viewer(request), stored.study_uid, stored.series_uid, scope)

    def _render(self, stored: Stored, asked: Picture, *, frame_parameter: str) -> bytes:
        data = _blob(self.archive, stored)
        try:
            return rendering.render(
                data,
                asked.frame,
                media_type=asked.media,
                window=asked.window,
                viewport=asked.viewport,
                quality=asked.quality,
            )
        except rendering.RenderError as exc:
            if exc.parameter == "frame":
                raise ApiError(400, f"invalid-{frame_parameter}", str(exc)) from None
            raise _render_error(exc) from None

    # -- WADO-URI ------------------------------------------------------------------------------
    def wado_uri(self, request: Request, reader: Reader) -> Response:
        q = request.query_params
        content_type = _uri_content_type(q.get("contentType"))
        action = "retrieve" if content_type == DICOM else "view"
        study, series, sop = q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")
        self.allow(reader, Action.READ_IMAGES, action=action, channel="wado-uri", study=study, series=series, sop=sop)
        if q.get("requestType") != "WADO":
            raise ApiError(400, "invalid-requestType", "requestType must be WADO")
        study, series, sop = _uid(study, "studyUID"), _uid(series, "seriesUID"), _uid(sop, "objectUID")
        if (q.get("anonymize") or "").lower() == "yes":
            raise ApiError(400, "invalid-anonymize", "the archive does not de-identify objects on retrieval")
        query = {k: v for k, v in q.items() if k not in ("requestType", "studyUID", "seriesUID", "objectUID")}
        if content_type == DICOM:
            for parameter in ("frameNumber", "windowCenter", "windowWidth", "rows", "columns", "region"):
                if parameter in q:
                    raise ApiError(400, f"invalid-{parameter}", f"{parameter} does not apply to application/dicom")
            instances = self.locate(study, series, sop)
            wanted = q.get("transferSyntax")
            if wanted is not None and wanted.strip() not in ("*", instances[0].transfer_syntax):
                raise ApiError(
                    406,
                    "transfer-syntax-not-available",
                    "the archive sends the object only in its stored transfer syntax "
                    f"{instances[0].transfer_syntax} and does not transcode",
                )
            data = _blob(self.archive, instances[0])
            self.record(
                reader,
                instances,
                action="retrieve",
                channel="wado-uri",
                study=study,
                series=series,
                sop=sop,
                query=query,
            )
            return Response(data, media_type=DICOM)
        try:
            frame = rendering.parse_frame(q["frameNumber"], "frameNumber") if "frameNumber" in q else 1
            window = rendering.window_from(q.get("windowCenter"), q.get("windowWidth"), ("windowCenter", "windowWidth"))
            viewport = _uri_viewport(q.get("rows"), q.get("columns"))
            quality = rendering.parse_quality(q["imageQuality"], "imageQuality") if "imageQuality" in q else None
        except rendering.RenderError as exc:
            raise _render_error(exc) from None
        instances = self.locate(study, series, sop)
        picture = self._render(
            instances[0], Picture(frame, content_type, window, viewport, quality), frame_parameter="frameNumber"
        )
        self.record(
            reader, instances, action="view", channel="wado-uri", study=study, series=series, sop=sop, query=query
        )
        return Response(picture, media_type=content_type)


def _uri_content_type(value: str | None) -> str:
    """WADO-URI contentType: a list, the first the archive supports wins; image/jpeg by default."""
    if value is None or not value.strip():
        return rendering.JPEG
    for item in value.split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in (DICOM, rendering.JPEG, rendering.PNG):
            return media
        if media in ("image/*", "*/*"):
            return rendering.JPEG
    raise ApiError(406, "invalid-contentType", "contentType must be application/dicom, image/jpeg or image/png")


def _uri_viewport(rows: str | None, columns: str | None) -> rendering.Viewport | None:
    if rows is None and columns is None:
        return None

    def size(value: str | None, parameter: str) -> int:
        if value is None:
            return rendering.MAX_VIEWPORT
        try:
            number = int(value)
        except ValueError:
            raise rendering.RenderError(parameter, f"{parameter} must be a positive integer") from None
        if not 0 < number <= rendering.MAX_VIEWPORT:
            raise rendering.RenderError(parameter, f"{parameter} must be between 1 and {rendering.MAX_VIEWPORT}")
        return number

    return rendering.Viewport(size(columns, "columns"), size(rows, "rows"))


_KEYWORDS = frozenset({"series", "instances", "metadata", "frames", "rendered", "thumbnail", "bulkdata", "pixeldata"})


def _plain_segment(segment: str) -> bool:
    """A path segment a DICOMweb URL can hold: a UID, a resource keyword or a frame list."""
    return is_uid(segment) or segment in _KEYWORDS or all(p.isdigit() for p in segment.split(","))


def router(archive: Archive, recorder: AccessRecorder) -> APIRouter:
    """The WADO-RS and WADO-URI routes, reading ``archive``'s index and blobs; each read recorded
    through ``recorder``."""
    routes = APIRouter()
    wado = Wado(archive, recorder)
    signed_in = Depends(require())  # the role is checked per route (and a refusal recorded)

    @routes.get("/dicomweb/studies/{study}", tags=["DICOMweb"], summary="WADO-RS: the study's objects as stored")
    def retrieve_study(request: Request, study: str, user: User = signed_in) -> Response:
        return wado.retrieve(request, _reader(request, user), study, None, None)

    @routes.get("/dicomweb/studies/{study}/series/{series}", tags=["DICOMweb"], summary="WADO-RS: the series' objects")
    def retrieve_series(request: Request, study: str, series: str, user: User = signed_in) -> Response:
        return wado.retrieve(request, _reader(request, user), study, series, None)

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}",
        tags=["DICOMweb"],
        summary="WADO-RS: an object",
    )
    def retrieve_instance(request: Request, study: str, series: str, instance: str, user: User = signed_in) -> Response:
        return wado.retrieve(request, _reader(request, user), study, series, instance)

    @routes.get(
        "/dicomweb/studies/{study}/metadata", tags=["DICOMweb"], summary="WADO-RS: the study's metadata (DICOM JSON)"
    )
    def study_metadata(request: Request, study: str, user: User = signed_in) -> Response:
        return wado.metadata(request, _reader(request, user), study, None, None)

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/metadata", tags=["DICOMweb"], summary="WADO-RS: series metadata"
    )
    def series_metadata(request: Request, study: str, series: str, user: User = signed_in) -> Response:
        return wado.metadata(request, _reader(request, user), study, series, None)

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata",
        tags=["DICOMweb"],
        summary="WADO-RS: instance metadata",
    )
    def instance_metadata(request: Request, study: str, series: str, instance: str, user: User = signed_in) -> Response:
        return wado.metadata(request, _reader(request, user), study, series, instance)

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered",
        tags=["DICOMweb"],
        summary="WADO-RS: the first frame rendered (image/jpeg or image/png; window, viewport, quality)",
    )
    def instance_rendered(request: Request, study: str, series: str, instance: str, user: User = signed_in) -> Response:
        return wado.rendered(request, _reader(request, user), study, series, instance, None)

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
        tags=["DICOMweb"],
        summary="WADO-RS: one frame rendered (image/jpeg or image/png; window, viewport, quality)",
    )
    def frame_rendered(
        request: Request, study: str, series: str, instance: str, frames: str, user: User = signed_in
    ) -> Response:
        return wado.rendered(request, _reader(request, user), study, series, instance, frames)

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        tags=["DICOMweb"],
        summary="WADO-RS: pixel data of frames (multipart/related)",
    )
    def frames_raw(
        request: Request, study: str, series: str, instance: str, frames: str, user: User = signed_in
    ) -> Response:
        return wado.frames(request, _reader(request, user), study, series, instance, frames)

    @routes.get("/wado", tags=["WADO-URI"], summary="WADO-URI: an object or a rendered frame")
    def wado_uri(request: Request, user: User = signed_in) -> Response:
        return wado.wado_uri(request, _reader(request, user))

    @routes.get("/dicomweb/studies/{rest:path}", include_in_schema=False)
    def no_such_resource(rest: str) -> Response:
        # reached only when no route matched, e.g. an identifier holding a slash, a dot segment or NUL
        if not all(_plain_segment(s) for s in rest.split("/")):
            raise ApiError(400, "invalid-path", "identifiers in the path must be DICOM UIDs")
        raise ApiError(404, "not-found", "no such DICOMweb resource")

    return routes
