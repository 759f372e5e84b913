"""``cami replay --online`` as an administrator runs it: a ``cami serve`` (embedded defaults) that
holds some thousand studies rebuilds its archive index and query model from the log while a
DICOMweb client keeps asking for studies that exist, and for the metadata of one sent with
dcmtk's storescu. Not one answer may be an error or miss what exists."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.demo.synthetic import region, synthetic_study, write_study
from streams import open_event_log
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.support.agent_region import ADMIN_TOKEN, IT_TOKEN, Cami, ports, storescu, wait_for
from tests.support.cli import CAMI
from tests.support.events import synthetic_sequence

pytestmark = pytest.mark.slow

SENDER_AE = "OKB_AGENT"  # the sender senders.toml knows
#: synthetic studies written into the log before the archive starts (about 12 events each)
SEEDS, STUDIES_PER_SEED = range(40, 50), 120


@pytest.fixture()
def cami(tmp_path: Path) -> Iterator[Cami]:
    dicom_port, http_port, agent_port = ports(3)
    server = Cami(tmp_path / "cami", dicom_port, http_port, SENDER_AE, agent_port)
    with open_event_log(f"sqlite://{server.home}/events.db") as log:  # a history to rebuild
        log.ensure_topics(archive_topics(6))
        for seed in SEEDS:
            publish_many(log, synthetic_sequence(seed, studies=STUDIES_PER_SEED))
    server.start()
    try:
        yield server
    finally:
        server.process.stop()


class Viewer:
    """Asks, over and over, for each study in turn (QIDO-RS) and for one study's metadata
    (WADO-RS, read from the archive index); keeps every answer that is not the expected one."""

    def __init__(self, cami: Cami, studies: list[str], metadata_of: str, instances: int) -> None:
        self.client = httpx.Client(base_url=cami.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        self.studies, self.metadata_of, self.instances = studies, metadata_of, instances
        self.answered = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask, daemon=True)

    def _ask(self) -> None:
        i = 0
        while not self._stop.is_set():
            study = self.studies[i % len(self.studies)]
            i += 1
            try:
                found = self.client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
                if found.status_code != 200 or len(found.json()) != 1:
                    self.wrong.append(f"QIDO {study}: {found.status_code} {found.text[:200]}")
                if i % 5 == 0:
                    meta = self.client.get(f"/dicomweb/studies/{self.metadata_of}/metadata")
                    if meta.status_code != 200 or len(meta.json()) != self.instances:
                        self.wrong.append(f"metadata: {meta.status_code} {meta.text[:200]}")
            except httpx.HTTPError as exc:
                self.wrong.append(f"{type(exc).__name__}: {exc}")
            self.answered += 1

    def __enter__(self) -> Viewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def replay_online(cami: Cami, token_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAMI), "replay", "--online", "--url", cami.base_url, "--token-file", str(token_file), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_viewers_keep_their_answers_through_an_online_rebuild(tmp_path: Path, cami: Cami) -> None:
    study = synthetic_study(region()[0], "CT", instances=3, seed=931)
    storescu(SENDER_AE, "CAMI", cami.dicom_port, write_study(study, tmp_path / "study"))
    studies = [f"1.2.826.0.1.3680043.8.498.{seed}.{s + 1}" for seed in SEEDS for s in range(STUDIES_PER_SEED)]
    studies.append(study.study_uid)
    admin = tmp_path / "admin.token"
    admin.write_text(ADMIN_TOKEN + "\n", encoding="utf-8")

    def indexed() -> bool:
        last = cami.api("GET", "/dicomweb/studies", params={"StudyInstanceUID": studies[-2]})
        meta = cami.api("GET", f"/dicomweb/studies/{study.study_uid}/metadata")
        return last.status_code == 200 and len(last.json()) == 1 and meta.status_code == 200

    wait_for("every study indexed", indexed, timeout=300, every=1)
    with Viewer(cami, studies, study.study_uid, 3) as viewer:
        before = viewer.answered
        done = replay_online(
            cami, admin, "--projection", "archive-index", "--projection", "query-model", "--batch-size", "100", "--json"
        )
        during = viewer.answered - before
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["projections"] == ["archive-index", "query-model"]
    assert result["table_rows"]["qm_studies"] == len(studies)
    assert result["events"] > len(studies)
    assert viewer.wrong == []
    assert during >= 20, f"only {during} answers while the rebuild ran"

    state = cami.api("GET", "/api/rebuilds/current").json()
    assert state["phase"] == "done" and state["events_done"] == result["events"]
    assert not list(cami.home.glob("*.rebuild.*"))  # the query store's shadow is gone

    # what the command refuses: another role (403), an unknown projection (400)
    it = tmp_path / "it.token"
    it.write_text(IT_TOKEN, encoding="utf-8")
    refused = replay_online(cami, it)
    assert refused.returncode == 2 and "403" in refused.stderr
    unknown = replay_online(cami, admin, "--projection", "no-such-thing")
    assert unknown.returncode == 2 and "unknown projection" in unknown.stderr
