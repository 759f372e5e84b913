"""Organisations by name: the regional directory (organisations.toml, completed by the senders'
names) reaches the monitoring endpoints, the study page and ``cami status``; a code in neither is
shown as the code behind the marker.

Three organisations send with dcmtk's storescu: one the directory names (short name "ОКБ"), one
only the senders file names, one nobody names. Regional IT's figures, a radiologist's study page
(the data the page's script draws), ``cami status`` run as a subprocess over the same home, and the
one-line refusal of a wrong entry in the directory by ``cami status`` and ``cami serve``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.cli import embedded_env, run_cami
from tests.support.readside import ORG, ORG_B, ROOT_UID, SENDER_AE, ReadSide

#: an organisation whose sender has no name and which the directory does not list
FAP = "1.2.643.5.1.13.13.12.2.50.1099"
FAP_AE = "FAP_US1"
PATIENT = "NAMES-0001"
DIRECTORY = f"""
[[organisation]]
code = "{ORG}"
name = "ГБУЗ МО «Областная клиническая больница»"
short_name = "ОКБ"
region = "50"
"""


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite://{tmp_path}/events.db"
    server: Any = request.getfixturevalue("kafka_server")
    return f"kafka://{server.bootstrap}"


def page_data(response: httpx.Response) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="cami-data">(.*?)</script>', response.text, re.S)
    assert match, response.text[:500]
    return dict(json.loads(match.group(1)))


def send_as_fap(side: ReadSide, tmp_path: Path, study_uid: str) -> None:
    folder = tmp_path / "fap" / study_uid
    files = studies.write_study(folder, 2, ["1.2.840.10008.1.2.1"], study_uid=study_uid, patient_id=PATIENT)
    profile = studies.storescu_profile(folder / "storescu.cfg")
    result = studies.storescu("127.0.0.1", side.dicom_port, [f.path for f in files], calling=FAP_AE, profile=profile)
    assert set(studies.outcomes(result.stdout + result.stderr).values()) == {"Success"}, result.stderr[-2000:]


def test_names_on_the_monitoring_endpoints_the_study_page_and_cami_status(tmp_path: Path, log_url: str) -> None:
    home = tmp_path / "cami"
    home.mkdir()
    (home / "organisations.toml").write_text(DIRECTORY, encoding="utf-8")
    fap_sender = f'[[sender]]\nae_title = "{FAP_AE}"\norganisation = "{FAP}"\n'  # no name
    with ReadSide.start(tmp_path, senders_extra=fap_sender, env={"CAMI_EVENT_LOG": log_url}) as side:
        okb_study, fap_study, gb2_study = (generate_uid(prefix=ROOT_UID) for _ in range(3))
        side.store_study(okb_study, 2, patient_id=PATIENT)
        side.store_study(gb2_study, 1, organisation=ORG_B, patient_id="NAMES-0002")
        send_as_fap(side, tmp_path, fap_study)
        for study, count in ((okb_study, 2), (fap_study, 2), (gb2_study, 1)):
            side.wait_indexed(study, count)

        with side.client("it") as it:
            deadline = time.monotonic() + 30
            while True:  # until the monitoring projection has folded all three organisations
                response = it.get("/api/monitoring/organisations", params={"minutes": 30})
                assert response.status_code == 200, response.text
                rows = {r["organisation"]: r for r in response.json()["organisations"]}
                folded = {ORG, ORG_B} <= set(rows) and rows.get(FAP, {}).get("instances") == 2
                if folded or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert (rows[ORG]["organisation_name"], rows[ORG]["organisation_known"]) == ("ОКБ", True)
            # the senders file names what the directory does not list
            assert (rows[ORG_B]["organisation_name"], rows[ORG_B]["organisation_known"]) == (SENDER_AE[ORG_B], True)
            assert (rows[FAP]["organisation_name"], rows[FAP]["organisation_known"]) == (f"⚠ {FAP}", False)
            assert rows[FAP]["instances"] == 2  # the code stays, the figures are the organisation's
            minutes = it.get(f"/api/monitoring/organisations/{FAP}/minutes", params={"minutes": 30}).json()
            assert minutes["organisation"] == FAP and minutes["organisation_name"] == f"⚠ {FAP}"
            assert sum(m["instances"] for m in minutes["minutes"]) == 2
            okb_minutes = it.get(f"/api/monitoring/organisations/{ORG}/minutes").json()
            assert okb_minutes["organisation_name"] == "ОКБ" and okb_minutes["organisation_known"] is True
            transfers = it.get("/api/monitoring/transfers")
            assert transfers.status_code == 200
            assert all("organisation_name" in row for row in transfers.json()["organisations"])

        with side.client("dr.petrov") as radiologist:
            page = radiologist.get("/study", params={"patient": PATIENT, "study": okb_study})
            assert page.status_code == 200, page.text[:500]
            data = page_data(page)
            (okb,) = data["study"]["organisation_names"]
            assert okb == {
                "code": ORG,
                "display": "ОКБ",
                "name": "ГБУЗ МО «Областная клиническая больница»",
                "short_name": "ОКБ",
                "region": "50",
                "known": True,
            }
            assert data["study"]["organisations"] == [ORG]  # the codes stay beside the names
            # the patient's earlier study came from the organisation nobody named: code + marker
            (prior,) = data["priors"]
            assert prior["study_uid"] == fap_study
            assert prior["organisation_names"] == [
                {"code": FAP, "display": f"⚠ {FAP}", "name": None, "short_name": None, "region": None, "known": False}
            ]
            found = page_data(radiologist.get("/search", params={"patient": PATIENT}))["results"]
            shown = {s["study_uid"]: [o["display"] for o in s["organisation_names"]] for s in found}
            assert shown == {okb_study: ["ОКБ"], fap_study: [f"⚠ {FAP}"]}
            assert radiologist.get("/api/session").json()["organisation_name"] == "ОКБ"

    # `cami status` over the same home (the archive above is closed: chdb's directory is free)
    env = {**embedded_env(tmp_path), "CAMI_HOME": str(home), "CAMI_EVENT_LOG": log_url, "CAMI_PARTITIONS": "3"}
    env["COLUMNS"] = "240"  # the table's lines whole
    status = run_cami("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    organisations = json.loads(status.stdout)["organisations"]
    assert (organisations["listed"], organisations["from_senders"]) == (1, 1)  # GB2_MR1's name; FAP has none
    recent = {r["organisation"]: r for r in organisations["recent"]}
    # (on Kafka the broker is the session's: other tests' objects from ORG count too)
    assert recent[ORG]["organisation_name"] == "ОКБ" and recent[ORG]["instances"] >= 2
    assert recent[ORG_B]["organisation_name"] == SENDER_AE[ORG_B]
    assert recent[FAP]["organisation_name"] == f"⚠ {FAP}" and recent[FAP]["organisation_known"] is False
    table = run_cami("status", env=env)
    assert table.returncode == 0, table.stderr
    assert "ОКБ" in table.stdout and f"⚠ {FAP}" in table.stdout

    # a wrong entry: refused with one line naming it
    (home / "organisations.toml").write_text(DIRECTORY + f'\n[[organisation]]\ncode = "{FAP}"\n', encoding="utf-8")
    refused = run_cami("status", env=env)
    assert refused.returncode != 0
    assert f"organisation {FAP}: missing 'name'" in refused.stderr and "Traceback" not in refused.stderr
    served = run_cami("serve", env={**env, "CAMI_DICOM_PORT": "0", "CAMI_HTTP_PORT": "0"}, timeout=120)
    assert served.returncode == 1  # before any listener opened
    assert f"organisation {FAP}: missing 'name'" in served.stderr and "Traceback" not in served.stderr
