"""The synthetic region: reproducible, valid under CAMI's regional rules, honest about gaps."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from api.demo.synthetic import (
    CHARSETS,
    INCOMPLETE_ATTRIBUTES,
    SOP_CLASSES,
    SyntheticStudy,
    available_transfer_syntaxes,
    part10_bytes,
    region,
    synthetic_region,
    synthetic_study,
    write_study,
)
from ingest.dicom import read_header, split_part10
from ingest.validation import Inspection, inspect


def _digest(studies: list[SyntheticStudy]) -> str:
    h = hashlib.sha256()
    for study in studies:
        for ds in study.instances:
            h.update(part10_bytes(ds))
    return h.hexdigest()


def _inspected(ds: Dataset) -> Inspection:
    """What the archive's ingest path sees: the Part-10 bytes, parsed as the pipeline parses them."""
    received = split_part10(part10_bytes(ds))
    return inspect(read_header(received.part10[received.dataset_offset :], received.transfer_syntax))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert _digest(synthetic_region(7, 6)) == _digest(synthetic_region(7, 6))
    assert _digest(synthetic_region(7, 6)) != _digest(synthetic_region(8, 6))


def test_region_mixes_modalities_charsets_marks_and_gaps() -> None:
    studies = synthetic_region(1, 12)
    assert {s.modality for s in studies} == set(SOP_CLASSES)
    assert {s.charset for s in studies} == set(CHARSETS)
    assert len({s.organisation.ae_title for s in studies}) >= 4
    assert any(s.pathology for s in studies) and not all(s.pathology for s in studies)
    assert any(s.emergency for s in studies)
    assert any(s.missing for s in studies) and any(not s.missing for s in studies)
    assert any(s.report is None for s in studies) and any(s.report is not None for s in studies)
    assert len({s.transfer_syntax for s in studies}) >= 4
    uids = [str(ds.SOPInstanceUID) for s in studies for ds in s.instances]
    assert len(uids) == len(set(uids))


def test_every_instance_passes_validation_except_the_deliberate_gaps() -> None:
    for study in synthetic_region(3, 12):
        for ds in study.instances:
            result = _inspected(ds)
            assert result.refusal is None, result.refusal
            assert tuple(result.missing) == study.missing
            assert result.pathology == study.pathology
            assert result.emergency == study.emergency
            assert result.attributes["SOPClassUID"] == SOP_CLASSES[study.modality]
            assert result.attributes["PatientID"] == study.patient_id


@pytest.mark.parametrize("charset", sorted(CHARSETS))
def test_cyrillic_names_decode_back_in_each_character_set(charset: str) -> None:
    org = region()[0]
    study = synthetic_study(org, "DX", seed=11, charset=charset, pathology=True)
    raw = part10_bytes(study.instances[0])
    assert study.patient_name.encode("utf-8") not in raw or charset == "ISO_IR 192"
    attrs = _inspected(study.instances[0]).attributes
    assert attrs["PatientName"] == study.patient_name
    assert any("\u0400" <= ch <= "\u04ff" for ch in attrs["PatientName"])
    assert study.report is not None
    assert attrs["PerformingPhysician"] == {"code": study.report[0], "name": study.report[1]}


@pytest.mark.parametrize("missing", [(name,) for name in INCOMPLETE_ATTRIBUTES])
def test_each_regional_attribute_can_be_left_out(missing: tuple[str, ...]) -> None:
    study = synthetic_study(region()[1], "US", instances=2, seed=5, incomplete=missing)
    assert study.missing == missing
    assert all(tuple(_inspected(ds).missing) == missing for ds in study.instances)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_syntaxes_round_trip_losslessly(syntax: str) -> None:
    assert syntax in available_transfer_syntaxes()
    org = region()[0]
    plain = synthetic_study(org, "CT", instances=3, seed=2)
    packed = synthetic_study(org, "CT", instances=3, seed=2, transfer_syntax=syntax)
    for a, b in zip(plain.instances, packed.instances, strict=True):
        assert b.file_meta.TransferSyntaxUID == syntax
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert len(part10_bytes(b)) < len(part10_bytes(a))
        assert (dcmread(io.BytesIO(part10_bytes(b))).pixel_array == a.pixel_array).all()


def test_instance_count_and_realistic_sizes() -> None:
    org = region()[0]
    study = synthetic_study(org, "CT", instances=40, seed=9, realistic=True)
    assert len(study.instances) == 40
    assert len(study.series_uids) >= 2
    axial = [ds for ds in study.instances if ds.ImageType[2] == "AXIAL"]
    assert len(axial) == 39
    assert all(ds.Rows == ds.Columns == 512 and ds.BitsAllocated == 16 for ds in axial)
    us = synthetic_study(org, "US", instances=1, seed=9)
    assert us.instances[0].PhotometricInterpretation == "RGB" and us.instances[0].SamplesPerPixel == 3
    with pytest.raises(ValueError):
        synthetic_study(org, "PT", seed=1)
    with pytest.raises(ValueError):
        synthetic_study(org, "CT", seed=1, incomplete=("PatientID",))


def test_write_study_writes_readable_part10_files(tmp_path: Path) -> None:
    study = synthetic_study(region()[2], "MG", seed=4, transfer_syntax=ExplicitVRLittleEndian)
    paths = write_study(study, tmp_path)
    assert len(paths) == len(study.instances) == 4
    for path, ds in zip(paths, study.instances, strict=True):
        assert path.read_bytes() == part10_bytes(ds)
        back = dcmread(path)
        assert back.SOPClassUID == SOP_CLASSES["MG"]
        assert back.ImageLaterality in ("L", "R")
