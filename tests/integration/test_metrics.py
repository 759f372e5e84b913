"""``/metrics`` as Prometheus scrapes it: the counts follow what senders really did.

A study arrives by C-STORE (dcmtk's storescu), an object without a PatientID is refused, one
instance comes by STOW-RS and again (a duplicate), a radiologist searches, an agent reports a
heartbeat; the scraped text must count exactly that, on both event-log backends. Who may scrape
is checked too: loopback without a token file, only the token's bearer once it exists.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from api.auth import add_user
from streams.metrics import ArchiveMetrics
from tests.support import studies
from tests.support.readside import ORG, ROOT_UID, SENDER_AE, ReadSide
from tests.support.stow import ct_dataset, multipart, new_study, part10
from tests.support.studies import DCMTK_ENV

QR_CALLER = f"""
[[qr_caller]]
ae_title = "RAD_WS1"
organisation = "{ORG}"
role = "radiologist"
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client, headers: dict[str, str] | None = None) -> Samples:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def findscu(side: ReadSide, calling: str) -> None:
    """A study-level C-FIND by dcmtk's findscu (the answer is counted, whatever it is)."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    subprocess.run(
        ["/usr/bin/findscu", "-S", "-aet", calling, "-aec", "CAMI", *keys, "127.0.0.1", str(side.dicom_port)],
        capture_output=True,
        env=DCMTK_ENV,
        timeout=120,
        check=False,
    )


def until(client: httpx.Client, done: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(client)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


@pytest.fixture(params=["embedded", "kafka"])
def side(request: pytest.FixtureRequest, tmp_path: Path) -> ReadSide:
    env: dict[str, str] = {}
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_server").bootstrap
        env["CAMI_EVENT_LOG"] = f"kafka://{bootstrap}"  # topics shared with other tests: counts are the app's own
    running = ReadSide.start(tmp_path, senders_extra=QR_CALLER, env=env)
    request.addfinalizer(running.stop)
    return running


def test_metrics_count_what_senders_and_readers_did(side: ReadSide, tmp_path: Path) -> None:
    study = generate_uid(prefix=ROOT_UID)
    with side.client() as anonymous:
        before = scrape(anonymous)  # loopback, no token file: answered
        assert total(before, "cami_ingest_objects_total") == 0

        side.store_study(study, 2, patient_id="METRICS-1")
        bad = studies.instance(study, generate_uid(prefix=ROOT_UID), 1, patient_id=None, size=4)
        bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
        studies.storescu("127.0.0.1", side.dicom_port, [tmp_path / "bad.dcm"], calling=SENDER_AE[ORG])

        stowed = part10(ct_dataset(new_study()))
        body, content_type = multipart([stowed])
        with side.client("okb-pacs") as modality:
            for _ in range(2):  # the second time the same bytes: a duplicate, no new event
                answer = modality.post(
                    "/dicomweb/studies",
                    content=body,
                    headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                )
                assert answer.status_code == 200, answer.text
        with side.client("dr.petrov") as radiologist:
            assert radiologist.get("/dicomweb/studies", params={"StudyInstanceUID": study}).status_code == 200
        with side.client("it") as it:
            assert it.get("/dicomweb/studies").status_code == 403
        findscu(side, "RAD_WS1")  # a Q/R caller: answered
        findscu(side, "OKB_CT1")  # a sender, not a Q/R caller: 0x0124 not authorised

        token = add_user(side.home / "users.toml", "okb-agent", role="agent", organisation=ORG)[1]
        heartbeat = {
            "event_id": str(uuid.uuid4()),
            "type": "AgentHeartbeat",
            "occurred_at": datetime.now(UTC).isoformat(),
            "payload": {
                "agent_id": "okb-agent",
                "host": "okb-gw",
                "agent_version": "0.1.0",
                "queue_depth": 7,
                "queue_bytes": 7000,
                "in_flight": 1,
                "link_kbps": 256.0,
                "last_success_at": None,
            },
        }
        agent = anonymous.post(
            "/api/agent/events", json={"events": [heartbeat]}, headers={"Authorization": f"Bearer {token}"}
        )
        assert agent.status_code == 200, agent.text

        after = until(anonymous, lambda s: value(s, "cami_agent_queue_depth", organisation=ORG, agent="okb-agent") == 7)

    ingested = "cami_ingest_objects_total"
    assert value(after, ingested, channel="dicom", outcome="stored", reason="") == 2
    assert value(after, ingested, channel="dicom", outcome="rejected", reason="missing-patient-id") == 1
    assert value(after, ingested, channel="stow-rs", outcome="stored", reason="") == 1
    assert value(after, ingested, channel="stow-rs", outcome="duplicate", reason="") == 1
    assert value(after, "cami_ingest_seconds_count", channel="dicom", outcome="stored") == 2
    assert value(after, "cami_ingest_seconds_count", channel="stow-rs", outcome="duplicate") == 1
    # every stored instance's event and every rejection's event was appended, and timed
    assert value(after, "cami_event_log_append_seconds_count", topic="cami.dicom") >= 3
    assert value(after, "cami_read_requests_total", channel="qido-rs", status="200") == 1
    assert value(after, "cami_read_requests_total", channel="qido-rs", status="403") == 1
    assert value(after, "cami_read_requests_total", channel="c-find", status="0000") == 1
    assert value(after, "cami_read_requests_total", channel="c-find", status="0124") == 1
    assert value(after, "cami_agent_queue_bytes", organisation=ORG, agent="okb-agent") == 7000
    assert value(after, "cami_agent_in_flight", organisation=ORG, agent="okb-agent") == 1
    assert value(after, "cami_metrics_source_up", source="event-log") == 1
    assert value(after, "cami_metrics_source_up", source="warehouse") == 1
    lagging = {dict(labels)["projection"] for (name, labels) in after if name == "cami_projection_lag_events"}
    assert {"archive-index", "monitoring"} <= lagging


def test_once_a_token_file_exists_only_its_bearer_may_scrape(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side, side.client() as client:
        (side.home / "metrics.token").write_text("scrape-secret\n", encoding="utf-8")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {side.tokens['admin']}"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        samples = scrape(client, {"Authorization": "Bearer scrape-secret"})
        assert ("cami_metrics_source_up", frozenset({("source", "warehouse")})) in samples


def test_each_archive_counts_in_its_own_registry() -> None:
    first, second = ArchiveMetrics(), ArchiveMetrics()
    first.ingested("dicom", "stored", "", 0.01)
    assert (
        first.registry.get_sample_value(
            "cami_ingest_objects_total", {"channel": "dicom", "outcome": "stored", "reason": ""}
        )
        == 1
    )
    assert (
        second.registry.get_sample_value(
            "cami_ingest_objects_total", {"channel": "dicom", "outcome": "stored", "reason": ""}
        )
        is None
    )
    assert CollectorRegistry().get_sample_value("cami_ingest_objects_total") is None
