"""A running archive for read-side tests: what ``cami serve`` runs on the embedded defaults.

One process, as in production on the embedded defaults: the Storage SCP (DICOM port, any free
one), the embedded runner with every projection, and the HTTP app (uvicorn on a free port), all
over one :class:`api.bootstrap.Archive` in a temporary ``CAMI_HOME``. Users of every role exist
with bearer tokens. Studies are stored the way hospitals send them (dcmtk's ``storescu``) and
:meth:`ReadSide.wait_indexed` waits until the archive index answers for them.

    with ReadSide.start(tmp_path) as side:
        sent = side.store_study(study_uid, instances=3)   # [SentFile(path, sop_instance_uid, ts)]
        side.wait_indexed(study_uid, 3)
        side.client("dr.petrov").get(f"/dicomweb/studies?StudyInstanceUID={study_uid}")
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from api.auth import add_user
from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.http import HttpServer, serve_http
from ingest.scp import StorageSCP
from projections.archive_index.views import study_series
from projections.query_model.find import search_studies
from schemas.codec import decode
from schemas.events import Event
from streams.processing import EmbeddedRunner
from tests.support import studies

ORG = "1.2.643.5.1.13.13.12.2.50.1001"
ORG_B = "1.2.643.5.1.13.13.12.2.50.1002"
ROOT_UID = "1.2.826.0.1.3680043.8.498."
#: the calling AE titles ``storescu`` uses, one per organisation
SENDER_AE = {ORG: "OKB_CT1", ORG_B: "GB2_MR1"}

#: one user per role (name -> users-file fields); tokens are in ``ReadSide.tokens``
USERS: dict[str, dict[str, Any]] = {
    "dr.petrov": {"role": "radiologist", "organisation": ORG, "doctor_code": "R-1001", "doctor_name": "Петров^Пётр"},
    "ref.ivanov": {"role": "referring-doctor", "organisation": ORG_B},
    "admin": {"role": "administrator"},
    "auditor": {"role": "auditor"},
    "it": {"role": "regional-it"},
    "analyst": {"role": "analyst"},
    "okb-pacs": {"role": "modality", "organisation": ORG},
}


def senders_toml(extra: str = "") -> str:
    """The senders file: the archive's AE title and the two sending organisations (``extra`` is
    appended, e.g. Q/R callers or C-MOVE destinations)."""
    text = '[archive]\nae_title = "CAMI"\n'
    for organisation, ae_title in SENDER_AE.items():
        text += f'\n[[sender]]\nae_title = "{ae_title}"\norganisation = "{organisation}"\nname = "{ae_title}"\n'
    return text + ("\n" + extra if extra else "")


@dataclass
class ReadSide:
    home: Path
    archive: Archive
    runner: EmbeddedRunner
    scp: StorageSCP
    http: HttpServer
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        tmp_path: Path,
        senders_extra: str = "",
        env: dict[str, str] | None = None,
        users: dict[str, dict[str, Any]] | None = None,
    ) -> ReadSide:
        """``env``: more settings (e.g. the CAMI_TLS_* of :mod:`tests.support.tls`); ``users``:
        more users beside :data:`USERS`."""
        home = tmp_path / "cami"
        home.mkdir(parents=True, exist_ok=True)
        (home / "senders.toml").write_text(senders_toml(senders_extra), encoding="utf-8")
        everyone = {**USERS, **(users or {})}
        tokens = {name: add_user(home / "users.toml", name, **spec)[1] for name, spec in everyone.items()}
        settings = Settings.from_env({"CAMI_HOME": str(home), "CAMI_PARTITIONS": "3", **(env or {})})
        archive = bootstrap(settings)
        runner = EmbeddedRunner(archive.event_log, archive.bindings())
        runner.start()
        scp = archive.storage_scp(port=0, tls_port=0)  # the TLS port only if TLS is configured
        scp.start()
        http = serve_http(archive, host="127.0.0.1", port=0)
        return cls(home, archive, runner, scp, http, tokens)

    def stop(self) -> None:
        self.http.stop()
        self.scp.stop()
        self.runner.stop()
        self.archive.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- reaching it ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.http.url

    @property
    def dicom_port(self) -> int:
        return self.scp.port

    def client(self, user: str | None = None) -> httpx.Client:
        """An HTTP client, signed in as ``user`` (bearer token) or anonymous."""
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        ca = self.archive.settings.tls.ca  # over HTTPS the test CA signed the archive's certificate
        verify = ssl.create_default_context(cafile=ca) if self.archive.settings.http_tls and ca else True
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, verify=verify)

    # -- data ----------------------------------------------------------------------------------
    def store_study(
        self,
        study_uid: str,
        instances: int = 3,
        *,
        organisation: str = ORG,
        patient_id: str = "TEST-0001",
        transfer_syntaxes: list[str] | None = None,
    ) -> list[studies.SentFile]:
        """Write a study with :func:`tests.support.studies.write_study` (explicit VR little endian
        unless ``transfer_syntaxes``) and send it with dcmtk's storescu, each file in its own
        transfer syntax; returns the files sent (their bytes are what retrieves must give back)."""
        folder = self.home.parent / "sent" / study_uid
        syntaxes = transfer_syntaxes or ["1.2.840.10008.1.2.1"]
        files = studies.write_study(folder, instances, syntaxes, study_uid=study_uid, patient_id=patient_id)
        profile = studies.storescu_profile(folder / "storescu.cfg")
        result = studies.storescu(
            "127.0.0.1", self.dicom_port, [f.path for f in files], calling=SENDER_AE[organisation], profile=profile
        )
        if result.returncode != 0 or any(
            v != "Success" for v in studies.outcomes(result.stdout + result.stderr).values()
        ):
            raise AssertionError(f"storescu failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        return files

    def wait_indexed(self, study_uid: str, instances: int, timeout: float = 30.0) -> dict[str, Any]:
        """Until the query model and the archive index (QIDO-RS/C-FIND read the one, WADO and
        C-MOVE the other) both count ``instances`` instances of the study; returns the study."""
        deadline = time.monotonic() + timeout
        while True:
            found = search_studies(self.archive.query_store, study_uid=study_uid, limit=1)
            indexed = sum(s["instance_count"] for s in study_series(self.archive.warehouse, study_uid))
            if found and found[0]["instance_count"] >= instances and indexed >= instances:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"study {study_uid} not indexed with {instances} instances in {timeout} s")
            time.sleep(0.05)

    def events(self, topic: str) -> list[Event]:
        log = self.archive.event_log
        return [decode(r.value) for p in log.partitions(topic) for r in log.read(topic, p, 0, 1_000_000)]

    def accesses(self) -> list[Event]:
        """Every RecordAccessed event so far."""
        return self.events("cami.access")
