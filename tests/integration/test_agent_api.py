"""CAMI's side of the hospitals' transfer agents, over HTTP as an agent calls it (httpx against the
real server, uvicorn on a loopback port), on both event-log backends: its events appended once
and folded into the monitoring read model, bad events and tokens refused with a JSON body (a
refused token recorded, bounded), full-import requests seen only by their organisation's agent,
the end-to-end hash check after a real STOW-RS, the emergency header, and ``cami transfers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from api.auth import add_user, token_hash
from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.http import HttpServer, create_app
from api.http.agents import REFUSALS_PER_MINUTE
from schemas.codec import decode
from schemas.events import Event
from streams.processing import EmbeddedRunner
from streams.topics import ACCESS, DICOM, TRANSFERS
from tests.support.cli import run_cami
from tests.support.stow import ct_dataset, multipart, new_study, part10

ORG = "1.2.643.5.1.13.13.12.2.50.1001"
ORG_B = "1.2.643.5.1.13.13.12.2.50.1002"


def users(org: str, org_b: str) -> dict[str, dict[str, Any]]:
    return {
        "okb-agent": {"role": "agent", "organisation": org},
        "gkb-agent": {"role": "agent", "organisation": org_b},
        "admin": {"role": "administrator"},
        "it": {"role": "regional-it"},
        "dr.petrov": {"role": "radiologist", "organisation": org, "doctor_code": "R-1", "doctor_name": "Петров^Пётр"},
    }


#: an agent whose users-file entry lacks its organisation (written by hand: `cami users add` refuses it)
ORPHAN_TOKEN = "orphan-agent-token-" + "x" * 24

T = TypeVar("T")


@dataclass
class Side:
    archive: Archive
    http: HttpServer
    runner: EmbeddedRunner
    tokens: dict[str, str]
    env: dict[str, str]
    #: this test's organisations (the Kafka broker and its topics are shared by the whole run)
    org: str
    org_b: str

    def client(self, user: str | None = None, token: str | None = None) -> httpx.Client:
        token = token or (self.tokens[user] if user else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.http.url, headers=headers, timeout=60)

    def events(self, topic: str) -> list[Event]:
        log = self.archive.event_log
        return [decode(r.value) for p in log.partitions(topic) for r in log.read(topic, p, 0, 1_000_000)]

    def ids(self, topic: str) -> set[str]:
        return {e.envelope.event_id for e in self.events(topic)}

    def since(self, topic: str, before: set[str]) -> list[Event]:
        """The topic's events not in ``before`` (the broker's topics are shared by the whole run)."""
        return [e for e in self.events(topic) if e.envelope.event_id not in before]

    def restart_http(self) -> None:
        """A new app over the same CAMI home (as after a restart of `cami serve`)."""
        self.http.stop()
        self.http = HttpServer(create_app(self.archive), "127.0.0.1", 0)
        self.http.start()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def side(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Side]:
    home = tmp_path / "cami"
    home.mkdir()
    if request.param == "kafka":
        event_log = f"kafka://{request.getfixturevalue('kafka_server').bootstrap}?delivery_timeout_ms=10000"
    else:
        event_log = f"sqlite://{home}/events.db"
    env = {
        "CAMI_HOME": str(home),
        "CAMI_EVENT_LOG": event_log,
        "CAMI_BLOBS": f"file://{home}/blobs",
        "CAMI_CLICKHOUSE": f"chdb://{home}/clickhouse",
        "CAMI_PARTITIONS": "3",
    }
    archive = bootstrap(Settings.from_env(env))
    serial = uuid.uuid4().int % 10**12
    org, org_b = f"{ORG}.{serial}", f"{ORG_B}.{serial}"
    tokens = {name: add_user(home / "users.toml", name, **spec)[1] for name, spec in users(org, org_b).items()}
    with (home / "users.toml").open("a", encoding="utf-8") as file:
        file.write(f'\n[[user]]\nname = "orphan-agent"\nrole = "agent"\ntoken_sha256 = "{token_hash(ORPHAN_TOKEN)}"\n')
    runner = EmbeddedRunner(archive.event_log, archive.bindings(["monitoring"]))
    runner.start()
    http = HttpServer(create_app(archive), "127.0.0.1", 0)
    http.start()
    running = Side(archive, http, runner, tokens, env, org, org_b)
    try:
        yield running
    finally:
        running.http.stop()
        runner.stop()
        archive.close()


def until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 60) -> T:
    """``fetch()`` again until ``done`` says so (the read model follows the log asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _event(kind: str, payload: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "occurred_at": _iso(at or datetime.now(UTC)),
        "payload": payload,
    }


def agent_batch(study: str, failed_study: str) -> list[dict[str, Any]]:
    """What an agent reports for one delivered study, one held study and one heartbeat."""
    now = datetime.now(UTC)
    t1, t2 = str(uuid.uuid4()), str(uuid.uuid4())
    queued = {
        "instances": 3,
        "bytes": 3000,
        "priority": "scheduled",
        "pathology": True,
        "source_ae_title": "OKB_CT1",
        "destination": "CAMI",
    }
    return [
        _event("TransferQueued", {"transfer_id": t1, "StudyInstanceUID": study, **queued}, now - timedelta(seconds=9)),
        _event("TransferStarted", {"transfer_id": t1, "StudyInstanceUID": study, "attempt": 1}),
        _event(
            "TransferCompleted",
            {
                "transfer_id": t1,
                "StudyInstanceUID": study,
                "attempt": 1,
                "instances_sent": 3,
                "bytes_sent": 3000,
                "duration_ms": 420,
            },
        ),
        _event(
            "TransferQueued",
            {
                "transfer_id": t2,
                "StudyInstanceUID": failed_study,
                **queued,
                "priority": "emergency",
                "scheduled_for": _iso(now),  # an ISO timestamp inside the payload
                "request_id": str(uuid.uuid4()),
            },
        ),
        _event(
            "TransferFailed",
            {
                "transfer_id": t2,
                "StudyInstanceUID": failed_study,
                "attempt": 0,
                "error": "missing-patient-id: PatientID is required",
                "will_retry": False,
            },
        ),
        _event(
            "AgentHeartbeat",
            {
                "agent_id": "okb-agent",
                "host": "okb-gw",
                "agent_version": "0.1.0",
                "queue_depth": 2,
                "queue_bytes": 5000,
                "in_flight": 0,
                "link_kbps": 256.0,
                "last_success_at": _iso(now),
            },
        ),
    ]


def transfers_of(side: Side, organisation: str) -> dict[str, Any]:
    with side.client("it") as it:
        response = it.get("/api/monitoring/transfers")
    assert response.status_code == 200, response.text
    return next((o for o in response.json()["organisations"] if o["organisation"] == organisation), {})


# -- events ----------------------------------------------------------------------------------------
def test_agent_events_are_appended_once_and_fill_the_monitoring_read_model(side: Side) -> None:
    study, held = new_study(), new_study()
    batch = agent_batch(study, held)
    with side.client("okb-agent") as agent:
        answer = agent.post("/api/agent/events", json={"events": batch})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": 6, "duplicates": 0}
        # the answer was lost, the agent sends the batch again: nothing is appended twice
        again = agent.post("/api/agent/events", json={"events": batch})
        assert again.json() == {"accepted": 0, "duplicates": 6}
    # the ids are remembered in the CAMI home, not in the app: a restarted server knows them too
    side.restart_http()
    extra = _event("AgentHeartbeat", {**batch[5]["payload"], "queue_depth": 1, "queue_bytes": 2000})
    with side.client("okb-agent") as agent:
        mixed = agent.post("/api/agent/events", json={"events": [batch[0], extra, extra]})
    assert mixed.status_code == 200 and mixed.json() == {"accepted": 1, "duplicates": 2}

    logged = [e for e in side.events(TRANSFERS) if e.envelope.organisation == side.org]
    ids = [e.envelope.event_id for e in logged]
    assert sorted(ids) == sorted([b["event_id"] for b in batch] + [extra["event_id"]])
    # in the order the agent reported them (one organisation: one key, one partition)
    assert ids[:6] == [b["event_id"] for b in batch]
    for event in logged:
        env = event.envelope
        assert (env.organisation, env.aggregate_id, env.source_node) == (side.org, side.org, "agent:okb-agent")
        assert (env.actor.user, env.actor.role) == ("okb-agent", "agent")
    queued = next(e for e in logged if e.envelope.event_id == batch[3]["event_id"])
    assert queued.payload["request_id"] == batch[3]["payload"]["request_id"]
    assert queued.payload["scheduled_for"].tzinfo is not None
    assert queued.envelope.occurred_at == datetime.fromisoformat(batch[3]["occurred_at"])

    # regional IT sees the transfers and the agent as they happened
    mine = until(
        lambda: transfers_of(side, side.org),
        lambda o: (
            o.get("done") == 1 and o.get("failed") == 1 and o.get("agents") and o["agents"][0]["queue_depth"] == 1
        ),
    )
    assert (mine["done"], mine["failed"], mine["queued"], mine["in-flight"]) == (1, 1, 0, 0), mine
    assert (mine["attempts"], mine["failed_attempts"]) == (1, 1)  # not 2: the re-sent batch was not appended
    (beat,) = mine["agents"]
    assert (beat["agent_id"], beat["queue_depth"], beat["queue_bytes"], beat["link_kbps"]) == (
        "okb-agent",
        1,
        2000,
        256.0,
    )
    assert beat["last_success_at"] is not None


def test_bad_events_are_refused_naming_the_event_and_nothing_is_appended(side: Side) -> None:
    study = new_study()
    good = agent_batch(study, new_study())[0]
    before = len(side.events(TRANSFERS))
    with side.client("okb-agent") as agent:

        def post(events: Any) -> httpx.Response:
            return agent.post("/api/agent/events", json={"events": events})

        for kind in ("TransferRequested", "InstanceReceived", "NoSuchEvent"):
            wrong = post([good, {**_event(kind, {}), "payload": {"transfer_id": "x"}}])
            assert wrong.status_code == 422, wrong.text
            assert wrong.json()["error"] == "invalid-event" and wrong.json()["detail"]["index"] == 1
            assert kind in wrong.json()["detail"]["problem"]
        missing = dict(good, event_id=str(uuid.uuid4()), payload={"transfer_id": "t", "StudyInstanceUID": study})
        unfit = post([good, good, missing])
        assert unfit.status_code == 422 and unfit.json()["detail"]["index"] == 2
        assert unfit.json()["detail"]["event_id"] == missing["event_id"]
        naive = post([dict(good, occurred_at="2026-01-01T10:00:00")])
        assert naive.status_code == 422 and "UTC offset" in naive.json()["detail"]["problem"]
        future = post([dict(good, occurred_at=_iso(datetime.now(UTC) + timedelta(days=30)))])
        assert future.status_code == 422 and future.json()["detail"]["index"] == 0
        bad_uid = post([dict(good, payload={**good["payload"], "StudyInstanceUID": "1.2.abc"})])
        assert bad_uid.status_code == 422 and "StudyInstanceUID" in bad_uid.json()["detail"]["problem"]
        bad_stamp = post([dict(good, payload={**good["payload"], "scheduled_for": "tomorrow"})])
        assert bad_stamp.status_code == 422 and "scheduled_for" in bad_stamp.json()["detail"]["problem"]
        # structure: the body's own faults are 400 naming where
        not_uuid = post([dict(good, event_id="42")])
        assert not_uuid.status_code == 400 and not_uuid.json()["detail"][0]["loc"][:4] == [
            "body",
            "events",
            0,
            "event_id",
        ]
        assert post([good] * 501).status_code == 400
        assert post([]).status_code == 400
        garbage = agent.post("/api/agent/events", content=b"{not json", headers={"Content-Type": "application/json"})
        assert garbage.status_code == 400 and garbage.json()["error"] == "invalid-request"
    assert len(side.events(TRANSFERS)) == before


def test_tokens_and_roles_on_the_agent_api(side: Side) -> None:
    body = {"events": [agent_batch(new_study(), new_study())[-1]]}
    before = side.ids(ACCESS)
    with side.client(token="not-a-token") as stranger:
        refused = stranger.post("/api/agent/events", json=body)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorised"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        for _ in range(14):  # a flood from one address: recorded, but bounded
            assert stranger.get("/api/agent/requests").status_code == 401
    with side.client() as anonymous:
        assert anonymous.post("/api/agent/verify", json={"instances": []}).status_code == 401
    unauthenticated = [e for e in side.since(ACCESS, before) if e.payload["outcome"] == "unauthenticated"]
    unauthenticated.sort(key=lambda e: e.envelope.recorded_at)
    # 16 refusals from one address within seconds: the first REFUSALS_PER_MINUTE are recorded, then none
    assert len(unauthenticated) == REFUSALS_PER_MINUTE
    paths = [json.loads(e.payload["query"])["path"] for e in unauthenticated]
    assert paths == ["/api/agent/events"] + ["/api/agent/requests"] * (REFUSALS_PER_MINUTE - 1)
    first = unauthenticated[0]
    assert first.payload["channel"] == "api" and first.payload["action"] == "report"
    assert first.payload["remote_address"] == "127.0.0.1"
    assert json.loads(first.payload["query"]) == {"path": "/api/agent/events"}
    assert first.envelope.actor.user == "unauthenticated"
    # and nothing of the body was appended
    assert not [e for e in side.events(TRANSFERS) if e.envelope.organisation == side.org]

    with side.client(token=ORPHAN_TOKEN) as orphan:  # an agent without an organisation
        answer = orphan.post("/api/agent/events", json=body)
        assert answer.status_code == 403 and "organisation" in answer.json()["detail"]
        assert orphan.get("/api/agent/requests").status_code == 403
    for user in ("admin", "it", "dr.petrov"):  # the agent API is the agents'
        with side.client(user) as other:
            denied = other.post("/api/agent/events", json=body)
            assert denied.status_code == 403 and denied.json()["error"] == "forbidden", user
    with side.client("okb-agent") as agent:  # and requests are the administrator's
        asked = agent.post("/api/transfers/requests", json={"organisation": side.org, "PatientID": "P-1"})
        assert asked.status_code == 403
        assert agent.get("/api/transfers/requests").status_code == 403


# -- full-import requests --------------------------------------------------------------------------
def test_full_import_requests_reach_only_their_organisations_agent(side: Side) -> None:
    study = new_study()
    with side.client("admin") as admin:
        first = admin.post(
            "/api/transfers/requests",
            json={"organisation": side.org, "StudyInstanceUID": study, "urgent": True, "reason": "консилиум"},
        )
        assert first.status_code == 202, first.text
        second = admin.post("/api/transfers/requests", json={"organisation": side.org_b, "PatientID": "GKB-77"})
        assert second.status_code == 202
        for bad in (
            {"organisation": side.org},  # names nothing to send
            {"organisation": "okb", "PatientID": "P"},
            {"organisation": side.org, "StudyInstanceUID": "1.2.x"},
            {"organisation": side.org, "PatientID": "A\\B"},
            {"organisation": side.org, "PatientID": "P", "urgent": "yes"},
            {"organisation": side.org, "PatientID": None},
        ):
            refused = admin.post("/api/transfers/requests", json=bad)
            assert refused.status_code == 400 and refused.json()["error"] == "invalid-request", bad
    mine_id, theirs_id = first.json()["request_id"], second.json()["request_id"]
    requested = [e for e in side.events(TRANSFERS) if e.type == "TransferRequested"]
    assert [e.payload["request_id"] for e in requested if e.envelope.aggregate_id == side.org] == [mine_id]
    assert {e.envelope.actor.user for e in requested if e.envelope.organisation in (side.org, side.org_b)} == {"admin"}

    def poll(user: str, cursor: str | None = None) -> dict[str, Any]:
        with side.client(user) as agent:
            response = agent.get("/api/agent/requests", params={"cursor": cursor} if cursor is not None else None)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    mine = until(lambda: poll("okb-agent"), lambda a: bool(a["requests"]))
    assert [r["request_id"] for r in mine["requests"]] == [mine_id]  # not the other organisation's
    (request,) = mine["requests"]
    assert (request["StudyInstanceUID"], request["PatientID"], request["urgent"]) == (study, None, True)
    assert request["requested_by"] == "admin" and request["requested_at"]
    # asked again with the cursor: nothing new, and the cursor stays
    later = poll("okb-agent", mine["cursor"])
    assert later == {"requests": [], "cursor": mine["cursor"]}
    theirs = until(lambda: poll("gkb-agent"), lambda a: bool(a["requests"]))
    assert [(r["request_id"], r["PatientID"]) for r in theirs["requests"]] == [(theirs_id, "GKB-77")]
    bad_cursor = side.client("okb-agent").get("/api/agent/requests", params={"cursor": "abc"})
    assert bad_cursor.status_code == 400

    # regional IT lists them without patients; an administrator with them, and that read is recorded
    with side.client("it") as it:
        listed = it.get("/api/transfers/requests").json()["requests"]
    assert {r["request_id"] for r in listed} >= {mine_id, theirs_id}
    assert all(r["PatientID"] is None for r in listed)
    before = side.ids(ACCESS)
    with side.client("admin") as admin:
        only = admin.get("/api/transfers/requests", params={"organisation": side.org_b}).json()["requests"]
    assert [(r["request_id"], r["PatientID"], r["organisation"]) for r in only] == [(theirs_id, "GKB-77", side.org_b)]
    reads = side.since(ACCESS, before)
    assert [(e.envelope.actor.user, e.payload["PatientID"]) for e in reads] == [("admin", "GKB-77")]


def test_cami_transfers_request_reaches_the_agent(side: Side) -> None:
    study = new_study()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")} | side.env
    done = run_cami("transfers", "request", "--organisation", side.org, "--study", study, "--urgent", "--json", env=env)
    assert done.returncode == 0, done.stderr
    request_id = json.loads(done.stdout)["request_id"]
    with side.client("okb-agent") as agent:
        seen = until(lambda: agent.get("/api/agent/requests").json(), lambda a: bool(a["requests"]))
    assert [(r["request_id"], r["StudyInstanceUID"], r["urgent"]) for r in seen["requests"]] == [
        (request_id, study, True)
    ]
    assert seen["requests"][0]["requested_by"].startswith("cli:")
    usage = run_cami("transfers", "request", "--organisation", side.org, env=env)
    assert usage.returncode == 2  # --study or --patient
    wrong = run_cami("transfers", "request", "--organisation", "not-an-oid", "--patient", "P", env=env)
    assert wrong.returncode == 2 and "organisation" in wrong.stderr


def test_cami_transfers_requests_lists_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")} | {"CAMI_HOME": str(tmp_path / "home")}
    made = []
    for args in (("--study", "1.2.826.0.1.3680043.8.498.77"), ("--patient", "P-77", "--reason", "second opinion")):
        done = run_cami("transfers", "request", "--organisation", ORG, *args, env=env)
        assert done.returncode == 0, done.stderr
        made.append(done.stdout.strip().rsplit(" ", 1)[-1])
    other = run_cami("transfers", "request", "--organisation", ORG_B, "--patient", "B-1", "--json", env=env)
    listed = run_cami("transfers", "requests", "--organisation", ORG, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["request_id"] for r in rows] == made
    assert (rows[1]["PatientID"], rows[1]["reason"], rows[1]["urgent"]) == ("P-77", "second opinion", False)
    everything = json.loads(run_cami("transfers", "requests", "--json", env=env).stdout)
    assert {r["request_id"] for r in everything} == {*made, json.loads(other.stdout)["request_id"]}
    assert run_cami("transfers", "requests", "--organisation", "x;drop", env=env).returncode == 2
    # an agent's user is made with its organisation (without one it could report nothing)
    orphan = run_cami("users", "add", "lost-agent", "--role", "agent", env=env)
    assert orphan.returncode == 2 and "--organisation" in orphan.stderr
    made_agent = run_cami("users", "add", "okb-agent", "--role", "agent", "--organisation", ORG, "--json", env=env)
    assert made_agent.returncode == 0 and json.loads(made_agent.stdout)["role"] == "agent"


# -- the end-to-end check, and the emergency lane ------------------------------------------------
def test_verify_after_stow_and_the_emergency_header(side: Side) -> None:
    study = new_study()
    urgent, routine = ct_dataset(study, number=1), ct_dataset(study, number=2)
    urgent_bytes, routine_bytes = part10(urgent), part10(routine)
    with side.client("okb-agent") as agent:
        for data, priority in ((urgent_bytes, "emergency"), (routine_bytes, None)):
            body, content_type = multipart([data])
            headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
            if priority:
                headers["CAMI-Priority"] = priority
            stored = agent.post("/dicomweb/studies", content=body, headers=headers)
            assert stored.status_code == 200, stored.text
        body, content_type = multipart([part10(ct_dataset(study, number=3))])
        odd = agent.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type, "CAMI-Priority": "soon"}
        )
        assert odd.status_code == 400 and odd.json()["detail"]["parameter"] == "CAMI-Priority"
    received = {
        e.payload["SOPInstanceUID"]: e
        for e in side.events(DICOM)
        if e.type == "InstanceReceived" and e.payload["StudyInstanceUID"] == study
    }
    assert set(received) == {urgent.SOPInstanceUID, routine.SOPInstanceUID}  # the refused third stored nothing
    assert received[urgent.SOPInstanceUID].payload["emergency"] is True
    assert received[routine.SOPInstanceUID].payload["emergency"] is False
    assert received[urgent.SOPInstanceUID].envelope.organisation == side.org

    def verify(user: str, pairs: list[tuple[str, str]]) -> dict[str, str]:
        with side.client(user) as client:
            response = client.post(
                "/api/agent/verify", json={"instances": [{"SOPInstanceUID": s, "sha256": h} for s, h in pairs]}
            )
        assert response.status_code == 200, response.text
        return {i["SOPInstanceUID"]: i["result"] for i in response.json()["instances"]}

    sha = hashlib.sha256(urgent_bytes).hexdigest()
    never = new_study() + ".9"
    assert verify(
        "okb-agent",
        [(urgent.SOPInstanceUID, sha.upper()), (routine.SOPInstanceUID, "0" * 64), (never, "1" * 64)],
    ) == {urgent.SOPInstanceUID: "match", routine.SOPInstanceUID: "mismatch", never: "absent"}
    # another organisation's agent learns nothing of what it did not send (identical bytes aside)
    assert verify("gkb-agent", [(urgent.SOPInstanceUID, sha), (routine.SOPInstanceUID, "0" * 64)]) == {
        urgent.SOPInstanceUID: "match",
        routine.SOPInstanceUID: "absent",
    }
    with side.client("okb-agent") as agent:
        assert (
            agent.post("/api/agent/verify", json={"instances": [{"SOPInstanceUID": "x", "sha256": sha}]}).status_code
            == 400
        )
