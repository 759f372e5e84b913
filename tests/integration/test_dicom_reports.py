"""Reports arriving as DICOM: an SR and an encapsulated PDF sent by dcmtk's storescu to the real
Storage SCP become report events, and the reports API shows them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from api.http import HttpServer, create_app
from ingest.reports.documents import ENCAPSULATED_PDF, sr_texts
from streams.topics import REPORTS
from tests.support.stow import (
    ORG,
    ROOT_UID,
    RunningArchive,
    add_users,
    new_study,
    part10,
    settings_for,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
STORESCU = "/usr/bin/storescu"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _text_item(code: Dataset, value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = DicomSequence([code])
    item.TextValue = value
    return item


def _container(code: Dataset, children: list[Dataset]) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "CONTAINER"
    item.ContinuityOfContent = "SEPARATE"
    item.ConceptNameCodeSequence = DicomSequence([code])
    item.ContentSequence = DicomSequence(children)
    return item


def _document_base(sop_class: str, study: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(prefix=ROOT_UID)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".99"
    ds.PatientID = "P-2002"
    ds.PatientName = "Смирнова^Ольга"
    ds.PatientBirthDate = "19800202"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC-77"
    ds.Modality = modality
    ds.InstanceNumber = 1
    return ds


def sr_document(study: str, verified: bool) -> Dataset:
    ds = _document_base(BASIC_TEXT_SR, study, "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.CompletionFlag = "COMPLETE" if verified else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if verified else "UNVERIFIED"
    if verified:
        observer = Dataset()
        observer.VerifyingObserverName = "Кузнецов^Олег"
        observer.VerificationDateTime = "19990101120000"
        observer.VerifyingOrganization = "ОКБ"
        observer.VerifyingObserverIdentificationCodeSequence = DicomSequence([_code("R-3003", "RU-DOC", "Кузнецов")])
        ds.VerifyingObserverSequence = DicomSequence([observer])
    ds.ContentSequence = DicomSequence(
        [
            _container(
                _code("121070", "DCM", "Findings"),
                [_text_item(_code("121071", "DCM", "Finding"), "В S6 правого лёгкого очаг 8 мм.")],
            ),
            _text_item(_code("ru-1", "99RU", "Заключение"), "Очаг в правом лёгком, рекомендовано КТ через 3 мес."),
        ]
    )
    return ds


def pdf_document(study: str) -> Dataset:
    ds = _document_base(ENCAPSULATED_PDF, study, "DOC")
    ds.DocumentTitle = "Протокол исследования"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.BurnedInAnnotation = "YES"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    return ds


@pytest.fixture
def archive_with_scp(tmp_path: Path) -> Iterator[tuple[RunningArchive, int]]:
    from api.bootstrap import bootstrap

    home = tmp_path / "cami"
    home.mkdir()
    (home / "senders.toml").write_text(
        f'[archive]\nae_title = "CAMI"\n\n[[sender]]\nae_title = "OKB_RIS"\norganisation = "{ORG}"\n', encoding="utf-8"
    )
    archive = bootstrap(settings_for(home))
    tokens = add_users(home)
    server = HttpServer(create_app(archive), "127.0.0.1", 0)
    server.start()
    scp = archive.storage_scp(port=0)
    scp.start()
    try:
        yield RunningArchive(archive, server, tokens), scp.port
    finally:
        scp.stop()
        server.stop()
        archive.close()


def storescu(port: int, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        [STORESCU, "-aet", "OKB_RIS", "-aec", "CAMI", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_sr_and_pdf_sent_by_storescu_become_reports(
    archive_with_scp: tuple[RunningArchive, int], tmp_path: Path
) -> None:
    running, port = archive_with_scp
    study = new_study()
    signed_sr, draft_sr, pdf = sr_document(study, True), sr_document(study, False), pdf_document(study)
    files = []
    for name, ds in (("signed.dcm", signed_sr), ("draft.dcm", draft_sr), ("report.dcm", pdf)):
        path = tmp_path / name
        path.write_bytes(part10(ds))
        files.append(path)
    result = storescu(port, *files)
    assert result.returncode == 0, result.stderr

    events = running.events(REPORTS)
    by_sop: dict[str, list] = {}
    for e in events:
        by_sop.setdefault(e["SOPInstanceUID"], []).append(e)
    assert [e.type for e in by_sop[signed_sr.SOPInstanceUID]] == ["ReportDrafted", "ReportSigned"]
    assert [e.type for e in by_sop[draft_sr.SOPInstanceUID]] == ["ReportDrafted"]
    assert [e.type for e in by_sop[pdf.SOPInstanceUID]] == ["ReportDrafted"]

    drafted, signed = by_sop[signed_sr.SOPInstanceUID]
    assert drafted["source"] == "dicom-sr"
    assert signed["protocol_text"] == "В S6 правого лёгкого очаг 8 мм."
    assert signed["conclusion_text"] == "Очаг в правом лёгком, рекомендовано КТ через 3 мес."
    assert signed["signer"] == {"code": "R-3003", "name": "Кузнецов^Олег"}
    assert signed["declared_verification_datetime"] == "19990101120000"
    assert signed["signed_at"].year >= 2025  # the archive's clock, not the document's 1999
    assert signed.envelope.organisation == ORG
    received = {e["SOPInstanceUID"]: e for e in running.events("cami.dicom") if e.type == "InstanceReceived"}
    assert signed["document"]["sha256"] == received[signed_sr.SOPInstanceUID]["blob"]["sha256"]
    pdf_event = by_sop[pdf.SOPInstanceUID][0]
    assert pdf_event["source"] == "encapsulated-pdf"
    assert pdf_event["text_extracted"] is False and pdf_event["conclusion_text"] == ""
    assert pdf_event["document"]["sha256"] == received[pdf.SOPInstanceUID]["blob"]["sha256"]

    # the API knows them (the store reads the log), and a signed SR cannot be edited
    with running.client("dr.petrov") as c:
        listed = c.get(f"/api/studies/{study}/reports").json()["reports"]
        statuses = sorted((r["source"], r["status"]) for r in listed)
        assert statuses == [("dicom-sr", "draft"), ("dicom-sr", "signed"), ("encapsulated-pdf", "draft")]
        signed_id = signed["report_id"]
        refused = c.put(f"/api/reports/{signed_id}", json={"protocol_text": "x", "conclusion_text": "y"})
        assert refused.status_code == 409
        pdf_view = c.get(f"/api/reports/{pdf_event['report_id']}").json()
        assert "not extracted" in pdf_view["note"]
        # a radiologist signs the PDF draft in the archive
        assert c.post(f"/api/reports/{pdf_event['report_id']}/sign").status_code == 200

    # re-sending the same documents adds no report events
    count = len(running.events(REPORTS))
    assert storescu(port, *files).returncode == 0
    assert len(running.events(REPORTS)) == count


def test_sr_sent_by_stow_becomes_a_report(archive_with_scp: tuple[RunningArchive, int]) -> None:
    running, _ = archive_with_scp
    study = new_study()
    response = running.stow("okb-pacs", [part10(sr_document(study, True))], study=study)
    assert response.status_code == 200, response.text
    [drafted, signed] = running.events(REPORTS)
    assert drafted.envelope.actor.user == "okb-pacs"
    assert signed.type == "ReportSigned" and signed["source"] == "dicom-sr"


def test_russian_section_names_decide_protocol_and_conclusion() -> None:
    ds = sr_document("1.2.3", False)
    ds.ContentSequence.append(_text_item(_code("x", "99", "Описание"), "Дополнительно: лимфоузлы не увеличены."))
    protocol, conclusion, _ = sr_texts(ds)
    assert protocol.splitlines() == ["В S6 правого лёгкого очаг 8 мм.", "Дополнительно: лимфоузлы не увеличены."]
    assert conclusion == "Очаг в правом лёгком, рекомендовано КТ через 3 мес."
