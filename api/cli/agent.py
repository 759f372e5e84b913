"""``cami agent``: the transfer agent at a hospital (:mod:`ingest.agent`).

``cami agent run`` is the long-running service; ``status``, ``send`` and ``requeue`` work on the
same data directory (the agent's queue is one SQLite file, safe to read and change while the
agent runs: the running agent sees the change on its next turn).
"""

from __future__ import annotations

import argparse
import signal
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.table import Table

from api.cli.output import console, out, print_json
from ingest.agent.config import AgentConfig, load_config
from ingest.agent.queue import TransferQueue
from ingest.agent.schedule import is_open, next_opening
from ingest.agent.service import Agent, destination_of


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("agent", help="the transfer agent at a hospital (run, status, send, requeue)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=Path("agent.toml"), help="the agent's file (default ./agent.toml)"
    )
    sub = p.add_subparsers(dest="agent_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", parents=[common], help="run the agent until stopped (SIGTERM or Ctrl-C)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", parents=[common], help="queue, windows, last delivery, failures")
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(func=cmd_status)

    send = sub.add_parser("send", parents=[common], help="queue a study now, whatever its pathology mark")
    send.add_argument("study", help="the StudyInstanceUID")
    send.add_argument("--emergency", action="store_true", help="send at once, ahead of the queue and any window")
    send.add_argument("--json", action="store_true", help="print as JSON")
    send.set_defaults(func=cmd_send)

    requeue = sub.add_parser("requeue", parents=[common], help="send held or waiting-to-retry studies again")
    requeue.add_argument("study", nargs="?", help="only this StudyInstanceUID (default: all)")
    requeue.add_argument("--json", action="store_true", help="print as JSON")
    requeue.set_defaults(func=cmd_requeue)


def _queue(config: AgentConfig) -> TransferQueue:
    return TransferQueue(config.data_dir, config.organisation, destination_of(config))


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    agent = Agent(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.start()
    console.print(
        f"cami agent {config.agent_id} for {config.organisation}: router {config.router.ae_title} "
        f"on {config.router.host}:{agent.router.port}, sending to {destination_of(config)}"
    )
    agent.wait()
    return 0


def agent_status(config: AgentConfig, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    queue = _queue(config)
    windows = config.schedule.windows
    opening = next_opening(windows, now)
    return {
        "agent_id": config.agent_id,
        "organisation": config.organisation,
        "destination": destination_of(config),
        "window_open": is_open(windows, now),
        "next_window": opening.isoformat() if opening is not None and not is_open(windows, now) else None,
        "bandwidth_kbps": config.schedule.bandwidth_kbps,
        **queue.status(),
        "studies": [
            {
                "StudyInstanceUID": s.study_instance_uid,
                "state": s.state.value,
                "priority": s.priority.value,
                "pathology": s.pathology,
                "full_import": s.full_import,
                "attempt": s.attempt,
                "instances": s.instances,
                "bytes": s.bytes,
                "next_attempt_at": s.next_attempt_at,
                "held_reason": s.held_reason,
                "last_error": s.last_error,
                "missing": queue.missing(s.study_instance_uid),
            }
            for s in queue.studies(["queued", "sending", "retry", "held"])
        ],
    }


def cmd_status(args: argparse.Namespace) -> int:
    state = agent_status(load_config(args.config))
    if args.json:
        print_json(state)
        return 0
    window = "open" if state["window_open"] else f"closed (opens {state['next_window'] or 'never'})"
    out.print(f"agent {state['agent_id']} ({state['organisation']}) -> {state['destination']}; window {window}")
    summary = {k: v for k, v in state.items() if k not in {"studies", "agent_id", "organisation", "destination"}}
    for key, value in summary.items():
        out.print(f"  {key}: {value}")
    table = Table(title="studies waiting, in flight or held")
    for column in ("study", "state", "priority", "attempt", "instances", "why"):
        table.add_column(column)
    for s in state["studies"]:
        why = s["held_reason"] or s["last_error"] or ""
        table.add_row(s["StudyInstanceUID"], s["state"], s["priority"], str(s["attempt"]), str(s["instances"]), why)
    out.print(table)
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    queue = _queue(load_config(args.config))
    try:
        entry = queue.send_now(args.study, args.emergency)
    except KeyError:
        console.print(f"[red]cami agent send: the agent holds no study {args.study}[/red]")
        return 1
    result = {
        "StudyInstanceUID": entry.study_instance_uid,
        "state": entry.state.value,
        "priority": entry.priority.value,
    }
    if args.json:
        print_json(result)
    else:
        out.print(f"study {entry.study_instance_uid}: {entry.state.value} ({entry.priority.value})")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    queue = _queue(load_config(args.config))
    studies = queue.requeue(args.study)
    if args.study and not studies:
        console.print(f"[red]cami agent requeue: study {args.study} is not held or waiting to retry[/red]")
        return 1
    if args.json:
        print_json({"requeued": studies})
    else:
        out.print(f"requeued {len(studies)} study(ies)")
    return 0
