"""Analytics on both warehouse backends (chdb and clickhouse-connect over HTTP).

* The region of ``tests/unit/test_monitoring_analytics.py`` fed once, again under another consumer
  group (merges stopped, so the duplicates are really there) and in a rebuild: identical contents,
  row by row, in every table and in the ``analytics_studies`` view; the view's figures by hand.
* Privacy: events full of known patient names (Cyrillic and Latin, with name parts), IDs, birth
  dates, accession numbers, doctors' names and report texts are projected; then every column of
  every analytics table and view — enumerated from ``system.columns``, not from a hand list — is
  searched for each of those values and their parts (case-insensitively, inside arrays too): none.
  The pseudonym is HMAC-SHA256(key, PatientID), the same at every organisation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from projections.analytics import Analytics
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Actor, Event, new_event
from streams.processing import EmbeddedRunner
from tests.support.projections import check_redelivery_and_rebuild, open_log
from tests.support.scenarios import KEY, ORG_A, ORG_B, ORG_C, P1, P2, P3, P4, PRIOR_ID, at, scenario
from tests.support.warehouses import WarehouseTarget

ANALYTICS_COUNTS = {
    "analytics_instances": 15,  # 14 objects + study 3's version 2
    "analytics_reports": 9,  # 3 drafts, 1 edit, 4 signatures, 1 amendment
    "analytics_transfers": 14,
    "analytics_rejections": 4,  # 3 refused objects, 1 refused association
    "analytics_patient_merges": 1,
}
RELATIONS = (*Analytics.tables, "analytics_studies")


def hmac_hex(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def check_analytics_figures(warehouse: Warehouse) -> None:
    studies = warehouse.query(
        """
        SELECT organisation, modality, patient_sex, age_band, series, instances, bytes, pathology, emergency,
               incomplete, missing, toString(patient_pseudonym) AS patient
        FROM analytics_studies ORDER BY first_received_at"""
    ).rows
    # age at the study date: P1 born 1972-03-05 is 52 on 3 March 2025 and 53 on 5 March; P2 (1990-06-15)
    # 34; P3 (2015-04-01) 9 on 15 March and 10 on 2 April; P4's birth date is missing
    assert studies == [
        (ORG_A, "CT", "F", "50-54", 1, 3, 3000, 1, 0, 0, [], hmac_hex(KEY, P1.patient_id)),  # 1
        (ORG_B, "DX", "F", "50-54", 1, 2, 600, 1, 0, 0, [], hmac_hex(KEY, P1.patient_id)),  # 4
        (ORG_A, "MR", "M", "30-34", 1, 2, 4000, 0, 0, 1, ["PerformingPhysicianCode"], hmac_hex(KEY, P2.patient_id)),
        (ORG_A, "CT", "F", "05-09", 1, 1, 800, 0, 0, 0, [], hmac_hex(KEY, P3.patient_id)),  # 7
        (ORG_C, "MG", "M", "30-34", 1, 4, 20000, 1, 0, 0, [], hmac_hex(KEY, P2.patient_id)),  # 6
        # study 3: one instance in two versions (500 + 600 B stored); the latest one completed it
        (ORG_A, "CT", "F", "10-14", 1, 1, 1100, 0, 1, 0, [], hmac_hex(KEY, P3.patient_id)),
        (ORG_B, "US", "M", "unknown", 1, 1, 100, 0, 1, 1, ["PatientBirthDate"], hmac_hex(KEY, P4.patient_id)),  # 5
    ]
    merges = warehouse.query(
        "SELECT toString(prior_pseudonym), toString(pseudonym) FROM analytics_patient_merges FINAL"
    ).rows
    assert merges == [(hmac_hex(KEY, PRIOR_ID), hmac_hex(KEY, P4.patient_id))]
    stages = warehouse.query("SELECT stage, count() FROM analytics_reports FINAL GROUP BY stage ORDER BY stage").rows
    assert stages == [("amended", 1), ("drafted", 3), ("edited", 1), ("signed", 4)]


def test_analytics_redelivery_and_rebuild(warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    warehouse = warehouse_target.open()
    log = open_log(tmp_path, scenario())
    try:
        check_redelivery_and_rebuild(
            warehouse,
            log,
            lambda: Analytics(KEY),
            Analytics.ddl,
            Analytics.tables,
            RELATIONS,
            ANALYTICS_COUNTS,
            check_analytics_figures,
        )
    finally:
        log.close()


# -- privacy ------------------------------------------------------------------------------------------
LATIN = ("MRN-7Q93K2ZX", "O'Connor-Whitfield^Mary-Jane^Elizabeth", "19850712", "F")
CYRILLIC = ("ЕНП-4410-2288-7731", "Абрамович-Лесная^Святослава^Игоревна", "19601123", "F")
MERGED_FROM = "ВРЕМ-000917"  # a temporary ID later merged into CYRILLIC
PERFORMING = {"code": "321-654-987 01", "name": "Шереметьев^Аристарх^Болеславович"}
REFERRING = "Hargreaves^Bartholomew^Quentin"
SIGNER = {"code": "987-654-321 02", "name": "Вишневецкая^Ефросинья^Дормидонтовна"}
ACCESSIONS = ("АКЦ-2025-55881", "XACC-77120934")
PROTOCOL = "Лёгочные поля прозрачны, корни структурны, синусы свободны"
CONCLUSION = "Патологических изменений органов грудной клетки не выявлено"
AMENDED = "Уточнение: рубцовые изменения верхушки правого лёгкого"
AMEND_REASON = "Дополнение после консилиума Шереметьева"
ERROR_COMMENT = "Identifier rejected for Mary-Jane"
STUDY_DESCRIPTION = "Обследование по направлению Абрамович-Лесной"
ROOT = "1.2.826.0.1.3680043.8.498.4242"


def privacy_events() -> list[Event]:
    """Two patients, each examined at two organisations, with every kind of identifying value."""
    events: list[Event] = []
    for n, ((pid, name, birth, sex), org, accession, when) in enumerate(
        [
            (LATIN, ORG_A, ACCESSIONS[1], at("2025-05-06 09:00:00")),
            (LATIN, ORG_C, ACCESSIONS[1] + "-B", at("2025-05-07 10:00:00")),
            (CYRILLIC, ORG_B, ACCESSIONS[0], at("2025-05-06 11:00:00")),
            (CYRILLIC, ORG_A, ACCESSIONS[0] + "-Б", at("2025-05-08 12:00:00")),
        ],
        start=1,
    ):
        study = f"{ROOT}.{n}"
        payload: dict[str, Any] = {
            "StudyInstanceUID": study,
            "SeriesInstanceUID": f"{study}.1",
            "SOPInstanceUID": f"{study}.1.1",
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1",
            "TransferSyntaxUID": "1.2.840.10008.1.2.1",
            "PatientID": pid,
            "IssuerOfPatientID": "RU-OMS",
            "PatientName": name,
            "PatientBirthDate": birth,
            "PatientSex": sex,
            "StudyDate": when.strftime("%Y%m%d"),
            "StudyTime": when.strftime("%H%M%S"),
            "AccessionNumber": accession,
            "StudyID": accession,
            "StudyDescription": STUDY_DESCRIPTION,
            "ReferringPhysicianName": REFERRING,
            "Modality": "DX",
            "SeriesDescription": f"{name} PA",
            "BodyPartExamined": "CHEST",
            "PerformingPhysician": PERFORMING,
            "ProcedureCodeValue": "A06.09.007",
            "ProcedureCodeMeaning": "Рентгенография легких",
            "blob": {"sha256": hashlib.sha256(study.encode()).hexdigest(), "size": 4000 + n, "store": "file://"},
            "version": 1,
            "pathology": False,
            "emergency": False,
            # a package that lacks the doctor's code lists attribute *names*, never values
            "missing": ["PerformingPhysicianCode"] if n == 2 else [],
            "channel": "dicom",
            "calling_ae_title": "XRAY_1",
            "called_ae_title": "CAMI",
        }
        events.append(
            new_event(
                "InstanceReceived",
                payload,
                aggregate_id=study,
                source_node="XRAY_1",
                organisation=org,
                occurred_at=when,
            )
        )
        report = {"report_id": f"{ROOT}.rep.{n}", "StudyInstanceUID": study, "AccessionNumber": accession}
        report["PatientID"] = pid
        later = when + timedelta(hours=1)
        doctor = Actor("dr.vishnevetskaya", "radiologist")
        events += [
            new_event(
                "ReportDrafted",
                {**report, "protocol_text": f"{name}: {PROTOCOL}", "conclusion_text": CONCLUSION, "author": SIGNER,
                 "revision": 1, "source": "http"},
                aggregate_id=study, source_node="api", organisation=org, actor=doctor, occurred_at=later,
            ),
            new_event(
                "ReportSigned",
                {**report, "protocol_text": PROTOCOL, "conclusion_text": CONCLUSION, "signer": SIGNER, "revision": 1,
                 "signed_at": later, "content_sha256": "1" * 64},
                aggregate_id=study, source_node="api", organisation=org, actor=doctor, occurred_at=later,
            ),
            new_event(
                "ReportAmended",
                {**report, "amendment_number": 1, "reason": AMEND_REASON, "amended_by": SIGNER,
                 "amended_at": later + timedelta(days=1), "protocol_before": PROTOCOL,
                 "conclusion_before": CONCLUSION, "protocol_after": PROTOCOL, "conclusion_after": AMENDED},
                aggregate_id=study, source_node="api", organisation=org, actor=doctor, occurred_at=later,
            ),
            new_event(
                "TransferQueued",
                {"transfer_id": f"{ROOT}.transfer.{n}", "StudyInstanceUID": study, "instances": 1, "bytes": 4000,
                 "priority": "scheduled", "pathology": False, "full_import": False, "destination": "CAMI"},
                aggregate_id=org, source_node="agent", organisation=org, occurred_at=when - timedelta(minutes=5),
            ),
            new_event(
                "TransferFailed",
                {"transfer_id": f"{ROOT}.transfer.{n}", "StudyInstanceUID": study, "attempt": 1,
                 "error": f"peer refused study of {name}", "will_retry": False},
                aggregate_id=org, source_node="agent", organisation=org, occurred_at=when - timedelta(minutes=4),
            ),
        ]  # fmt: skip
    events += [
        new_event(
            "InstanceRejected",
            {"reason": "invalid-uid", "status": 0xA900, "error_comment": ERROR_COMMENT, "PatientID": LATIN[0],
             "StudyInstanceUID": f"{ROOT}.99", "received_bytes": 512, "channel": "stow-rs",
             "calling_ae_title": "XRAY_1"},
            aggregate_id=ORG_A, source_node="XRAY_1", organisation=ORG_A, occurred_at=at("2025-05-06 09:30:00"),
        ),
        new_event(
            "OrderPlaced",
            {"placer_order_number": "ORD-PRIV-1", "AccessionNumber": ACCESSIONS[0], "PatientID": CYRILLIC[0],
             "PatientName": CYRILLIC[1], "PatientBirthDate": CYRILLIC[2], "PatientSex": "F",
             "ReferringPhysicianName": REFERRING, "priority": "ROUTINE"},
            aggregate_id=ACCESSIONS[0], source_node="MIS", organisation=ORG_B, occurred_at=at("2025-05-05 08:00:00"),
        ),
        new_event(
            "PatientUpdated",
            {"PatientID": LATIN[0], "PatientName": LATIN[1], "PatientBirthDate": LATIN[2], "source": "hl7"},
            aggregate_id=LATIN[0], source_node="MIS", occurred_at=at("2025-05-09 08:00:00"),
        ),
        new_event(
            "PatientsMerged",
            {"PatientID": CYRILLIC[0], "PriorPatientID": MERGED_FROM, "source": "hl7"},
            aggregate_id=CYRILLIC[0], source_node="MIS", occurred_at=at("2025-05-09 09:00:00"),
        ),
        new_event(
            "RecordAccessed",
            {"action": "search", "channel": "qido-rs", "PatientID": LATIN[0], "query": f"PatientName={LATIN[1]}",
             "results": 2, "outcome": "ok"},
            aggregate_id=LATIN[0], source_node="web", actor=Actor("dr.x", "radiologist"),
            occurred_at=at("2025-05-09 10:00:00"),
        ),
    ]  # fmt: skip
    return events


def name_forms(name: str) -> set[str]:
    """A DICOM person name as written, with spaces, and each component and hyphenated part."""
    forms = {name, name.replace("^", " ")}
    for component in name.split("^"):
        forms.add(component)
        forms |= set(component.split("-"))
    return forms


def needles() -> list[str]:
    """Every identifying value of the privacy events, and the scenario's patients."""
    values: set[str] = set()
    for person in (LATIN, CYRILLIC):
        pid, name, birth, _ = person
        values |= {pid, *name_forms(name), birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}"}
    for p in (P1, P2, P3, P4):
        values |= {p.patient_id, *name_forms(p.name), p.birth_date}
    values |= {MERGED_FROM, PRIOR_ID, *ACCESSIONS, *name_forms(PERFORMING["name"]), *name_forms(REFERRING)}
    values |= {*name_forms(SIGNER["name"]), *name_forms("Белова^Анна^Юрьевна"), *name_forms("Орлов^Виктор^Сергеевич")}
    values |= {PROTOCOL, CONCLUSION, AMENDED, AMEND_REASON, ERROR_COMMENT, STUDY_DESCRIPTION, "без особенностей"}
    # raw study, series, instance, report and transfer identifiers are keyed as well
    values |= {f"{ROOT}.1", f"{ROOT}.rep.1", f"{ROOT}.transfer.1", "1.2.826.0.1.3680043.8.498.77.1"}
    short = {v for v in values if len(v) < 4}
    assert not short, short  # a two-letter needle would match by accident
    return sorted(v.casefold() for v in values)


def relations(warehouse: Warehouse, prefix: str) -> dict[str, list[tuple[str, str]]]:
    """Every table and view whose name starts with ``prefix``, with its columns and their types."""
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, type_ in warehouse.query(
        """SELECT table, name, type FROM system.columns
           WHERE database = currentDatabase() AND startsWith(table, {prefix:String})
           ORDER BY table, position""",
        {"prefix": prefix},
    ).rows:
        out.setdefault(table, []).append((column, type_))
    return out


def leaks(warehouse: Warehouse, prefix: str, values: Sequence[str]) -> set[tuple[str, str, str]]:
    """(relation, column, needle) for every needle found in any value of any column, in two
    independent ways: case-insensitive substring search in SQL (element by element in arrays), and
    the same search in Python over ``SELECT *``."""
    found: set[tuple[str, str, str]] = set()
    for table, columns in relations(warehouse, prefix).items():
        for column, type_ in columns:

            def hit(expression: str) -> str:
                return f"multiSearchFirstIndexCaseInsensitiveUTF8(toString({expression}), {{needles:Array(String)}})"

            if type_.startswith("Array"):
                sql = f"SELECT DISTINCT arrayJoin(arrayMap(x -> {hit('x')}, {column})) AS i FROM {table}"
            else:
                sql = f"SELECT DISTINCT {hit(column)} AS i FROM {table}"
            for (index,) in warehouse.query(sql, {"needles": list(values)}).rows:
                if index:
                    found.add((table, column, values[index - 1]))
        result = warehouse.query(f"SELECT * FROM {table}")
        for row in result.rows:
            for column, value in zip(result.columns, row, strict=True):
                for text in flatten(value):
                    found |= {(table, column, n) for n in values if n in text.casefold()}
    return found


def flatten(value: Any) -> Iterable[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from flatten(item)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif value is not None:
        yield str(value)


def test_no_patient_or_doctor_identity_in_any_analytics_column(warehouse: Warehouse, tmp_path: Path) -> None:
    log = open_log(tmp_path, [*privacy_events(), *scenario()])
    try:
        EmbeddedRunner(log, [(Analytics(KEY), WarehouseSink(warehouse, Analytics.ddl))], batch_size=11).catch_up()
    finally:
        log.close()
    values = needles()
    assert len(values) > 60

    found = relations(warehouse, "analytics_")
    assert set(found) == set(RELATIONS)  # the scan covers every table and the view
    assert sum(len(columns) for columns in found.values()) > 60
    assert warehouse.query("SELECT count() FROM analytics_instances").scalar() == 4 + 15
    assert leaks(warehouse, "analytics_", values) == set()

    # the scanner finds what is there: a table holding the values the way a leak would
    warehouse.command(
        "CREATE TABLE canary_leak (a Array(String), f FixedString(64), n Nullable(String), d Date32) "
        "ENGINE = MergeTree ORDER BY tuple()"
    )
    warehouse.insert(
        "canary_leak",
        ["a", "f", "n", "d"],
        [[["PerformingPhysicianCode", "o'connor-WHITFIELD"], "x" * 10 + "ВРЕМ-000917", None, date(1960, 11, 23)]],
    )
    assert leaks(warehouse, "canary_", values) == {
        ("canary_leak", "a", "o'connor-whitfield"),
        ("canary_leak", "a", "o'connor"),
        ("canary_leak", "a", "whitfield"),
        ("canary_leak", "f", MERGED_FROM.casefold()),
        ("canary_leak", "d", "1960-11-23"),
    }


def test_pseudonym_is_the_hmac_of_the_patient_id_at_every_organisation(warehouse: Warehouse, tmp_path: Path) -> None:
    log = open_log(tmp_path, privacy_events())
    try:
        EmbeddedRunner(log, [(Analytics(KEY), WarehouseSink(warehouse, Analytics.ddl))]).catch_up()
    finally:
        log.close()
    latin, cyrillic = hmac_hex(KEY, LATIN[0]), hmac_hex(KEY, CYRILLIC[0])
    assert latin == hmac.new(KEY, b"MRN-7Q93K2ZX", hashlib.sha256).hexdigest()

    def organisations(table: str) -> list[tuple[str, list[str]]]:
        return warehouse.query(
            f"""SELECT toString(patient_pseudonym) AS p, arraySort(groupUniqArray(organisation))
                FROM {table} FINAL GROUP BY p ORDER BY p"""
        ).rows

    expected = sorted([(latin, [ORG_A, ORG_C]), (cyrillic, [ORG_A, ORG_B])])
    assert organisations("analytics_instances") == expected
    assert organisations("analytics_reports") == expected
    studies = warehouse.query(
        "SELECT toString(patient_pseudonym) AS p, count() FROM analytics_studies GROUP BY p ORDER BY p"
    ).rows
    assert studies == sorted([(latin, 2), (cyrillic, 2)])
    assert warehouse.query(
        "SELECT toString(prior_pseudonym), toString(pseudonym) FROM analytics_patient_merges FINAL"
    ).rows == [(hmac_hex(KEY, MERGED_FROM), cyrillic)]
    # another key, another pseudonym: without the key the ID cannot be confirmed
    assert hmac_hex(b"other", LATIN[0]) != latin
