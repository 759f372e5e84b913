"""WADO-RS and WADO-URI against a running archive, driven the way peers drive it.

A study is sent by dcmtk's ``storescu`` with one instance in each transfer syntax modalities use
(explicit and implicit VR little endian, deflate, JPEG lossless, JPEG baseline, JPEG-LS, RLE),
plus a three-frame CT in another study. Retrieval goes through the unmodified third-party
``dicomweb_client.api.DICOMwebClient`` (WADO-RS) and ``httpx`` (WADO-URI and the error cases).

**What "the bytes equal the originals" compares.** The client decodes each multipart part with
``pydicom.dcmread`` and returns Datasets, which cannot be compared byte for byte. So the client is
given a ``requests.Session`` (its documented ``session`` argument, the client itself unchanged)
whose response hook keeps the raw HTTP body the client received; the test splits that body on
the boundary the response declares, with its own few lines (not the archive's parser), and
compares every part with the *whole file storescu sent*, Part-10 header included. That holds
because the archive keeps the data set as received and rewrites the Part-10 header
deterministically from what the association announced, which reproduces dcmtk's own header. The
Datasets the client decoded are checked too (SOP instance UID, transfer syntax, pixel data).
"""

from __future__ import annotations

import http.client as http_client
import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import get_frame
from pydicom.uid import generate_uid

from projections.archive_index.views import instance_location, stored_instances
from schemas.events import Event
from tests.support import studies
from tests.support.dicomweb import split_multipart
from tests.support.readside import ROOT_UID, SENDER_AE, ReadSide

SYNTAXES = list(studies.TRANSFER_SYNTAXES)
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_LS = "1.2.840.10008.1.2.4.80"
PATIENT_ID = "WADO-7001"
MF_PATIENT_ID = "WADO-7002"
PATIENT_NAMES = [name for _, name in studies.PATIENTS]


@dataclass
class Stored:
    side: ReadSide
    study: str
    sent: list[studies.SentFile]
    series: dict[str, str]  # SOP instance UID -> series UID
    mf_study: str
    mf_series: str
    mf_sop: str
    mf_frames: np.ndarray = field(repr=False)

    def by_syntax(self, syntax: str) -> studies.SentFile:
        return next(f for f in self.sent if f.transfer_syntax == syntax)


def _multiframe(folder: Path, study: str) -> tuple[Path, str, str, np.ndarray]:
    ds = studies.instance(study, generate_uid(), 1, patient_id=MF_PATIENT_ID)
    ds.NumberOfFrames = 3
    frames = np.stack([np.full((64, 64), 500 * (i + 1), dtype=np.uint16) for i in range(3)])
    frames[:, :, :8] = 0
    ds.PixelData = frames.tobytes()
    path = folder / "multiframe.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), frames


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp("wado")
    with ReadSide.start(tmp) as side:
        study = ROOT_UID + "7001." + str(uuid.uuid4().int)[:20]  # no leading zero in the component
        sent = side.store_study(study, len(SYNTAXES), patient_id=PATIENT_ID, transfer_syntaxes=SYNTAXES)
        mf_study = ROOT_UID + "7002." + str(uuid.uuid4().int)[:20]
        path, mf_series, mf_sop, frames = _multiframe(tmp / "mf", mf_study)
        result = studies.storescu(
            "127.0.0.1",
            side.dicom_port,
            [path],
            calling=SENDER_AE[next(iter(SENDER_AE))],
            profile=studies.storescu_profile(tmp / "mf" / "storescu.cfg"),
        )
        assert list(studies.outcomes(result.stdout + result.stderr).values()) == ["Success"], result.stderr
        side.wait_indexed(study, len(SYNTAXES))
        side.wait_indexed(mf_study, 1)
        series = {f.sop_instance_uid: str(dcmread(f.path, stop_before_pixels=True).SeriesInstanceUID) for f in sent}
        yield Stored(side, study, sent, series, mf_study, mf_series, mf_sop, frames)


# -- helpers ---------------------------------------------------------------------------------------
class Capture:
    """A requests session for the client that keeps every raw response (the client is unchanged)."""

    def __init__(self) -> None:
        self.session = requests.Session()
        self.responses: list[requests.Response] = []
        self.session.hooks["response"].append(self._keep)

    def _keep(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        _ = response.content  # read now (the client asks for non-streamed bodies: it is cached)
        self.responses.append(response)


def dicomweb(side: ReadSide, user: str, capture: Capture | None = None) -> DICOMwebClient:
    return DICOMwebClient(
        url=side.url + "/dicomweb",
        headers={"Authorization": f"Bearer {side.tokens[user]}"},
        session=capture.session if capture else None,
    )


def access_ids(side: ReadSide) -> set[str]:
    return {e.envelope.event_id for e in side.accesses()}


def new_accesses(side: ReadSide, before: set[str]) -> list[Event]:
    return [e for e in side.accesses() if e.envelope.event_id not in before]


def one_access(side: ReadSide, before: set[str], **expected: Any) -> Event:
    events = new_accesses(side, before)
    assert len(events) == 1, [e.payload for e in events]
    (event,) = events
    for key, value in expected.items():
        assert event.payload[key] == value, (key, event.payload)
    return event


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_clean_error(response: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    """A JSON error body with the status asked for and no patient data in it."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"}
    if error is not None:
        assert body["error"] == error, body
    for secret in (PATIENT_ID, MF_PATIENT_ID, *PATIENT_NAMES, "Орлова", "19720305"):
        assert secret not in response.text
    return body


def instance_url(s: Stored, sent: studies.SentFile) -> str:
    return f"/dicomweb/studies/{s.study}/series/{s.series[sent.sop_instance_uid]}/instances/{sent.sop_instance_uid}"


# -- WADO-RS objects -------------------------------------------------------------------------------
def test_retrieve_study_gives_back_every_original_file(stored: Stored) -> None:
    side = stored.side
    capture = Capture()
    before = access_ids(side)
    datasets = dicomweb(side, "dr.petrov", capture).retrieve_study(stored.study)

    # the client decoded one Dataset per instance, each in the syntax it was sent in
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(f.sop_instance_uid for f in stored.sent)
    syntax_of = {f.sop_instance_uid: f.transfer_syntax for f in stored.sent}
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == syntax_of[str(ds.SOPInstanceUID)]
        original = dcmread(next(f.path for f in stored.sent if f.sop_instance_uid == ds.SOPInstanceUID))
        assert ds.PixelData == original.PixelData

    # byte for byte: every part of the body the client received is one of the files storescu sent
    (response,) = capture.responses
    parts = split_multipart(response)
    assert sorted(data for _, data in parts) == sorted(f.path.read_bytes() for f in stored.sent)
    for headers, data in parts:
        sop = str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax_of[sop]}"

    one_access(
        side,
        before,
        action="retrieve",
        channel="wado-rs",
        StudyInstanceUID=stored.study,
        SeriesInstanceUID=None,
        PatientID=PATIENT_ID,
        results=len(SYNTAXES),
        outcome="ok",
    )


@pytest.mark.parametrize("syntax", [JPEG_LS, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50"])
def test_retrieve_series_and_instance_give_back_the_original(stored: Stored, syntax: str) -> None:
    side = stored.side
    sent = stored.by_syntax(syntax)
    series = stored.series[sent.sop_instance_uid]
    capture = Capture()
    client = dicomweb(side, "ref.ivanov", capture)

    before = access_ids(side)
    (ds,) = client.retrieve_series(stored.study, series)
    assert ds.SOPInstanceUID == sent.sop_instance_uid
    one_access(side, before, action="retrieve", channel="wado-rs", SeriesInstanceUID=series, results=1)

    before = access_ids(side)
    ds = client.retrieve_instance(
        stored.study, series, sent.sop_instance_uid, media_types=(("application/dicom", "*"),)
    )
    assert ds.file_meta.TransferSyntaxUID == syntax
    event = one_access(side, before, action="retrieve", channel="wado-rs", results=1, PatientID=PATIENT_ID)
    assert event.payload["SOPInstanceUID"] == sent.sop_instance_uid
    assert event.envelope.actor.user == "ref.ivanov"

    for response in capture.responses:
        ((_, data),) = split_multipart(response)
        assert data == sent.path.read_bytes()


def test_a_transfer_syntax_the_object_is_not_in_is_406_never_a_transcode(stored: Stored) -> None:
    side = stored.side
    jls, native = stored.by_syntax(JPEG_LS), stored.by_syntax(EXPLICIT_LE)
    insist = {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'}
    before = access_ids(side)
    with side.client("dr.petrov") as http:
        refused = http.get(instance_url(stored, jls), headers=insist)
        body = assert_clean_error(refused, 406, "transfer-syntax-not-available")
        assert JPEG_LS in body["detail"]
        fine = http.get(instance_url(stored, native), headers=insist)
        assert fine.status_code == 200
        assert split_multipart(fine)[0][1] == native.path.read_bytes()
        either = http.get(
            instance_url(stored, jls),
            headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}, '
            'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )  # fmt: skip
        assert split_multipart(either)[0][1] == jls.path.read_bytes()
        assert http.get(instance_url(stored, jls), headers={"Accept": "image/png"}).status_code == 406
    assert len(new_accesses(side, before)) == 2  # the two objects sent; refusals read nothing

    with pytest.raises(requests.HTTPError) as failure:
        dicomweb(side, "dr.petrov").retrieve_study(stored.study, media_types=(("application/dicom", EXPLICIT_LE),))
    assert failure.value.response.status_code == 406


def test_a_resent_instance_is_retrieved_in_its_newest_version(stored: Stored, tmp_path: Path) -> None:
    side = stored.side
    study = ROOT_UID + "7003." + str(uuid.uuid4().int)[:20]
    (first,) = side.store_study(study, 1, patient_id=PATIENT_ID)
    side.wait_indexed(study, 1)
    # the same SOP instance again with other pixels: the archive keeps both, as versions 1 and 2
    ds = dcmread(first.path)
    ds.PixelData = (np.frombuffer(ds.PixelData, dtype="<u2") + 7).astype("<u2").tobytes()
    ds.save_as(tmp_path / "src.dcm", enforce_file_format=True)
    second = tmp_path / "v2.dcm"
    subprocess.run(
        ["/usr/bin/dcmconv", "+te", str(tmp_path / "src.dcm"), str(second)], check=True, env=studies.DCMTK_ENV
    )
    result = studies.storescu(
        "127.0.0.1", side.dicom_port, [second], calling=SENDER_AE[next(iter(SENDER_AE))],
        profile=studies.storescu_profile(tmp_path / "storescu.cfg"),
    )  # fmt: skip
    assert list(studies.outcomes(result.stdout + result.stderr).values()) == ["Success"]
    deadline = time.monotonic() + 30
    while (instance_location(side.archive.warehouse, first.sop_instance_uid) or {}).get("version") != 2:
        assert time.monotonic() < deadline, "version 2 not indexed"
        time.sleep(0.05)

    capture = Capture()
    (ds2,) = dicomweb(side, "dr.petrov", capture).retrieve_study(study)
    assert ds2.PixelData == ds.PixelData
    ((_, data),) = split_multipart(capture.responses[0])
    assert data == second.read_bytes() != first.path.read_bytes()


# -- metadata --------------------------------------------------------------------------------------
def test_metadata_is_dicom_json_without_bulk_data(stored: Stored) -> None:
    side = stored.side
    client = dicomweb(side, "auditor")  # patient data, not images
    before = access_ids(side)
    study = client.retrieve_study_metadata(stored.study)
    one_access(side, before, action="retrieve", channel="wado-rs", results=len(SYNTAXES), PatientID=PATIENT_ID)
    assert len(study) == len(SYNTAXES)
    names = set()
    for item in study:
        assert item["0020000D"] == {"vr": "UI", "Value": [stored.study]}
        assert item["00100020"]["Value"] == [PATIENT_ID]
        names.add(item["00100010"]["Value"][0]["Alphabetic"])
        pixel = item["7FE00010"]
        assert "InlineBinary" not in pixel and pixel["vr"] in ("OB", "OW")
        sop = item["00080018"]["Value"][0]
        # dicomweb-client sends a Host header without the port: the URI still names the archive's
        assert pixel["BulkDataURI"] == (
            f"{side.url}/dicomweb/studies/{stored.study}/series/{stored.series[sop]}/instances/{sop}/frames/1"
        )
        assert all("InlineBinary" not in v for v in item.values())
    assert names == set(PATIENT_NAMES)  # decoded from UTF-8, ISO_IR 144 and ISO 2022 IR 144

    sent = stored.by_syntax(JPEG_LS)
    before = access_ids(side)
    instance = client.retrieve_instance_metadata(
        stored.study, stored.series[sent.sop_instance_uid], sent.sop_instance_uid
    )
    assert instance["00080018"]["Value"] == [sent.sop_instance_uid]
    # the procedure code sequence survives as nested DICOM JSON
    assert instance["00081032"]["Value"][0]["00080100"]["Value"] == ["A06.09.005"]
    one_access(side, before, SOPInstanceUID=sent.sop_instance_uid, results=1)

    before = access_ids(side)
    series = client.retrieve_series_metadata(stored.study, stored.series[sent.sop_instance_uid])
    assert [i["00080018"]["Value"][0] for i in series] == [sent.sop_instance_uid]
    one_access(side, before, results=1)


# -- rendered --------------------------------------------------------------------------------------
def test_rendered_instance_and_frames_through_the_client(stored: Stored) -> None:
    side = stored.side
    client = dicomweb(side, "dr.petrov")
    sent = stored.by_syntax(EXPLICIT_LE)
    series = stored.series[sent.sop_instance_uid]

    before = access_ids(side)
    png = client.retrieve_instance_rendered(stored.study, series, sent.sop_instance_uid, media_types=("image/png",))
    image = picture(png)
    assert image.format == "PNG" and image.size == (64, 64)
    # rendered frames are recorded per series viewed: the series, and every frame it holds
    in_series = sum(1 for s in stored.series.values() if s == series)
    view = one_access(
        side, before, action="view", channel="wado-rs", SeriesInstanceUID=series, SOPInstanceUID=None, results=in_series
    )
    assert view.payload["PatientID"] == PATIENT_ID
    assert json.loads(view.payload["query"]) == {"frames": in_series, "grouped": "series", "instances": in_series}
    before = access_ids(side)

    narrow = client.retrieve_instance_rendered(
        stored.study, series, sent.sop_instance_uid, media_types=("image/png",), params={"window": "40,20"}
    )
    wide = client.retrieve_instance_rendered(
        stored.study, series, sent.sop_instance_uid, media_types=("image/png",), params={"window": "2000,4000,linear"}
    )
    assert not np.array_equal(np.asarray(picture(narrow)), np.asarray(picture(wide)))
    assert np.asarray(picture(narrow)).max() == 255 and np.asarray(picture(wide)).max() < 128

    jpeg = client.retrieve_instance_rendered(
        stored.study,
        series,
        sent.sop_instance_uid,
        media_types=("image/jpeg",),
        params={"viewport": "32,32", "quality": "80"},
    )
    assert picture(jpeg).format == "JPEG" and picture(jpeg).size == (32, 32)

    before = access_ids(side)
    frames = [
        np.asarray(
            picture(
                client.retrieve_instance_frames_rendered(
                    stored.mf_study, stored.mf_series, stored.mf_sop, [n], media_types=("image/png",),
                    params={"window": "1000,1001"},
                )
            )
        )
        for n in (1, 2, 3)
    ]  # fmt: skip
    assert [int(f[32, 32]) for f in frames] == [0, 128, 255]  # 500, 1000, 1500 around centre 1000
    # the windows, viewport and quality above were the same series view: no event of their own;
    # the three frames of the other series are one more view, covering its three frames
    (event,) = new_accesses(side, before)
    assert event.payload["PatientID"] == MF_PATIENT_ID and event.payload["action"] == "view"
    assert event.payload["SeriesInstanceUID"] == stored.mf_series and event.payload["results"] == 3

    # another reader (its own token) is recorded on its own
    before = access_ids(side)
    dicomweb(side, "ref.ivanov").retrieve_instance_rendered(stored.study, series, sent.sop_instance_uid)
    (other,) = new_accesses(side, before)
    assert other.envelope.actor.user == "ref.ivanov" and other.payload["SeriesInstanceUID"] == series


def test_rendered_frames_are_cached_by_content(stored: Stored) -> None:
    side = stored.side
    sent = stored.by_syntax(EXPLICIT_LE)
    url = instance_url(stored, sent) + "/rendered"
    with side.client("admin") as http:
        first = http.get(url, params={"viewport": "32,32"}, headers={"Accept": "image/jpeg"})
        assert first.status_code == 200
        etag = first.headers["etag"]
        assert etag.startswith('"') and not etag.startswith("W/")
        assert first.headers["cache-control"] == "private, no-cache"
        assert {v.strip() for v in first.headers["vary"].split(",")} >= {"Cookie", "Authorization", "Accept"}

        # unchanged: 304, nothing rendered or sent; a different rendering is a different ETag
        again = http.get(url, params={"viewport": "32,32"}, headers={"Accept": "image/jpeg", "If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        weak = http.get(
            url, params={"viewport": "32,32"}, headers={"Accept": "image/jpeg", "If-None-Match": "W/" + etag}
        )
        assert weak.status_code == 304
        other = http.get(url, params={"viewport": "16,16"}, headers={"Accept": "image/jpeg", "If-None-Match": etag})
        assert other.status_code == 200 and other.headers["etag"] != etag
        png = http.get(url, params={"viewport": "32,32"}, headers={"Accept": "image/png", "If-None-Match": etag})
        assert png.status_code == 200 and png.headers["etag"] != etag

        # the URL naming the instance's content (as the study page gives it) is cached for the session
        (row,) = stored_instances(side.archive.warehouse, stored.study, sop_uid=sent.sop_instance_uid)
        pinned = http.get(url, params={"viewport": "32,32", "v": row.sha256[:16]}, headers={"Accept": "image/jpeg"})
        assert pinned.headers["cache-control"] == "private, max-age=43200, immutable"
        assert pinned.headers["etag"] == etag
        stale = http.get(url, params={"viewport": "32,32", "v": "0" * 16}, headers={"Accept": "image/jpeg"})
        assert stale.status_code == 200 and stale.headers["cache-control"] == "private, no-cache"
        bad = http.get(url, params={"v": "not-a-tag"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid-v"


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_every_stored_transfer_syntax_renders(stored: Stored, syntax: str) -> None:
    sent = stored.by_syntax(syntax)
    expected = dcmread(sent.path).pixel_array
    with stored.side.client("admin") as http:
        response = http.get(instance_url(stored, sent) + "/rendered", headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = np.asarray(picture(response.content))
    assert image.shape == expected.shape
    # no window in the objects: min..max, so the darkest source pixel is black and the brightest white
    assert image[np.unravel_index(expected.argmin(), expected.shape)] == 0
    assert image[np.unravel_index(expected.argmax(), expected.shape)] == 255


# -- frames ----------------------------------------------------------------------------------------
def test_raw_frames(stored: Stored) -> None:
    side = stored.side
    client = dicomweb(side, "dr.petrov")
    before = access_ids(side)
    frames = client.retrieve_instance_frames(stored.mf_study, stored.mf_series, stored.mf_sop, [1, 3])
    assert frames == [stored.mf_frames[0].tobytes(), stored.mf_frames[2].tobytes()]
    one_access(side, before, action="retrieve", channel="wado-rs", results=1, PatientID=MF_PATIENT_ID)

    # a JPEG-LS frame: as stored to a client that takes any media type (the client's default,
    # multipart/related; type="*/*"), decoded to native little endian for application/octet-stream
    sent = stored.by_syntax(JPEG_LS)
    series = stored.series[sent.sop_instance_uid]
    original = dcmread(sent.path)
    capture = Capture()
    (as_stored,) = dicomweb(side, "dr.petrov", capture).retrieve_instance_frames(
        stored.study, series, sent.sop_instance_uid, [1]
    )
    assert as_stored == get_frame(original.PixelData, 0, number_of_frames=1)
    ((headers, _),) = split_multipart(capture.responses[0])
    assert headers["content-type"] == f"image/jls; transfer-syntax={JPEG_LS}"
    (decoded,) = client.retrieve_instance_frames(
        stored.study, series, sent.sop_instance_uid, [1], media_types=("application/octet-stream",)
    )
    assert decoded == original.pixel_array.astype("<u2").tobytes()


def test_bulk_data_uris_lead_dicomweb_client_back_to_the_pixel_data(stored: Stored) -> None:
    side = stored.side
    client = dicomweb(side, "dr.petrov")
    metadata = client.retrieve_instance_metadata(stored.mf_study, stored.mf_series, stored.mf_sop)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert urlsplit(uri).port == urlsplit(side.url).port
    before = access_ids(side)
    assert client.retrieve_bulkdata(uri) == [frame.tobytes() for frame in stored.mf_frames]
    one_access(side, before, action="retrieve", channel="wado-rs", results=1, PatientID=MF_PATIENT_ID)


def test_a_frame_list_names_each_frame_once(stored: Stored) -> None:
    side = stored.side
    url = f"/dicomweb/studies/{stored.mf_study}/series/{stored.mf_series}/instances/{stored.mf_sop}/frames/"
    before = access_ids(side)
    with side.client("dr.petrov") as http:
        accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
        body = assert_clean_error(http.get(url + ",".join(["1"] * 5_000), headers=accept), 400, "invalid-frames")
        assert "frame 1 is asked for more than once" in body["detail"]
        assert_clean_error(http.get(url + "3,1,3", headers=accept), 400, "invalid-frames")
        assert new_accesses(side, before) == []  # nothing was sent
        response = http.get(url + "3,1", headers=accept)
    assert response.status_code == 200
    assert [data for _, data in split_multipart(response)] == [
        stored.mf_frames[2].tobytes(),
        stored.mf_frames[0].tobytes(),
    ]


# -- WADO-URI --------------------------------------------------------------------------------------
def test_wado_uri(stored: Stored) -> None:
    side = stored.side
    sent = stored.by_syntax("1.2.840.10008.1.2")
    ids = {
        "requestType": "WADO",
        "studyUID": stored.study,
        "seriesUID": stored.series[sent.sop_instance_uid],
        "objectUID": sent.sop_instance_uid,
    }
    with side.client("dr.petrov") as http:
        before = access_ids(side)
        dicom = http.get("/wado", params={**ids, "contentType": "application/dicom"})
        assert dicom.status_code == 200 and dicom.headers["content-type"] == "application/dicom"
        assert dicom.content == sent.path.read_bytes()
        one_access(side, before, action="retrieve", channel="wado-uri", SOPInstanceUID=sent.sop_instance_uid, results=1)

        before = access_ids(side)
        jpeg = http.get("/wado", params=ids)  # image/jpeg is the default
        assert jpeg.headers["content-type"] == "image/jpeg" and picture(jpeg.content).size == (64, 64)
        one_access(side, before, action="view", channel="wado-uri", PatientID=PATIENT_ID, results=1)

        dark = http.get(
            "/wado", params={**ids, "contentType": "image/png", "windowCenter": "4000", "windowWidth": "10"}
        )
        light = http.get(
            "/wado", params={**ids, "contentType": "image/png", "windowCenter": "-100", "windowWidth": "10"}
        )
        assert np.asarray(picture(dark.content)).max() == 0 and np.asarray(picture(light.content)).min() == 255

        small = http.get("/wado", params={**ids, "rows": "16", "columns": "32", "imageQuality": "50"})
        assert picture(small.content).size == (16, 16)

        mf = {"requestType": "WADO", "studyUID": stored.mf_study, "seriesUID": stored.mf_series}
        frame = http.get(
            "/wado", params={**mf, "objectUID": stored.mf_sop, "contentType": "image/png", "frameNumber": "3"}
        )
        assert frame.status_code == 200 and picture(frame.content).size == (64, 64)
        outside = http.get("/wado", params={**mf, "objectUID": stored.mf_sop, "frameNumber": "4"})
        assert "3 frame" in assert_clean_error(outside, 400, "invalid-frameNumber")["detail"]

        before = access_ids(side)
        for params, error in [
            ({**ids, "requestType": "WADO-RS"}, "invalid-requestType"),
            ({k: v for k, v in ids.items() if k != "objectUID"}, "missing-objectUID"),
            ({**ids, "studyUID": "1.2.abc"}, "invalid-studyUID"),
            ({**ids, "windowCenter": "40"}, "invalid-windowWidth"),
            ({**ids, "windowCenter": "40", "windowWidth": "wide"}, "invalid-windowWidth"),
            ({**ids, "frameNumber": "0"}, "invalid-frameNumber"),
            ({**ids, "rows": "-4"}, "invalid-rows"),
            ({**ids, "imageQuality": "101"}, "invalid-imageQuality"),
            ({**ids, "anonymize": "yes"}, "invalid-anonymize"),
            ({**ids, "contentType": "application/dicom", "frameNumber": "1"}, "invalid-frameNumber"),
        ]:
            assert_clean_error(http.get("/wado", params=params), 400, error)
        assert_clean_error(http.get("/wado", params={**ids, "contentType": "image/gif"}), 406)
        wrong_ts = {**ids, "contentType": "application/dicom", "transferSyntax": JPEG_LS}
        assert_clean_error(http.get("/wado", params=wrong_ts), 406, "transfer-syntax-not-available")
        assert_clean_error(http.get("/wado", params={**ids, "objectUID": ROOT_UID + "999.1"}), 404, "not-found")
        assert_clean_error(http.get("/wado", params={**ids, "seriesUID": stored.mf_series}), 404, "not-found")
        assert new_accesses(side, before) == []


# -- refusals and bad requests ---------------------------------------------------------------------
def test_credentials_and_roles(stored: Stored) -> None:
    side = stored.side
    sent = stored.by_syntax(EXPLICIT_LE)
    url = instance_url(stored, sent)
    before = access_ids(side)
    with side.client() as anonymous:
        for path in (f"/dicomweb/studies/{stored.study}", url + "/metadata", url + "/rendered", "/wado"):
            assert_clean_error(anonymous.get(path), 401, "unauthorised")
    assert new_accesses(side, before) == []

    for user, path, action in [
        ("it", f"/dicomweb/studies/{stored.study}", "retrieve"),
        ("analyst", url + "/metadata", "retrieve"),
        ("auditor", url + "/rendered", "view"),  # the auditor reads patient data, not images
        ("auditor", url, "retrieve"),
        ("okb-pacs", url + "/frames/1", "retrieve"),
    ]:
        before = access_ids(side)
        with side.client(user) as http:
            assert_clean_error(http.get(path), 403, "forbidden")
        event = one_access(side, before, action=action, channel="wado-rs", outcome="denied", results=0)
        assert event.envelope.actor.user == user and event.payload["PatientID"] is None
        assert event.payload["StudyInstanceUID"] == stored.study

    before = access_ids(side)
    with side.client("analyst") as http:
        params = {"requestType": "WADO", "studyUID": stored.study, "seriesUID": "1.2", "objectUID": "1.2.3"}
        assert_clean_error(http.get("/wado", params=params), 403)
    one_access(side, before, channel="wado-uri", action="view", outcome="denied")


def test_bad_identifiers_and_parameters(stored: Stored) -> None:
    side = stored.side
    sent = stored.by_syntax(EXPLICIT_LE)
    series = stored.series[sent.sop_instance_uid]
    url = instance_url(stored, sent)
    before = access_ids(side)
    with side.client("dr.petrov") as http:
        assert "study" in assert_clean_error(http.get("/dicomweb/studies/1.2.3x"), 400, "invalid-study")["detail"]
        assert_clean_error(http.get(f"/dicomweb/studies/{stored.study}/series/01.2"), 400, "invalid-series")
        assert_clean_error(http.get(f"/dicomweb/studies/{stored.study}/series/{series}/instances/abc"), 400)
        for trick in (
            "/dicomweb/studies/%2E%2E/%2E%2E/etc/passwd",
            f"/dicomweb/studies/{stored.study}%2F..%2F..%2Fblobs/series/{series}",
            f"/dicomweb/studies/{stored.study}%00/metadata",
            f"/dicomweb/studies/{stored.study}/series/{series}/instances/..%2F{sent.sop_instance_uid}/rendered",
            f"/dicomweb/studies/{stored.study}/series/..%5C..%5Cx",
        ):
            assert_clean_error(http.get(trick), 400)

        # literal dot segments (httpx would resolve them before sending; http.client sends them as written)
        connection = http_client.HTTPConnection("127.0.0.1", side.http.port, timeout=30)
        for raw in ("/dicomweb/studies/../../etc/passwd", f"/dicomweb/studies/{stored.study}/series/./../x"):
            connection.request("GET", raw, headers={"Authorization": f"Bearer {side.tokens['dr.petrov']}"})
            answer = connection.getresponse()
            assert answer.status == 400 and json.loads(answer.read())["error"] == "invalid-path"
        connection.close()

        assert_clean_error(http.get(url + "/rendered", params={"window": "40"}), 400, "invalid-window")
        assert_clean_error(http.get(url + "/rendered", params={"window": "40,0"}), 400, "invalid-window")
        assert_clean_error(http.get(url + "/rendered", params={"viewport": "0,10"}), 400, "invalid-viewport")
        assert_clean_error(http.get(url + "/rendered", params={"quality": "best"}), 400, "invalid-quality")
        assert_clean_error(http.get(url + "/frames/2/rendered"), 400, "invalid-frames")
        assert_clean_error(http.get(url + "/frames/1,2/rendered"), 400, "invalid-frames")
        assert_clean_error(http.get(url + "/frames/x/rendered"), 400, "invalid-frames")
        assert_clean_error(http.get(url + "/frames/0"), 400, "invalid-frames")
        assert_clean_error(http.get(url + "/rendered", headers={"Accept": "image/gif"}), 406, "not-acceptable")
        assert_clean_error(http.get(url + "/metadata", headers={"Accept": "application/dicom+xml"}), 406)

        unknown = ROOT_UID + "404.1"
        assert_clean_error(http.get(f"/dicomweb/studies/{unknown}"), 404, "not-found")
        assert_clean_error(http.get(f"/dicomweb/studies/{unknown}/metadata"), 404, "not-found")
        assert_clean_error(http.get(f"/dicomweb/studies/{stored.study}/series/{unknown}"), 404, "not-found")
        assert_clean_error(http.get(f"/dicomweb/studies/{stored.study}/series/{series}/instances/{unknown}"), 404)
        # an instance of the study asked for through the wrong series is not found either
        assert_clean_error(http.get(f"/dicomweb/studies/{stored.study}/series/{stored.mf_series}/instances/"
                                    f"{sent.sop_instance_uid}"), 404)  # fmt: skip
        assert_clean_error(http.get(f"/dicomweb/studies/{stored.mf_study}/series/{series}"), 404)
    assert new_accesses(side, before) == []


def test_openapi_publishes_the_routes(stored: Stored) -> None:
    with stored.side.client() as anonymous:
        paths = anonymous.get("/openapi.json").json()["paths"]
    for path in (
        "/dicomweb/studies/{study}",
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}",
        "/dicomweb/studies/{study}/metadata",
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
        "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        "/wado",
    ):
        assert "get" in paths[path], path
    assert not any("{rest" in p for p in paths)
