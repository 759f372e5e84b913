"""QIDO-RS over a running archive: studies sent with dcmtk's storescu, searched with the unmodified
third-party ``dicomweb_client.api.DICOMwebClient`` (bearer token in its headers) and, for the
error cases, with httpx. Every search must leave exactly one RecordAccessed event."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.find_studies import NAME_A, NAME_B, make_series, send
from tests.support.readside import ORG, ORG_B, ROOT_UID, SENDER_AE, ReadSide


@dataclass
class Scene:
    side: ReadSide
    study_a: str  # QD-1, 20260110: CT series (3 instances) + MR series (1)
    study_b: str  # QD-2, 20260201: one CT instance
    ct_series: str
    mr_series: str
    ct_sops: list[str]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    side = ReadSide.start(tmp_path_factory.mktemp("qido"))
    try:
        study_a, study_b = generate_uid(prefix=ROOT_UID), generate_uid(prefix=ROOT_UID)
        ct = make_series(study_a, 3, patient_id="QD-1", name=NAME_A)
        mr = make_series(study_a, 1, patient_id="QD-1", name=NAME_A, modality="MR", series_number=2)
        send(side, ct + mr)
        b = make_series(study_b, 1, patient_id="QD-2", name=NAME_B, study_date="20260201", accession="ACC-B")
        send(side, b, ORG_B)
        side.wait_indexed(study_a, 4)
        side.wait_indexed(study_b, 1)
        yield Scene(
            side,
            study_a,
            study_b,
            str(ct[0].SeriesInstanceUID),
            str(mr[0].SeriesInstanceUID),
            [str(ds.SOPInstanceUID) for ds in ct],
        )
    finally:
        side.stop()


def dicomweb(side: ReadSide, user: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{side.url}/dicomweb", headers={"Authorization": f"Bearer {side.tokens[user]}"})


def seen(side: ReadSide) -> set[str]:
    return {e.envelope.event_id for e in side.accesses()}


def new_accesses(side: ReadSide, before: set[str]) -> list[dict[str, Any]]:
    return [
        {**e.payload, "actor": e.envelope.actor.user if e.envelope.actor else None}
        for e in side.accesses()
        if e.envelope.event_id not in before
    ]


def datasets(found: list[dict[str, Any]]) -> list[Dataset]:
    return [Dataset.from_json(item) for item in found]


# -- dicomweb-client: studies, series, instances ----------------------------------------------------
def test_dicomweb_client_searches_studies(scene: Scene) -> None:
    side = scene.side
    client = dicomweb(side, "dr.petrov")
    before = seen(side)

    found = datasets(client.search_for_studies())
    assert [str(ds.StudyInstanceUID) for ds in found] == [scene.study_b, scene.study_a]  # newest first
    [a] = datasets(client.search_for_studies(search_filters={"PatientName": "кузнецова*"}))
    assert a.StudyInstanceUID == scene.study_a and str(a.PatientName) == NAME_A and a.PatientID == "QD-1"
    assert a.ModalitiesInStudy == ["CT", "MR"]
    assert (a.NumberOfStudyRelatedSeries, a.NumberOfStudyRelatedInstances) == (2, 4)
    assert (a.StudyDate, a.StudyTime, a.AccessionNumber) == ("20260110", "093000", "ACC-A")
    # dicomweb-client sends a Host header without the port: the URL still names the archive's
    assert a.RetrieveURL == f"{side.url}/dicomweb/studies/{scene.study_a}"
    assert a.SpecificCharacterSet == "ISO_IR 192" and "StudyDescription" not in a

    # ranges, lists, includefield, several keys at once
    window = client.search_for_studies(search_filters={"StudyDate": "20260101-20260131"})
    assert [ds.StudyInstanceUID for ds in datasets(window)] == [scene.study_a]
    assert len(client.search_for_studies(search_filters={"StudyDate": "20260111-"})) == 1
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": f"{scene.study_a},{scene.study_b}"})
    assert len(listed) == 2
    [mr] = datasets(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}, fields=["StudyDescription"]))
    assert mr.StudyDescription == "КТ органов грудной клетки"
    everything = datasets(client.search_for_studies(search_filters={"AccessionNumber": "ACC-B"}, fields=["all"]))
    assert everything[0].PatientID == "QD-2" and everything[0].ReferringPhysicianName == "Смирнов^Олег"
    assert client.search_for_studies(search_filters={"PatientID": "QD-1", "StudyDate": "20260201"}) == []

    # paging: limit/offset, and dicomweb-client's own "get the rest" loop
    assert [ds.StudyInstanceUID for ds in datasets(client.search_for_studies(limit=1, offset=1))] == [scene.study_a]
    assert len(client.search_for_studies(limit=1, get_remaining=True)) == 2

    events = new_accesses(side, before)
    assert len(events) == 12  # one per request, get_remaining's three pages included
    assert {(e["action"], e["channel"], e["outcome"], e["actor"]) for e in events} == {
        ("query", "qido-rs", "ok", "dr.petrov")
    }
    by_query = {e["query"]: e for e in events}
    named = by_query['{"PatientName": "кузнецова*"}']
    assert named["results"] == 1 and named["StudyInstanceUID"] is None
    listed_event = next(e for e in events if "StudyInstanceUID" in (e["query"] or ""))
    assert listed_event["results"] == 2


def test_dicomweb_client_searches_series_and_instances(scene: Scene) -> None:
    side = scene.side
    client = dicomweb(side, "ref.ivanov")
    before = seen(side)

    series = datasets(client.search_for_series(study_instance_uid=scene.study_a))
    assert [(s.SeriesNumber, s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [
        (1, "CT", 3),
        (2, "MR", 1),
    ]
    assert series[0].SeriesInstanceUID == scene.ct_series and series[0].StudyInstanceUID == scene.study_a
    assert urlsplit(series[0].RetrieveURL).path == f"/dicomweb/studies/{scene.study_a}/series/{scene.ct_series}"
    anywhere = datasets(client.search_for_series(search_filters={"Modality": "MR"}))
    assert [s.SeriesInstanceUID for s in anywhere] == [scene.mr_series]
    assert str(anywhere[0].PatientName) == NAME_A  # study attributes when not scoped to a study
    assert len(client.search_for_series(search_filters={"Modality": "CT"})) == 2

    instances = datasets(
        client.search_for_instances(study_instance_uid=scene.study_a, series_instance_uid=scene.ct_series)
    )
    assert [i.SOPInstanceUID for i in instances] == scene.ct_sops
    assert [i.InstanceNumber for i in instances] == [1, 2, 3]
    assert instances[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and instances[0].Rows == 64
    assert instances[0].RetrieveURL.endswith(f"/series/{scene.ct_series}/instances/{scene.ct_sops[0]}")
    assert len(client.search_for_instances(study_instance_uid=scene.study_a)) == 4
    [one] = datasets(client.search_for_instances(search_filters={"SOPInstanceUID": scene.ct_sops[1]}))
    assert one.StudyInstanceUID == scene.study_a and one.SeriesInstanceUID == scene.ct_series
    assert len(client.search_for_instances(search_filters={"PatientID": "QD-2"})) == 1

    events = new_accesses(side, before)
    assert len(events) == 7 and all(e["channel"] == "qido-rs" and e["outcome"] == "ok" for e in events)
    scoped = [e for e in events if e["StudyInstanceUID"] == scene.study_a]
    assert sorted(e["results"] for e in scoped) == [2, 3, 4]  # the searches whose URL names the study


# -- httpx: what a careless or hostile client gets ----------------------------------------------------
def test_credentials_and_roles(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    with side.client() as anonymous:
        answer = anonymous.get("/dicomweb/studies")
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorised"
    with side.client("dr.petrov") as client:
        client.headers["Authorization"] = "Bearer not-a-token"
        assert client.get("/dicomweb/series").status_code == 401
    assert new_accesses(side, before) == []  # nobody to record

    for user in ("analyst", "it", "okb-pacs"):
        with side.client(user) as client:
            answer = client.get("/dicomweb/studies", params={"PatientID": "QD-1"})
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "forbidden" and "QD-1" not in answer.text
    denied = new_accesses(side, before)
    assert sorted((e["actor"], e["outcome"], e["results"]) for e in denied) == [
        ("analyst", "denied", 0),
        ("it", "denied", 0),
        ("okb-pacs", "denied", 0),
    ]
    with side.client("auditor") as client:  # auditors read patient data (to investigate)
        assert len(client.get("/dicomweb/studies").json()) == 2


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/dicomweb/studies", {"StudyDate": "20260131-20260101"}, "StudyDate"),
        ("/dicomweb/studies", {"StudyDate": "Кузнецова"}, "StudyDate"),
        ("/dicomweb/studies", {"StudyDate": "20260230"}, "StudyDate"),
        ("/dicomweb/studies", {"StudyTime": "2561"}, "StudyTime"),
        ("/dicomweb/studies", {"NoSuchAttribute": "x"}, "NoSuchAttribute"),
        ("/dicomweb/studies", {"99990010": "x"}, "99990010"),
        ("/dicomweb/studies", {"SOPInstanceUID": "1.2.3"}, "SOPInstanceUID"),  # not a study attribute
        ("/dicomweb/studies", {"StudyInstanceUID": "1.2.03"}, "StudyInstanceUID"),
        ("/dicomweb/studies", {"StudyInstanceUID": "1.2.*"}, "StudyInstanceUID"),
        ("/dicomweb/studies", {"NumberOfStudyRelatedInstances": "4"}, "NumberOfStudyRelatedInstances"),
        ("/dicomweb/studies", {"limit": "0"}, "limit"),
        ("/dicomweb/studies", {"limit": "many"}, "limit"),
        ("/dicomweb/studies", {"limit": "100000"}, "limit"),
        ("/dicomweb/studies", {"offset": "-1"}, "offset"),
        ("/dicomweb/studies", {"includefield": "NoSuchField"}, "includefield"),
        ("/dicomweb/studies", {"includefield": "99990010"}, "includefield"),
        ("/dicomweb/studies", {"fuzzymatching": "perhaps"}, "fuzzymatching"),
        ("/dicomweb/series", {"SeriesNumber": "one"}, "SeriesNumber"),
        ("/dicomweb/studies/not-a-uid/series", {}, "StudyInstanceUID"),
        ("/dicomweb/studies/1.2.3/series/1.2.x/instances", {}, "SeriesInstanceUID"),
    ],
)
def test_malformed_parameters_get_400_naming_them(
    scene: Scene, path: str, params: dict[str, str], parameter: str
) -> None:
    side = scene.side
    before = seen(side)
    with side.client("dr.petrov") as client:
        answer = client.get(path, params=params)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid-parameter" and body["detail"]["parameter"] == parameter
    assert body["detail"]["problem"]
    assert "Кузнецова" not in answer.text  # the value is not echoed (it may be patient data)
    assert new_accesses(side, before) == []  # nothing was read


def test_no_match_fuzzy_matching_and_media_type(scene: Scene) -> None:
    side = scene.side
    with side.client("dr.petrov") as client:
        assert len(client.get("/dicomweb/studies", params={"limit": "10000"}).json()) == 2
        assert client.get("/dicomweb/studies", params={"offset": "5"}).json() == []
        empty = client.get("/dicomweb/studies", params={"PatientID": "NOBODY"})
        assert empty.status_code == 200 and empty.json() == []
        assert empty.headers["content-type"].startswith("application/dicom+json")
        fuzzy = client.get("/dicomweb/studies", params={"PatientName": "smith*", "fuzzymatching": "true"})
        assert fuzzy.status_code == 200 and len(fuzzy.json()) == 1
        assert "fuzzymatching" in fuzzy.headers["warning"]
        tagged = client.get("/dicomweb/studies", params={"00100020": "QD-2", "includefield": "00081030,PatientSex"})
        [item] = tagged.json()
        assert item["00100020"] == {"vr": "LO", "Value": ["QD-2"]}
        assert item["00081030"]["Value"] == ["КТ органов грудной клетки"] and item["00100040"]["Value"] == ["F"]
        assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": NAME_B}]}
        assert item["00081190"]["Value"] == [f"{side.url}/dicomweb/studies/{scene.study_b}"]
        # as OHIF asks: a series attribute and one the archive does not hold are left out, no error
        lenient = client.get(
            "/dicomweb/studies", params={"00100020": "QD-2", "includefield": "00080060,InstitutionName"}
        )
        assert lenient.status_code == 200 and "00080060" not in lenient.json()[0]
    assert dicomweb(side, "admin").search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


def test_openapi_lists_the_searches(scene: Scene) -> None:
    with httpx.Client(base_url=scene.side.url) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/dicomweb/studies",
        "/dicomweb/series",
        "/dicomweb/instances",
        "/dicomweb/studies/{study}/series",
        "/dicomweb/studies/{study}/instances",
        "/dicomweb/studies/{study}/series/{series}/instances",
    ):
        assert "get" in paths[path], path


def test_a_person_name_in_three_groups_is_returned_in_its_component_groups(scene: Scene, tmp_path: Path) -> None:
    """pydicom's ISO 2022 IR 87 example (chrH31): the alphabetic, ideographic and phonetic groups
    of a PN are three JSON components (PS3.18 F.2.2), as in WADO-RS metadata."""
    side = scene.side
    ds = dcmread(get_charset_files("chrH31.dcm")[0])
    assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    study = generate_uid(prefix=ROOT_UID)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid(prefix=ROOT_UID)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=ROOT_UID)
    ds.PatientID = "QD-JP"
    path = tmp_path / "chrH31.dcm"
    ds.save_as(path)
    result = studies.storescu(
        "127.0.0.1",
        side.dicom_port,
        [path],
        calling=SENDER_AE[ORG],
        profile=studies.storescu_profile(tmp_path / "storescu.cfg", [str(ds.SOPClassUID)]),
    )
    assert set(studies.outcomes(result.stdout + result.stderr).values()) == {"Success"}, result.stdout[-2000:]
    side.wait_indexed(study, 1)

    client = dicomweb(side, "dr.petrov")
    expected = {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    }
    for found in (
        client.search_for_studies(search_filters={"PatientID": "QD-JP"}),
        client.search_for_series(search_filters={"PatientID": "QD-JP"}),
        client.search_for_instances(search_filters={"PatientID": "QD-JP"}),
    ):
        assert [item["00100010"] for item in found] == [expected]
    [metadata] = client.retrieve_study_metadata(study)
    assert metadata["00100010"] == expected
    with side.client("dr.petrov") as http:
        [item] = http.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert str(Dataset.from_json(item).PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
