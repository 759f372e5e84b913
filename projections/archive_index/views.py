"""Read side of the archive index: the views every reader shares, and the ONE rule that decides
which version of an instance is the one the archive serves.

**Newest version of an instance.** An instance is identified by its SOPInstanceUID alone. Nothing
is deleted: every version is a row of ``archive_instances``, and the newest version wins
*everywhere*: the highest version number, between equal numbers the later arrival, then the later
log position (:data:`NEWEST_VERSION`). An instance whose newest version was filed under another
study or series (an object re-sent with the same SOPInstanceUID under another StudyInstanceUID,
as logs written before the write side refused that may hold) is listed and served under its new
place only: QIDO-RS and C-FIND (:mod:`projections.query_model.find`, the same rule in the query
model's fold), C-MOVE/C-GET and WADO
(:func:`series_instances`, :func:`stored_instances`) and the study pages all read through
:func:`newest_versions`, so no reader can list an instance another one answers 404 for.

Here too: the series and instances of a study, where an instance's bytes are, the patient as the
archive knows them now (merges followed, latest PatientUpdated demographics) and the study's
reports folded from their stages. Every value from a caller travels as a ClickHouse
``{name:Type}`` parameter; ``FINAL`` collapses redelivered rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.archive_index.fold import INSTANCES, MERGES, PATIENTS_TABLE, REPORTS_TABLE
from projections.warehouse.base import Warehouse

#: merge chains longer than this are not followed (a guard; real chains are one or two hops)
MAX_MERGE_HOPS = 16
MAX_LIMIT = 10_000

#: which version of an instance is the newest (the ONE rule, see the module docstring)
NEWEST_VERSION = "version DESC, received_at DESC, log_version DESC"

#: among the newest versions that make up a study or series, the newest arrival gives its
#: attributes (deterministic: the log decides ties)
NEWEST_ARRIVAL = "(received_at, log_version)"


def newest_versions(where: str = "1") -> str:
    """SQL of a sub-query: the newest version (a whole ``archive_instances`` row) of every instance
    that has a row matching ``where``, kept only where that newest version matches ``where`` too.
    ``where`` is a condition on instance rows made of fixed fragments and ``{name:Type}``
    parameters (``study_uid = {study:String}``...), never of caller text.

    The rows read are those of the studies that hold any version of those instances: the study
    UID leads the primary key, and the SOP UIDs are found through their skipping index, so a
    narrow ``where`` reads a few studies, not the table."""
    rows = f"SELECT * FROM {INSTANCES} FINAL"
    if where != "1":
        rows += (
            f" WHERE study_uid IN (SELECT study_uid FROM {INSTANCES}"
            f" WHERE sop_uid IN (SELECT sop_uid FROM {INSTANCES} WHERE {where}))"
        )
    return f"""
        SELECT * FROM ({rows} ORDER BY sop_uid, {NEWEST_VERSION} LIMIT 1 BY sop_uid)
        WHERE {where}
    """


_INSTANCE_COLUMNS = (
    "study_uid, series_uid, sop_uid, version, patient_id, issuer_of_patient_id, patient_name, "
    "patient_birth_date, patient_sex, study_date, study_time, study_id, study_description, accession_number, "
    "referring_physician, institution_name, performing_physician_code, performing_physician_name, "
    "procedure_code, procedure_scheme, procedure_meaning, series_number, series_description, modality, "
    "body_part, instance_number, sop_class_uid, transfer_syntax_uid, rows, columns, frames, blob_sha256, "
    "blob_size, blob_store, organisation, calling_ae_title, channel, pathology, emergency, missing, received_at"
)


def checked_page(limit: int, offset: int) -> dict[str, int]:
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    return {"limit": limit, "offset": offset}


# -- patients: merges and demographics ------------------------------------------------------------
def _merge_targets(warehouse: Warehouse, ids: Iterable[str]) -> dict[str, str]:
    """prior ID -> the ID it was merged into (one hop), for those of ``ids`` that were merged."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    result = warehouse.query(
        f"SELECT prior_patient_id, patient_id FROM {MERGES} FINAL WHERE prior_patient_id IN {{ids:Array(String)}}",
        {"ids": wanted},
    )
    return {str(prior): str(target) for prior, target in result.rows}


def resolve_patients(warehouse: Warehouse, ids: Iterable[str]) -> dict[str, str]:
    """Each ID -> the surviving ID at the end of its merge chain (itself when never merged)."""
    resolved = {i: i for i in ids}
    seen: dict[str, set[str]] = {i: {i} for i in resolved}
    pending = set(resolved)
    edges: dict[str, str | None] = {}
    for _ in range(MAX_MERGE_HOPS):
        unknown = {resolved[i] for i in pending} - edges.keys()
        found = _merge_targets(warehouse, unknown)
        edges.update({u: found.get(u) for u in unknown})
        for i in list(pending):
            nxt = edges[resolved[i]]
            if nxt is None or nxt in seen[i]:  # end of the chain (or a cycle: stop where we are)
                pending.discard(i)
            else:
                resolved[i] = nxt
                seen[i].add(nxt)
        if not pending:
            break
    return resolved


def linked_patient_ids(warehouse: Warehouse, patient_id: str) -> tuple[str, list[str]]:
    """(surviving ID, every ID whose records now belong to it, the surviving one included)."""
    surviving = resolve_patients(warehouse, [patient_id])[patient_id]
    group = {surviving}
    frontier = {surviving}
    for _ in range(MAX_MERGE_HOPS):
        result = warehouse.query(
            f"SELECT prior_patient_id FROM {MERGES} FINAL WHERE patient_id IN {{ids:Array(String)}}",
            {"ids": sorted(frontier)},
        )
        frontier = {str(row[0]) for row in result.rows} - group
        if not frontier:
            break
        group |= frontier
    # a prior ID re-merged elsewhere later is not this patient's any more
    resolved = resolve_patients(warehouse, group)
    return surviving, sorted(i for i in group if resolved[i] == surviving)


def _demographics(warehouse: Warehouse, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    result = warehouse.query(
        f"SELECT patient_id, attribute, value FROM {PATIENTS_TABLE} FINAL WHERE patient_id IN {{ids:Array(String)}}",
        {"ids": wanted},
    )
    found: dict[str, dict[str, str]] = {}
    for patient, attribute, value in result.rows:
        found.setdefault(str(patient), {})[str(attribute)] = str(value)
    return found


_DEMOGRAPHIC_COLUMNS = {
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
}


def patient_record(warehouse: Warehouse, patient_id: str) -> dict[str, Any]:
    """The patient as the archive knows them now: surviving ID, merged IDs, latest demographics
    from PatientUpdated (empty where none arrived)."""
    surviving, ids = linked_patient_ids(warehouse, patient_id)
    updated = _demographics(warehouse, [surviving]).get(surviving, {})
    return {
        "patient_id": surviving,
        "merged_ids": [i for i in ids if i != surviving],
        **{column: updated.get(attribute) for attribute, column in _DEMOGRAPHIC_COLUMNS.items()},
    }


# -- series and instances -----------------------------------------------------------------------------
def study_series(warehouse: Warehouse, study_uid: str) -> list[dict[str, Any]]:
    """The series of a study (newest instance versions), by series number."""
    sql = f"""
        SELECT series_uid,
               argMax(series_number, {NEWEST_ARRIVAL}) AS series_number,
               argMax(series_description, {NEWEST_ARRIVAL}) AS series_description,
               argMax(modality, {NEWEST_ARRIVAL}) AS modality,
               argMax(body_part, {NEWEST_ARRIVAL}) AS body_part,
               count() AS instance_count,
               sum(blob_size) AS size,
               arraySort(arrayFilter(o -> o != '', groupUniqArray(organisation))) AS organisations,
               arraySort(groupUniqArrayArray(missing)) AS missing,
               max(received_at) AS last_received
        FROM ({newest_versions("study_uid = {study_uid:String}")})
        GROUP BY series_uid
        ORDER BY series_number NULLS LAST, series_uid
    """
    return warehouse.query(sql, {"study_uid": study_uid}).dicts()


def series_instances(warehouse: Warehouse, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
    """The instances of a series (newest version of each), by instance number."""
    where = "study_uid = {study_uid:String} AND series_uid = {series_uid:String}"
    sql = f"""
        SELECT {_INSTANCE_COLUMNS} FROM ({newest_versions(where)})
        ORDER BY instance_number NULLS LAST, sop_uid
    """
    return warehouse.query(sql, {"study_uid": study_uid, "series_uid": series_uid}).dicts()


def instance_location(warehouse: Warehouse, sop_uid: str, version: int | None = None) -> dict[str, Any] | None:
    """Where the bytes of an instance are (its newest version, or ``version``); None if unknown."""
    params: dict[str, Any] = {"sop_uid": sop_uid}
    condition = "sop_uid = {sop_uid:String}"
    if version is not None:
        condition += " AND version = {version:UInt32}"
        params["version"] = version
    result = warehouse.query(
        f"""SELECT blob_sha256 AS sha256, blob_size AS size, blob_store AS store, version, study_uid, series_uid
            FROM {INSTANCES} FINAL WHERE {condition}
            ORDER BY {NEWEST_VERSION} LIMIT 1""",
        params,
    ).dicts()
    return result[0] if result else None


# -- the stored instances WADO-RS, WADO-URI, C-MOVE and C-GET serve -----------------------------------
@dataclass(frozen=True)
class Stored:
    """The newest version of one instance as the archive index knows it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    version: int
    patient_id: str
    sop_class_uid: str
    transfer_syntax: str
    frames: int | None
    sha256: str
    size: int


def stored_instances(
    warehouse: Warehouse, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[Stored]:
    """The newest version of each instance of a study, series or one instance (ordered by series
    and instance number); empty when the archive holds none."""
    where = ["study_uid = {study:String}"]
    params: dict[str, Any] = {"study": study_uid}
    if series_uid is not None:
        where.append("series_uid = {series:String}")
        params["series"] = series_uid
    if sop_uid is not None:
        where.append("sop_uid = {sop:String}")
        params["sop"] = sop_uid
    sql = f"""
        SELECT study_uid, series_uid, sop_uid, version, patient_id, sop_class_uid, transfer_syntax_uid, frames,
               blob_sha256, blob_size
        FROM ({newest_versions(" AND ".join(where))})
        ORDER BY series_number NULLS LAST, series_uid, instance_number NULLS LAST, sop_uid
    """
    rows = warehouse.query(sql, params).dicts()
    return [
        Stored(
            study_uid=str(r["study_uid"]),
            series_uid=str(r["series_uid"]),
            sop_uid=str(r["sop_uid"]),
            version=int(r["version"]),
            patient_id=str(r["patient_id"]),
            sop_class_uid=str(r["sop_class_uid"]),
            transfer_syntax=str(r["transfer_syntax_uid"]),
            frames=None if r["frames"] is None else int(r["frames"]),
            sha256=str(r["blob_sha256"]),
            size=int(r["blob_size"]),
        )
        for r in rows
    ]


# -- reports ------------------------------------------------------------------------------------------
_STATUS_RANK = {"none": 0, "draft": 1, "signed": 2, "amended": 3}


def study_report(warehouse: Warehouse, study_uid: str) -> dict[str, Any]:
    """The study's reports folded from their stages: status (none/draft/signed/amended), the
    current texts, the signed texts with signer and signing time, and every amendment."""
    rows = warehouse.query(
        f"""SELECT report_id, stage, seq, protocol_text, conclusion_text, protocol_before, conclusion_before,
                   reason, clinician_code, clinician_name, at, content_sha256, source, accession_number
            FROM {REPORTS_TABLE} FINAL WHERE study_uid = {{study_uid:String}}
            ORDER BY report_id, stage, seq""",
        {"study_uid": study_uid},
    ).dicts()
    reports: dict[str, dict[str, Any]] = {}
    for row in rows:
        report = reports.setdefault(
            row["report_id"],
            {"report_id": row["report_id"], "drafts": [], "signed": None, "amendments": []},
        )
        if row["stage"] == "draft":
            report["drafts"].append(row)
        elif row["stage"] == "signed":
            report["signed"] = row
        else:
            report["amendments"].append(row)
    folded = [fold_report(r) for r in reports.values()]
    status = max((r["status"] for r in folded), key=_STATUS_RANK.__getitem__, default="none")
    return {"study_uid": study_uid, "status": status, "reports": folded}


def report_milestones(warehouse: Warehouse, study_uids: Sequence[str]) -> dict[str, datetime]:
    """When the studies' reports first reached each stage (draft, signed, amended)."""
    if not study_uids:
        return {}
    rows = warehouse.query(
        f"SELECT stage, min(at) AS first FROM {REPORTS_TABLE} FINAL"
        " WHERE study_uid IN {studies:Array(String)} GROUP BY stage",
        {"studies": list(study_uids)},
    ).dicts()
    return {str(r["stage"]): r["first"] for r in rows}


def _clinician(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"code": row["clinician_code"], "name": row["clinician_name"]}


def fold_report(stages: Mapping[str, Any]) -> dict[str, Any]:
    drafts: list[dict[str, Any]] = stages["drafts"]
    signed: dict[str, Any] | None = stages["signed"]
    amendments: list[dict[str, Any]] = stages["amendments"]
    latest_draft = drafts[-1] if drafts else None
    current = amendments[-1] if amendments else signed or latest_draft
    assert current is not None  # a report exists only through one of its stages
    status = "amended" if amendments else "signed" if signed else "draft"
    return {
        "report_id": stages["report_id"],
        "status": status,
        "accession_number": current["accession_number"],
        "protocol_text": current["protocol_text"],
        "conclusion_text": current["conclusion_text"],
        "revision": signed["seq"] if signed else latest_draft["seq"] if latest_draft else None,
        "author": _clinician(drafts[0]) if drafts else None,
        "signer": _clinician(signed) if signed else None,
        "signed_at": signed["at"] if signed else None,
        "signed_protocol_text": signed["protocol_text"] if signed else None,
        "signed_conclusion_text": signed["conclusion_text"] if signed else None,
        "content_sha256": signed["content_sha256"] if signed else None,
        "amendments": [
            {
                "number": a["seq"],
                "reason": a["reason"],
                "amended_by": _clinician(a),
                "amended_at": a["at"],
                "protocol_before": a["protocol_before"],
                "conclusion_before": a["conclusion_before"],
                "protocol_after": a["protocol_text"],
                "conclusion_after": a["conclusion_text"],
            }
            for a in amendments
        ],
    }
