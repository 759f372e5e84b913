"""The SOP index file: what it remembers per instance and study, and when it reads the log again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ingest.sop_index import HeldInstance, SopIndex

ORG_A = "1.2.643.5.1.13.13.12.2.50.1001"
ORG_B = "1.2.643.5.1.13.13.12.2.50.1002"


def held(sop: str, version: int, patient: str, organisation: str | None, study: str = "1.2.3") -> HeldInstance:
    return HeldInstance(
        sop, version, f"{version:064x}", "1.2.840.10008.5.1.4.1.1.2", study, study + ".1", patient, organisation
    )


def test_a_study_keeps_the_patient_of_its_first_instance(tmp_path: Path) -> None:
    index = SopIndex(tmp_path / "sop-index.db")
    # a log written before the rule may hold a later arrival under another patient: it does not win
    index.record_many([held("1.2.3.1", 1, "P-1", ORG_A), held("1.2.3.1", 2, "P-2", ORG_B)])
    index.record(held("1.2.3.2", 1, "P-3", ORG_B))
    study = index.study("1.2.3")
    assert study is not None and (study.patient_id, study.organisation) == ("P-1", ORG_A)
    assert [(v.version, v.organisation, v.patient_id) for v in index.versions("1.2.3.1")] == [
        (1, ORG_A, "P-1"),
        (2, ORG_B, "P-2"),
    ]
    assert index.study("9.9") is None
    index.close()


def test_a_file_in_an_older_layout_is_emptied_and_read_again_under_a_new_consumer_group(tmp_path: Path) -> None:
    path = tmp_path / "sop-index.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE sop_instances (sop_instance_uid TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,"
        " sop_class_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL, PRIMARY KEY (sop_instance_uid, version))"
    )
    old.execute("INSERT INTO sop_instances VALUES ('1.2.3.1', 1, 'ab', '1.2.840.10008.5.1.4.1.1.2', '1.2.3')")
    old.commit()
    old.close()

    index = SopIndex(path)
    assert index.count() == 0  # no row without its organisation and patient
    index.record(held("1.2.3.1", 1, "P-1", ORG_A))
    name = index.projection_name("node")
    index.close()

    again = SopIndex(path)  # the same file: resumes where it was
    assert again.projection_name("node") == name and again.count() == 1
    again.close()
    path.unlink()
    fresh = SopIndex(path)  # a new file reads the log from offset 0: another group
    assert fresh.projection_name("node") != name and fresh.count() == 0
    fresh.close()
