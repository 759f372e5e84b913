"""Pure parts of CAMI's side of the transfer agents (api/http/agents.py): an agent's event becomes
the log's event under the agent's organisation and id, refused tokens are recorded within a
budget per address, and accepted event ids are remembered in a file (and forgotten after a while)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.auth import User
from api.http.agents import KEEP_IDS, AgentEvent, AgentEventIds, RefusalBudget, UnfitEvent, agent_event
from projections.analytics import Analytics
from projections.audit.fold import summarise
from schemas.events import Actor, new_event
from streams.processing import Source

ORG = "1.2.643.5.1.13.13.12.2.50.1001"
AGENT = User("okb-agent", "agent", ORG)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _item(kind: str, payload: dict[str, object], at: str = "2026-03-01T14:00:00+03:00") -> AgentEvent:
    return AgentEvent(event_id=str(uuid.uuid4()), type=kind, occurred_at=datetime.fromisoformat(at), payload=payload)


def test_an_agent_event_keeps_its_id_and_takes_the_agents_organisation() -> None:
    item = _item(
        "AgentHeartbeat",
        {"agent_id": "a", "queue_depth": 1, "queue_bytes": 2, "in_flight": 0, "last_success_at": "2026-03-01T10:00Z"},
    )
    event = agent_event(0, item, AGENT, NOW)
    env = event.envelope
    assert env.event_id == item.event_id and env.aggregate_id == ORG and env.organisation == ORG
    assert (env.source_node, env.actor.user, env.actor.role) == ("agent:okb-agent", "okb-agent", "agent")
    assert env.occurred_at == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)  # +03:00 read as UTC
    assert event.payload["last_success_at"] == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "payload", "at", "problem"),
    [
        ("TransferRequested", {}, "2026-03-01T10:00Z", "not one an agent reports"),
        ("TransferStarted", {"transfer_id": "t"}, "2026-03-01T10:00Z", "attempt"),
        ("TransferStarted", {"transfer_id": "", "attempt": 1}, "2026-03-01T10:00Z", "transfer_id"),
        ("TransferStarted", {"transfer_id": "t", "attempt": 1}, "1999-12-31T10:00Z", "occurred_at"),
        ("TransferStarted", {"transfer_id": "t", "attempt": 1, "extra": 1}, "2026-03-01T10:00Z", "extra"),
    ],
)
def test_an_event_that_does_not_fit_names_its_index(
    kind: str, payload: dict[str, object], at: str, problem: str
) -> None:
    with pytest.raises(UnfitEvent) as refused:
        agent_event(7, _item(kind, payload, at), AGENT, NOW)
    assert refused.value.detail["index"] == 7 and problem in refused.value.detail["problem"]


def test_refusals_are_recorded_within_a_budget_per_address() -> None:
    budget = RefusalBudget(per_window=3, window=60, max_tracked=2)
    assert [budget.allow("10.0.0.1", now=t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert budget.allow("10.0.0.2", now=3)  # another address has its own budget
    assert budget.allow("10.0.0.1", now=60.5)  # the first refusal left the window
    budget.allow("10.0.0.3", now=61)  # memory stays bounded: the least recent address is forgotten
    assert budget.allow("10.0.0.2", now=61)


def test_accepted_ids_outlive_the_process_and_old_ones_are_dropped(tmp_path: Path) -> None:
    ids = AgentEventIds(tmp_path / "agent-events.db")
    ids.remember(["a", "b"], now=1000.0)
    ids.close()
    again = AgentEventIds(tmp_path / "agent-events.db")
    assert again.known(["a", "b", "c"]) == {"a", "b"}
    again.remember(["c"], now=1000.0 + KEEP_IDS.total_seconds() + 1)
    assert again.known(["a", "b", "c"]) == {"c"}
    again.close()


def test_a_request_is_no_transfer_in_analytics_and_reads_plainly_in_the_audit_trail() -> None:
    requested = new_event(
        "TransferRequested",
        {"request_id": "r1", "organisation": ORG, "StudyInstanceUID": "1.2.3", "urgent": True},
        aggregate_id=ORG,
        source_node="http:test",
        organisation=ORG,
        actor=Actor("admin", "administrator"),
    )
    assert Analytics(b"k" * 32).apply(requested, Source("cami.transfers", 0, 0, b"")) == []
    assert summarise(requested) == f"full import of study 1.2.3 requested from {ORG} (urgent)"
