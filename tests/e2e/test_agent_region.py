"""The transfer agent between a hospital and CAMI, driven as the region drives it.

Real processes on loopback: ``cami serve`` (CAMI, embedded backends), ``cami agent run`` (the
hospital's agent), dcmtk's storescu (a modality), Orthanc (the hospital's PACS, polled), a
throttling TCP proxy (a slow regional link that breaks). Each test reads CAMI's event log to see
what arrived, as regional IT would.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from api.demo.synthetic import SyntheticStudy, region, synthetic_study, write_study
from streams.topics import ACCESS
from tests.support.agent_region import (
    ADMIN_TOKEN,
    IT_TOKEN,
    ORGANISATION,
    Agent,
    Cami,
    ports,
    storescu,
    wait_for,
)
from tests.support.servers import OrthancServer
from tests.support.throttle import ThrottleProxy

pytestmark = pytest.mark.slow

AGENT_AE = "OKB_AGENT"
MODALITY_AE = "OKB_CT1"


@pytest.fixture()
def cami(tmp_path: Path) -> Iterator[Cami]:
    dicom_port, http_port, agent_port = ports(3)
    server = Cami(tmp_path / "cami", dicom_port, http_port, AGENT_AE, agent_port)
    server.start()
    try:
        yield server
    finally:
        server.process.stop()


def make_agent(tmp_path: Path, cami: Cami, *, cami_dicom: tuple[str, int] | None = None, **kw: Any) -> Agent:
    dicom = cami_dicom or ("127.0.0.1", cami.dicom_port)
    return Agent(tmp_path / "agent", AGENT_AE, cami.agent_port, dicom, cami.base_url, **kw)


def study_of(seed: int, *, pathology: bool = False, emergency: bool = False, instances: int = 3) -> SyntheticStudy:
    org = region()[0]
    return synthetic_study(org, "CT", instances=instances, seed=seed, pathology=pathology, emergency=emergency)


def files_of(study: SyntheticStudy, directory: Path) -> list[Path]:
    return write_study(study, directory)


def held_sops(cami: Cami, study_uid: str) -> Counter[str]:
    return Counter(p["SOPInstanceUID"] for p in cami.received() if p["StudyInstanceUID"] == study_uid)


def delivered(cami: Cami, study: SyntheticStudy) -> bool:
    """CAMI logged TransferCompleted for the study (the agent says so only after CAMI committed all of it)."""
    return any(e.payload.get("StudyInstanceUID") == study.study_uid for e in cami.transfers("TransferCompleted"))


def assert_held_once_byte_for_byte(cami: Cami, files: list[Path]) -> None:
    """Every file is in CAMI exactly once (one InstanceReceived, version 1), with the file's bytes."""
    received = {}
    counts: Counter[str] = Counter()
    for payload in cami.received():
        counts[payload["SOPInstanceUID"]] += 1
        received[payload["SOPInstanceUID"]] = payload
    for path in files:
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert counts[sop] == 1, f"{sop}: {counts[sop]} InstanceReceived events"
        assert received[sop]["version"] == 1
        data = path.read_bytes()
        blob = cami.blob(received[sop]["blob"]["sha256"])
        # CAMI keeps the data set byte for byte; the file meta may be rebuilt, the data set may not
        assert hashlib.sha256(blob).hexdigest() == received[sop]["blob"]["sha256"]
        assert data[-4096:] == blob[-4096:], f"{sop}: the stored bytes differ from the hospital's file"


def transfer_types(cami: Cami, study_uid: str) -> list[str]:
    return [e.type for e in cami.transfers() if e.payload.get("StudyInstanceUID") == study_uid]


# -- the router: a modality sends; windows and the emergency lane -------------------------------
def test_closed_window_waits_and_an_emergency_overtakes(tmp_path: Path, cami: Cami) -> None:
    now = datetime.now().astimezone()
    opens = now + timedelta(seconds=50)
    closes = opens + timedelta(hours=2)
    day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][opens.weekday()]
    window = (
        f"{day} {opens:%H:%M:%S}-{closes:%H:%M:%S}"
        if closes.date() == opens.date()
        else (f"{day} {opens:%H:%M:%S}-24:00")
    )
    agent = make_agent(tmp_path, cami, windows=[window])
    agent.start()
    try:
        routine = study_of(101, pathology=True)
        routine_files = files_of(routine, tmp_path / "routine")
        storescu(MODALITY_AE, AGENT_AE, agent.port, routine_files)
        urgent = study_of(102, pathology=False)
        urgent_files = files_of(urgent, tmp_path / "urgent")
        # the modality sends the urgent study to the agent's emergency AE title
        storescu(MODALITY_AE, agent.emergency_ae_title, agent.port, urgent_files)

        wait_for("the emergency study to be delivered", lambda: delivered(cami, urgent), timeout=45)
        assert datetime.now().astimezone() < opens, "too slow to tell: the window opened meanwhile"
        assert not held_sops(cami, routine.study_uid), "the routine study went before its window"
        assert all(p["emergency"] for p in cami.received() if p["StudyInstanceUID"] == urgent.study_uid)
        assert "TransferQueued" in transfer_types(cami, routine.study_uid)

        wait_for("the routine study once the window opens", lambda: delivered(cami, routine), timeout=150)
        first_routine = min(p["blob"]["sha256"] for p in cami.received() if p["StudyInstanceUID"] == routine.study_uid)
        assert first_routine
        assert_held_once_byte_for_byte(cami, routine_files + urgent_files)
        assert not any(p["emergency"] for p in cami.received() if p["StudyInstanceUID"] == routine.study_uid)

        # regional IT sees both transfers done and the agent's heartbeat on CAMI's monitoring API
        def monitored() -> dict[str, Any] | None:
            answer = cami.api("GET", "/api/monitoring/transfers", IT_TOKEN)
            assert answer.status_code == 200, answer.text
            mine = [o for o in answer.json()["organisations"] if o["organisation"] == ORGANISATION]
            # (a heartbeat taken before the last delivery still counts the study: wait for a newer one)
            settled = mine and mine[0]["done"] == 2 and [a for a in mine[0]["agents"] if a["queue_depth"] == 0]
            return mine[0] if settled else None

        seen = wait_for("the monitoring read model to show the transfers", monitored, timeout=120)
        assert seen["queued"] == seen["in-flight"] == seen["failed"] == 0
        [heartbeat] = seen["agents"]
        assert heartbeat["agent_id"] == "okb-agent-1" and heartbeat["in_flight"] == 0
    finally:
        agent.process.stop()


# -- the polling proxy: a PACS that cannot push -------------------------------------------------
def test_polling_orthanc_sends_pathology_only_then_a_full_import_request(tmp_path: Path, cami: Cami) -> None:
    pacs = OrthancServer(
        tmp_path / "orthanc", aet="OKB_PACS", modalities={"agent": (AGENT_AE, "127.0.0.1", cami.agent_port)}
    )
    pacs.start()
    try:
        studies = [study_of(200 + n, pathology=n % 3 == 0, instances=2) for n in range(20)]
        files: dict[str, list[Path]] = {}
        for study in studies:
            files[study.study_uid] = files_of(study, tmp_path / "pacs-files")
            for path in files[study.study_uid]:
                assert pacs.upload(path)["Status"] == "Success"
        poll = {
            "ae_title": "OKB_PACS",
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "days_back": 1000,
            "interval_seconds": 2,
            "retrieve": "move",
        }
        agent = make_agent(tmp_path, cami, polls=[poll])
        agent.start()
        try:
            pathology = [s for s in studies if s.pathology]
            others = [s for s in studies if not s.pathology]
            assert pathology and others
            wait_for(
                "every pathology study",
                lambda: all(delivered(cami, s) for s in pathology),
                timeout=300,
            )
            # every study was pulled to the agent (C-FIND + C-MOVE); the others stay at the hospital
            status = agent.status()
            assert status["by_state"]["local"] == len(others), status
            received_studies = {p["StudyInstanceUID"] for p in cami.received()}
            assert received_studies == {s.study_uid for s in pathology}

            # an administrator asks CAMI for one non-pathology study's full set; the agent polls for it
            wanted = others[0]
            answer = cami.api(
                "POST",
                "/api/transfers/requests",
                ADMIN_TOKEN,
                json={"organisation": ORGANISATION, "StudyInstanceUID": wanted.study_uid, "reason": "consultation"},
            )
            assert answer.status_code == 202, answer.text
            wait_for("the requested study", lambda: delivered(cami, wanted), timeout=180)
            queued = [
                e for e in cami.transfers("TransferQueued") if e.payload.get("StudyInstanceUID") == wanted.study_uid
            ]
            assert queued[-1].payload["full_import"] is True
            assert {p["StudyInstanceUID"] for p in cami.received()} == {s.study_uid for s in [*pathology, wanted]}

            # bytes in CAMI equal Orthanc's (the PACS's own copy of each instance)
            by_sop = {p["SOPInstanceUID"]: p for p in cami.received()}
            for orthanc_id in pacs.instances():
                tags = pacs.rest("GET", f"/instances/{orthanc_id}/simplified-tags")
                sop = tags["SOPInstanceUID"]
                if sop not in by_sop:
                    continue
                original = pacs_file(pacs, orthanc_id)
                stored = cami.blob(by_sop[sop]["blob"]["sha256"])
                assert original[-4096:] == stored[-4096:]
        finally:
            agent.process.stop()
    finally:
        pacs.stop()


def pacs_file(pacs: OrthancServer, orthanc_id: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"{pacs.url}/instances/{orthanc_id}/file", timeout=60) as response:
        data: bytes = response.read()
    return data


# -- a slow link that breaks -----------------------------------------------------------------------
def test_slow_link_cut_mid_study_resumes_without_loss_or_duplicates(tmp_path: Path, cami: Cami) -> None:
    with ThrottleProxy("127.0.0.1", cami.dicom_port, kbps=256) as link:
        agent = make_agent(tmp_path, cami, cami_dicom=("127.0.0.1", link.port))
        agent.start()
        try:
            study = study_of(301, pathology=True, instances=4)
            files = files_of(study, tmp_path / "study")
            storescu(MODALITY_AE, AGENT_AE, agent.port, files)
            wait_for("the first instance over the slow link", lambda: held_sops(cami, study.study_uid), timeout=120)
            link.cut()
            wait_for("the transfer to complete after the cut", lambda: delivered(cami, study), timeout=240)
        finally:
            agent.process.stop()
    types = transfer_types(cami, study.study_uid)
    assert "TransferFailed" in types, types
    assert types.index("TransferFailed") < types.index("TransferCompleted"), types
    failed = next(e for e in cami.transfers("TransferFailed") if e.payload.get("StudyInstanceUID") == study.study_uid)
    assert failed.payload["will_retry"] is True and failed.payload["next_attempt_at"] is not None
    assert_held_once_byte_for_byte(cami, files)


# -- kill -9 on either side ------------------------------------------------------------------------
def test_agent_killed_mid_transfer_delivers_once_after_restart(tmp_path: Path, cami: Cami) -> None:
    agent = make_agent(tmp_path, cami, bandwidth_kbps=512)
    agent.start()
    study = study_of(401, pathology=True, instances=5)
    files = files_of(study, tmp_path / "study")
    try:
        storescu(MODALITY_AE, AGENT_AE, agent.port, files)
        wait_for("part of the study in CAMI", lambda: held_sops(cami, study.study_uid), timeout=120)
        assert not delivered(cami, study)
        agent.process.kill9()
        agent.start()
        wait_for("the study delivered after the restart", lambda: delivered(cami, study), timeout=240)
    finally:
        agent.process.stop()
    assert_held_once_byte_for_byte(cami, files)
    completed = [e for e in cami.transfers("TransferCompleted") if e.payload.get("StudyInstanceUID") == study.study_uid]
    assert len(completed) == 1
    assert completed[0].payload["instances_sent"] == len(files)


def test_cami_killed_mid_transfer_delivers_once_after_restart(tmp_path: Path, cami: Cami) -> None:
    agent = make_agent(tmp_path, cami, bandwidth_kbps=512)
    agent.start()
    study = study_of(402, pathology=True, instances=5)
    files = files_of(study, tmp_path / "study")
    try:
        storescu(MODALITY_AE, AGENT_AE, agent.port, files)
        wait_for("part of the study in CAMI", lambda: held_sops(cami, study.study_uid), timeout=120)
        cami.process.kill9()
        cami.start()
        wait_for("the study delivered after CAMI's restart", lambda: delivered(cami, study), timeout=300)
    finally:
        agent.process.stop()
    assert_held_once_byte_for_byte(cami, files)


# -- CAMI away for a while --------------------------------------------------------------------------
def test_cami_unreachable_agent_keeps_receiving_and_delivers_later_in_order(tmp_path: Path, cami: Cami) -> None:
    agent = make_agent(tmp_path, cami)
    agent.start()
    try:
        cami.process.stop()
        study = study_of(501, pathology=True)
        files = files_of(study, tmp_path / "study")
        storescu(MODALITY_AE, AGENT_AE, agent.port, files)  # the hospital side still works

        def failed_and_waiting() -> dict[str, Any] | None:
            status = agent.status()
            return status if status["events_pending"] > 0 and status["by_state"]["retry"] > 0 else None

        status = wait_for("a failed attempt and events waiting on disk", failed_and_waiting, timeout=60)
        assert status["by_state"]["delivered"] == 0
        time.sleep(3 * agent.heartbeat)  # a few heartbeat periods of outage
        back = datetime.now(UTC)
        cami.start()
        wait_for("the study delivered once CAMI is back", lambda: delivered(cami, study), timeout=240)
        wait_for(
            "heartbeats every period again once CAMI is back",
            lambda: len([e for e in cami.transfers("AgentHeartbeat") if e.envelope.occurred_at > back]) >= 2,
            timeout=60,
        )
    finally:
        agent.process.stop()
    assert_held_once_byte_for_byte(cami, files)
    # the agent's events arrived in the order they happened
    types = transfer_types(cami, study.study_uid)
    assert types[0] == "TransferQueued" and types[-1] == "TransferCompleted", types
    assert types.index("TransferFailed") < types.index("TransferCompleted")
    mine = [e for e in cami.transfers() if e.payload.get("StudyInstanceUID") == study.study_uid]
    occurred = [e.envelope.occurred_at for e in mine]
    assert occurred == sorted(occurred)
    # while CAMI was away the agent kept a heartbeat now and then, not one every period to flood it later
    first_failure = min(e.envelope.occurred_at for e in mine if e.type == "TransferFailed")
    outage = [e for e in cami.transfers("AgentHeartbeat") if first_failure < e.envelope.occurred_at < back]
    assert len(outage) <= 1, [e.envelope.occurred_at for e in outage]


# -- bad input ---------------------------------------------------------------------------------------
def test_wrong_token_is_refused_and_recorded(tmp_path: Path, cami: Cami) -> None:
    agent = make_agent(tmp_path, cami, token="not-the-token-" + "x" * 30)
    agent.start()
    try:
        answer = cami.api("POST", "/api/agent/events", agent.token, json={"events": []})
        assert answer.status_code == 401
        assert answer.json()["error"]
        wait_for("the agent's heartbeats to be refused", lambda: "401" in agent.process.tail(), timeout=60)
        assert not cami.transfers("AgentHeartbeat")
        # the refusals are recorded for regional IT and auditors (bounded per address)
        refused = [e for e in cami.events(ACCESS) if e.payload.get("outcome") == "unauthenticated"]
        assert refused and all(e.payload["remote_address"] == "127.0.0.1" for e in refused)
        status = agent.status()
        assert status["events_pending"] > 0  # nothing dropped: they wait for a valid token
    finally:
        agent.process.stop()


def test_study_failing_the_regional_rules_is_held_with_a_reason(tmp_path: Path, cami: Cami) -> None:
    agent = make_agent(tmp_path, cami, allowed_callers=[MODALITY_AE])
    agent.start()
    try:
        # a caller the hospital did not list is refused by the router, and nothing is queued
        stranger = study_of(600, pathology=True, instances=1)
        output = storescu("STRANGER", AGENT_AE, agent.port, files_of(stranger, tmp_path / "stranger"), ok=False)
        assert "Status: 0x124" in output, output  # 0x0124: refused, not authorised
        assert agent.status()["queue_depth"] == 0

        study = study_of(601, pathology=True, instances=2)
        for ds in study.instances:
            del ds.PatientID
        files = files_of(study, tmp_path / "study")
        storescu(MODALITY_AE, AGENT_AE, agent.port, files)
        failed = wait_for(
            "TransferFailed for the held study",
            lambda: [
                e for e in cami.transfers("TransferFailed") if e.payload.get("StudyInstanceUID") == study.study_uid
            ],
            timeout=60,
        )
        assert failed[0].payload["will_retry"] is False
        assert "PatientID" in failed[0].payload["error"]
        [entry] = [s for s in agent.status()["studies"] if s["StudyInstanceUID"] == study.study_uid]
        assert entry["state"] == "held" and "PatientID" in entry["held_reason"]
        assert not held_sops(cami, study.study_uid)
    finally:
        agent.process.stop()


# -- the agent's command line, as the hospital's IT staff use it ---------------------------------------
def test_status_send_and_requeue_from_the_command_line(tmp_path: Path, cami: Cami) -> None:
    agent = make_agent(tmp_path, cami)
    agent.start()
    try:
        normal = study_of(701, pathology=False, instances=2)
        storescu(MODALITY_AE, AGENT_AE, agent.port, files_of(normal, tmp_path / "normal"))
        status = wait_for("the study held locally", lambda: (s := agent.status())["by_state"]["local"] == 1 and s)
        assert status["queue_depth"] == 0 and status["window_open"] is True

        unknown = agent.cli("send", "1.2.3.4.5.6.7.8.9")
        assert unknown.returncode == 1 and "holds no study" in unknown.stderr

        sent = agent.cli("send", normal.study_uid, "--emergency", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["priority"] == "emergency"
        wait_for("the study sent from the command line", lambda: delivered(cami, normal), timeout=90)
        assert all(p["emergency"] for p in cami.received() if p["StudyInstanceUID"] == normal.study_uid)

        nothing = agent.cli("requeue", normal.study_uid)
        assert nothing.returncode == 1 and "not held" in nothing.stderr
        everything = agent.cli("requeue", "--json")
        assert everything.returncode == 0 and json.loads(everything.stdout) == {"requeued": []}
    finally:
        agent.process.stop()
