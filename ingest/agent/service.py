"""The running agent: its sources, the send loop, the event outbox pump, heartbeats and the
polling of CAMI for full-import requests, each on its own thread around one durable queue.

Threads and what they share:

- the **router SCP** (pynetdicom's own threads), the **pollers**, the **folder watch** and the
  **MIS endpoint** put studies into the queue (:class:`~ingest.agent.queue.TransferQueue`); each
  acknowledges only after the queue made the object durable;
- the **send loop** takes one study at a time (:meth:`TransferQueue.next_study`: emergencies
  first, whatever the window; scheduled studies only while a window is open), sends what of it
  is not sent yet, waits for CAMI's commitment and records the outcome. Between two instances it
  asks whether it should yield: an emergency that arrived meanwhile, or the window closing,
  puts the study back in the queue (what was sent stays sent: the next attempt resumes there);
- the **outbox pump** posts the transfer events to CAMI in order, as many as CAMI takes; while
  CAMI is unreachable they wait in the queue's outbox (on disk), and go in order afterwards;
- the **heartbeat** adds an ``AgentHeartbeat`` to the outbox every ``heartbeat`` seconds;
- the **request poll** asks CAMI for its organisation's full-import requests (the agent starts
  every connection: nothing reaches into the hospital's network).

Every loop survives its own errors (logged, then the next turn): a listener never dies of bad
input or of a broken link.
"""

from __future__ import annotations

import logging
import platform
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from ingest.agent.cami_client import CamiClient, CamiRefused, CamiUnreachable
from ingest.agent.commitment import CommitmentWaiter
from ingest.agent.config import AgentConfig
from ingest.agent.delivery import MISMATCH, Delivery, DeliveryResult, DicomDelivery, LinkDown, StowDelivery
from ingest.agent.folder import FolderWatch
from ingest.agent.mis import MisServer
from ingest.agent.model import HeldInstance, Priority, StudyEntry, StudyState
from ingest.agent.pacing import LinkPace
from ingest.agent.poller import PacsPoller
from ingest.agent.queue import TransferQueue
from ingest.agent.router import RouterScp
from ingest.agent.schedule import is_open

log = logging.getLogger("cami.agent")

#: after this many failed attempts a study is held (``cami agent requeue`` sends it again)
MAX_ATTEMPTS = 8
#: retry backoff: first wait, growth, ceiling (seconds); jittered so dozens of agents do not retry at once
BACKOFF_FIRST = 5.0
BACKOFF_FACTOR = 2.0
BACKOFF_CEILING = 900.0
#: how often the send loop looks at the queue when it has nothing to do (new work also wakes it)
IDLE_POLL = 1.0
#: events per POST to CAMI
EVENT_BATCH = 200
#: while CAMI does not take the agent's events, heartbeats are kept at most this often (seconds):
#: days of outage leave a readable history on disk, not a flood to post afterwards
HEARTBEAT_WHILE_UNREACHABLE = 600.0


def agent_version() -> str:
    try:
        return package_version("cami")
    except PackageNotFoundError:  # running from a source tree
        return "dev"


def backoff(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1`` (exponential, capped, +-20% jitter)."""
    base = min(BACKOFF_CEILING, BACKOFF_FIRST * BACKOFF_FACTOR ** max(0, attempt - 1))
    return base * random.uniform(0.8, 1.2)


def destination_of(config: AgentConfig) -> str:
    cami = config.cami
    if cami.delivery == "stow":
        return cami.base_url or ""
    return f"{cami.ae_title}@{cami.host}:{cami.port}"


class Agent:
    """One hospital's agent. :meth:`start` runs everything on background threads; :meth:`stop` ends them."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.queue = TransferQueue(
            config.data_dir,
            config.organisation,
            destination_of(config),
            self.clock,
            rules=config.rules,
            windows=config.schedule.windows,
        )
        self.waiter = CommitmentWaiter()
        self.pace = LinkPace(config.schedule.bandwidth_kbps)
        cami = config.cami
        self.client = (
            CamiClient(cami.base_url, cami.token, verify_tls=cami.verify_tls) if cami.base_url is not None else None
        )
        self.delivery = self._delivery()
        callers = config.router.allowed_callers
        # a polled PACS stores here by C-MOVE under its own AE title: it is always a caller
        allowed = {*callers, *(source.ae_title for source in config.polls)} if callers else None
        self.router = RouterScp(config.router, self.queue, self.waiter, allowed)
        self.pollers = [PacsPoller(source, self.queue, config.router.ae_title) for source in config.polls]
        self.folder = FolderWatch(config.folder, self.queue) if config.folder is not None else None
        self.mis = MisServer(config.mis, self.queue) if config.mis is not None else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: the link as the last attempt found it: up, down or unknown (nothing sent yet)
        self.link_state = "unknown"
        #: whether CAMI took the agent's last batch of events (None: not tried yet)
        self.events_posted: bool | None = None
        self._link_kbps: float | None = None

    def _delivery(self) -> Delivery:
        cami = self.config.cami
        if cami.delivery == "stow":
            if self.client is None:
                raise ValueError("delivery = 'stow' needs [cami] base_url")
            return StowDelivery(self.client, self.pace)
        if cami.host is None or cami.port is None:
            raise ValueError("delivery = 'dicom' needs [cami] host and port")
        # the hash check after commitment goes over HTTPS (client), the objects over DICOM
        return DicomDelivery(cami, self.config.router.ae_title, self.pace, self.waiter, client=self.client)

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        resumed = self.queue.recover()
        if resumed:
            log.info("resuming %d transfer(s) interrupted by the last stop", len(resumed))
        self.router.start()
        if self.mis is not None:
            self.mis.start()
        self._spawn("send", self._send_loop)
        if self.client is not None:
            self._spawn("outbox", self._outbox_loop)
            self._spawn("requests", self._request_loop)
        self._spawn("heartbeat", self._heartbeat_loop)
        for poller in self.pollers:
            self._spawn(f"poll-{poller.source.ae_title}", lambda p=poller: p.run(self._stop))  # type: ignore[misc]
        if self.folder is not None:
            folder = self.folder
            self._spawn("folder", lambda: folder.run(self._stop))

    def stop(self) -> None:
        self._stop.set()
        self.router.stop()
        if self.mis is not None:
            self.mis.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def wait(self) -> None:
        """Block until :meth:`stop` (or a signal handler calling it)."""
        while not self._stop.wait(1.0):
            pass

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"cami-agent-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _forever(self, what: str, turn: Callable[[], float]) -> None:
        """Run ``turn`` until stopped; it returns how long to sleep. An error is logged, never fatal."""
        while not self._stop.is_set():
            try:
                pause = turn()
            except Exception:
                log.exception("agent %s: unexpected error (continuing)", what)
                pause = 5.0
            if pause > 0:
                self._stop.wait(pause)

    # -- sending ---------------------------------------------------------------------------------
    def window_open(self, now: datetime | None = None) -> bool:
        return is_open(self.config.schedule.windows, now or self.clock())

    def _send_loop(self) -> None:
        self._forever("send", self.send_once)

    def send_once(self) -> float:
        """Send the next study that may go now; the pause before the next turn."""
        now = self.clock()
        study = self.queue.next_study(now, self.window_open(now))
        if study is None:
            return IDLE_POLL
        entry, instances = self.queue.start(study.study_instance_uid)
        self._send(entry, instances)
        return 0.0

    def _should_yield(self, entry: StudyEntry) -> Callable[[], bool]:
        emergency = entry.priority is Priority.EMERGENCY

        def should_yield() -> bool:
            if self._stop.is_set():
                return True
            if emergency:
                return False
            now = self.clock()
            # an emergency waits (it goes whatever the window), or the window closed under us
            waiting = self.queue.next_study(now, False)
            return waiting is not None or not self.window_open(now)

        return should_yield

    def _send(self, entry: StudyEntry, instances: list[HeldInstance]) -> None:
        uid = entry.study_instance_uid
        emergency = entry.priority is Priority.EMERGENCY
        started = time.monotonic()
        try:
            result = self.delivery.send(
                entry,
                instances,
                emergency=emergency,
                on_stored=self.queue.instance_sent,
                should_yield=self._should_yield(entry),
            )
        except LinkDown as exc:
            self.link_state = "down"
            self._retry(entry, f"link down: {exc}")
            return
        except Exception as exc:  # a bug or an unexpected answer: the study waits, the agent goes on
            log.exception("sending study %s failed", uid)
            self._retry(entry, f"{type(exc).__name__}: {exc}")
            return
        self.link_state = "up"
        elapsed = time.monotonic() - started
        if result.bytes_sent and elapsed > 0:
            self._link_kbps = result.bytes_sent * 8 / 1000 / elapsed
        self._record(entry, instances, result, int(elapsed * 1000))

    def _record(self, entry: StudyEntry, instances: list[HeldInstance], result: DeliveryResult, ms: int) -> None:
        uid = entry.study_instance_uid
        if result.yielded:
            # an emergency waits, the window closed or the agent stops: the study goes back to the
            # queue and its next attempt resumes after what was sent (and commits all of it)
            self.queue.recover()
            return
        if result.committed:
            done = self.queue.committed(uid, result.committed, duration_ms=ms)
            if done.state is not StudyState.SENDING:  # delivered (or queued again for later arrivals)
                log.info("study %s delivered (%d instances)", uid, done.instances)
                return
        problems = {**result.failed, **result.commitment_failed}
        if not problems:  # nothing failed, nothing left: cannot happen, but never leave it "sending"
            problems = {
                i.sop_instance_uid: "not committed" for i in instances if i.sop_instance_uid not in result.committed
            }
        sop, reason = next(iter(problems.items()), ("", "nothing to send"))
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        self._retry(
            entry,
            f"{len(problems)} instance(s) not stored or not committed: {sop}: {reason}{more}",
            resend=[s for s, why in result.commitment_failed.items() if why == MISMATCH],
        )

    def _retry(self, entry: StudyEntry, error: str, resend: list[str] | None = None) -> None:
        attempt = max(1, entry.attempt)
        uid = entry.study_instance_uid
        if attempt >= MAX_ATTEMPTS:
            message = f"{error}; gave up after {attempt} attempts"
            self.queue.failed(uid, message, will_retry=False, retry_at=None, resend=resend or ())
            return
        retry_at = self.clock() + timedelta(seconds=backoff(attempt))
        self.queue.failed(uid, error, will_retry=True, retry_at=retry_at, resend=resend or ())

    # -- events to CAMI --------------------------------------------------------------------------
    def _outbox_loop(self) -> None:
        failures = 0

        def turn() -> float:
            nonlocal failures
            assert self.client is not None
            events = self.queue.pending_events(EVENT_BATCH)
            if not events:
                return 1.0
            try:
                self.client.post_events(events)
            except CamiUnreachable as exc:
                failures += 1
                self.events_posted = False
                log.warning("CAMI unreachable, %d event(s) wait on disk: %s", len(events), exc)
                return min(60.0, 2.0 * failures)
            except CamiRefused as exc:
                # a wrong token or a refused event: retrying at once will not help; the events
                # stay (nothing is dropped) and regional IT sees the agent's refusals on CAMI's side
                failures += 1
                self.events_posted = False
                log.error("CAMI refused the agent's events (%s): %s", exc.status, exc.body)
                return min(300.0, 10.0 * failures)
            failures = 0
            self.events_posted = True
            self.queue.events_delivered(events[-1].seq)
            return 0.0

        self._forever("outbox", turn)

    def heartbeat_payload(self) -> dict[str, Any]:
        return self.queue.heartbeat_payload(
            self.config.agent_id,
            host=platform.node() or None,
            version=agent_version(),
            link_kbps=self._link_kbps,
            link_state=self.link_state,
        )

    def _heartbeat_loop(self) -> None:
        last = -HEARTBEAT_WHILE_UNREACHABLE

        def turn() -> float:
            nonlocal last
            now = time.monotonic()
            if self.events_posted is not False or now - last >= HEARTBEAT_WHILE_UNREACHABLE:
                self.queue.add_event("AgentHeartbeat", self.heartbeat_payload())
                last = now
            return self.config.heartbeat

        self._forever("heartbeat", turn)

    def poll_requests_once(self) -> int:
        """Ask CAMI for new full-import requests; how many were taken."""
        assert self.client is not None
        requests, cursor = self.client.requests(self.queue.request_cursor())
        for request in requests:
            queued = self.queue.request_full_import(
                str(request["request_id"]),
                study_uid=request.get("StudyInstanceUID"),
                patient_id=request.get("PatientID"),
                urgent=bool(request.get("urgent")),
            )
            log.info("full-import request %s: %d study(ies) queued", request["request_id"], len(queued))
        self.queue.set_request_cursor(cursor)
        return len(requests)

    def _request_loop(self) -> None:
        def turn() -> float:
            try:
                self.poll_requests_once()
            except (CamiUnreachable, CamiRefused) as exc:
                log.warning("could not fetch full-import requests: %s", exc)
                return self.config.request_poll * 2
            return self.config.request_poll

        self._forever("requests", turn)
