"""The guarantees a fast query keeps (QIDO-RS served on the event loop, its access event made
durable while the answer is built; the bearer token checked there too).

* Every QIDO-RS answer leaves after its RecordAccessed event is in the log: read straight after
  the 200, the log already holds it, on both event-log backends.
* When the log cannot take the event (the embedded log closed, the Kafka broker killed) the
  search is answered 503 ``log-unavailable`` and no patient data leaves, over QIDO-RS and C-FIND
  (0xA700, no match sent) alike.
* The token is checked against the users file on every request: a user removed from it is
  refused at once (401), a user whose role changed loses the searches the new role may not do
  (403, recorded as a denied access).
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests.support.readside import ORG, ROOT_UID, ReadSide
from tests.support.servers import KafkaServer

QR_CALLER = f'[[qr_caller]]\nae_title = "RAD_WS7"\norganisation = "{ORG}"\nrole = "radiologist"\n'
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture(params=["embedded", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ReadSide, KafkaServer | None]]:
    """A running archive and, on Kafka, its own broker (this test kills it)."""
    env: dict[str, str] = {}
    kafka: KafkaServer | None = None
    if request.param == "kafka":
        kafka = KafkaServer(tmp_path / "kafka")
        kafka.start()
        env["CAMI_EVENT_LOG"] = f"kafka://{kafka.bootstrap}?delivery_timeout_ms=3000"
    side = ReadSide.start(tmp_path, senders_extra=QR_CALLER, env=env)
    try:
        yield side, kafka
    finally:
        side.stop()
        if kafka is not None:
            kafka.stop()


def c_find(side: ReadSide, study_uid: str) -> list[tuple[int, Dataset | None]]:
    """A study-level C-FIND by pynetdicom (TCP_NODELAY, as the Q/R SCP answers): (status, identifier) pairs."""
    ae = AE(ae_title="RAD_WS7")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", side.dicom_port, ae_title="CAMI")
    assert assoc.is_established
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    identifier.PatientID = ""
    try:
        return [(int(status.Status), found) for status, found in assoc.send_c_find(identifier, STUDY_ROOT_FIND)]
    finally:
        assoc.release()


def test_the_access_event_is_in_the_log_before_the_answer_and_no_answer_without_it(
    backend: tuple[ReadSide, KafkaServer | None],
) -> None:
    side, kafka = backend
    study = generate_uid(prefix=ROOT_UID)
    side.store_study(study, 2, patient_id="GUARD-1")
    side.wait_indexed(study, 2)
    before = {e.envelope.event_id for e in side.accesses()}

    with side.client("dr.petrov") as radiologist:
        answer = radiologist.get("/dicomweb/studies", params={"StudyInstanceUID": study})
        assert answer.status_code == 200, answer.text
        assert [item["00100020"]["Value"] for item in answer.json()] == [["GUARD-1"]]
        # read at once, no waiting: the event was durable before the answer left
        new = [e for e in side.accesses() if e.envelope.event_id not in before]
        assert [(e.payload["channel"], e.payload["StudyInstanceUID"], e.payload["results"]) for e in new] == [
            ("qido-rs", study, 1)
        ]
        assert new[0].envelope.actor is not None and new[0].envelope.actor.user == "dr.petrov"

        if kafka is None:
            side.archive.event_log.close()
        else:
            kafka.kill()
        refused = radiologist.get("/dicomweb/studies", params={"StudyInstanceUID": study})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "log-unavailable"
        assert "GUARD-1" not in refused.text and study not in refused.text

    answers = c_find(side, study)
    assert answers == [(0xA700, None)]  # out of resources: the access could not be recorded, nothing sent


def _rewrite_users(path: Path, change: Any) -> None:
    """The users file with ``change(entries)`` applied (a removed user, a changed role)."""
    entries = change(tomllib.loads(path.read_text(encoding="utf-8"))["user"])
    lines: list[str] = []
    for entry in entries:
        lines += ["", "[[user]]", *(f'{key} = "{value}"' for key, value in entry.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_token_is_refused_as_soon_as_its_user_is_removed_or_loses_the_role(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        users = side.home / "users.toml"
        with side.client("dr.petrov") as radiologist, side.client("ref.ivanov") as referring:
            assert radiologist.get("/dicomweb/studies").status_code == 200
            assert referring.get("/dicomweb/studies").status_code == 200

            _rewrite_users(users, lambda entries: [e for e in entries if e["name"] != "dr.petrov"])
            removed = radiologist.get("/dicomweb/studies")
            assert removed.status_code == 401, removed.text
            assert removed.json()["error"] == "unauthorised"

            before = {e.envelope.event_id for e in side.accesses()}
            _rewrite_users(
                users,
                lambda entries: [e | {"role": "regional-it"} if e["name"] == "ref.ivanov" else e for e in entries],
            )
            demoted = referring.get("/dicomweb/studies")
            assert demoted.status_code == 403, demoted.text
            denied = [e for e in side.accesses() if e.envelope.event_id not in before]
            assert [(e.payload["channel"], e.payload["outcome"]) for e in denied] == [("qido-rs", "denied")]
            assert denied[0].envelope.actor is not None and denied[0].envelope.actor.role == "regional-it"
