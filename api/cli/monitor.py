"""``cami monitor``: the regional dashboard in a terminal, refreshing in place.

``cami monitor --token-file FILE [--url URL] [--ca FILE] [--once] [--json]`` shows the figures of
``/monitoring`` (one row per organisation and agent, then the alarms) from a running ``cami serve``:
it follows ``GET /api/monitoring/stream`` (Server-Sent Events, a new snapshot whenever the
monitoring projection has folded new events) and redraws; when the connection drops it says so on
screen and reconnects. It reads over HTTP, as the browser does, so it works from a regional IT
workstation, needs a ``regional-it`` or ``administrator`` token (``cami users add``), and every look
is recorded like the page's. ``--once`` prints one snapshot and exits (``--json``: the snapshot as
the API gives it, for scripts).

Exit codes: 0 done (``--once``, or Ctrl-C); 1 CAMI unreachable (``--once``) or the token refused;
2 usage error (no token in the file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from api.cli.output import archive_url, console, out, print_json
from api.cli.remote import default_url, read_token

DASHBOARD_PATH = "/api/monitoring/dashboard"
STREAM_PATH = "/api/monitoring/stream"
#: seconds between reconnection attempts while CAMI cannot be reached
RECONNECT = 5.0


class Refused(Exception):
    """CAMI refused the token (401) or its role (403): retrying would not help."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="the regional dashboard in the terminal, live (organisations, agents, transfers, alarms)",
        description="Follows the running archive's monitoring stream and redraws the dashboard in place.",
        epilog="Exit codes: 0 done; 1 unreachable or refused; 2 usage error.",
    )
    p.add_argument("--url", type=archive_url, help="the archive's HTTP address (default: from CAMI_HTTP_HOST/PORT/TLS)")
    p.add_argument(
        "--token-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="a file holding a regional-it or administrator bearer token ('-': read it from stdin)",
    )
    p.add_argument("--ca", metavar="FILE", help="the CA certificate to trust for HTTPS (default: the system's)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    p.set_defaults(func=cmd_monitor)


def cmd_monitor(args: argparse.Namespace) -> int:
    try:
        token = read_token(args.token_file)
    except OSError as exc:
        sys.stderr.write(f"cami monitor: cannot read the token file: {exc}\n")
        return 2
    if token is None:
        sys.stderr.write("cami monitor: the token file is empty\n")
        return 2
    url = (args.url or default_url()).rstrip("/")
    client = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        verify=args.ca or True,
        timeout=httpx.Timeout(10.0, read=None),  # the stream stays quiet between keep-alives
    )
    try:
        if args.once:
            return _once(client, args.json)
        return _follow(client, url)
    finally:
        client.close()


def _once(client: httpx.Client, as_json: bool) -> int:
    try:
        answer = client.get(DASHBOARD_PATH)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"cami monitor: {client.base_url} cannot be reached: {exc}\n")
        return 1
    if answer.status_code != 200:
        sys.stderr.write(f"cami monitor: {_refusal(answer.status_code, answer.text)}\n")
        return 1
    snapshot = answer.json()
    if as_json:
        print_json(snapshot)
    else:
        out.print(render(snapshot))
    return 0


def _follow(client: httpx.Client, url: str) -> int:
    try:
        return _redraw(client, url)
    except KeyboardInterrupt:  # Ctrl-C is how one leaves a live view
        return 0


def _redraw(client: httpx.Client, url: str) -> int:
    with Live(Text(f"connecting to {url} ..."), console=out, auto_refresh=False, screen=False) as live:
        while True:
            try:
                for snapshot in snapshots(client):
                    live.update(render(snapshot), refresh=True)
                problem = "the stream ended (the server is stopping?)"
            except Refused as exc:
                live.stop()
                console.print(f"cami monitor: {exc}")
                return 1
            except httpx.HTTPError as exc:
                problem = f"cannot reach {url}: {exc.__class__.__name__}: {exc}"
            live.update(Text(f"{_now()}  {problem}; trying again in {RECONNECT:.0f} s", style="yellow"), refresh=True)
            time.sleep(RECONNECT)


def snapshots(client: httpx.Client) -> Iterator[dict[str, Any]]:
    """Each snapshot the stream sends, as it comes (Server-Sent Events: ``event: snapshot`` then
    ``data:`` lines, ended by a blank line; comment lines are keep-alives)."""
    with client.stream("GET", STREAM_PATH, headers={"Accept": "text/event-stream"}) as answer:
        if answer.status_code != 200:
            answer.read()
            raise Refused(_refusal(answer.status_code, answer.text))
        kind, data = "message", list[str]()
        for line in answer.iter_lines():
            if line == "":
                if data and kind == "snapshot":
                    yield json.loads("\n".join(data))
                kind, data = "message", list[str]()
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)


def _refusal(status: int, body: str) -> str:
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    if status in (401, 403):
        what = "the token was refused" if status == 401 else "this token's role may not see the dashboard"
        return f"{what} ({status}: {detail}); a regional-it or administrator token is needed"
    return f"the archive answered {status}: {detail}"


# -- drawing (pure: snapshot in, renderable out) ---------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def _when(value: str | None, now: datetime) -> str:
    """An ISO time as its age ("42 s ago", "3 min ago", "2 h ago"); "—" when never."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _size(count: int | None) -> str:
    value = float(count or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


def _organisation(row: dict[str, Any]) -> Text:
    name = row.get("organisation_name") or row.get("organisation", "?")
    return Text(str(name), style="" if row.get("organisation_known", True) else "yellow")


def _in_flight(transfers: list[dict[str, Any]]) -> str:
    parts = []
    for t in transfers:
        progress = t.get("progress")
        done = f"{progress * 100:.0f}%" if isinstance(progress, int | float) else "?"
        urgent = "!" if t.get("priority") == "emergency" else ""
        parts.append(f"{urgent}{t.get('instances_arrived', 0)}/{t.get('instances', 0)} ({done})")
    return ", ".join(parts) or "—"


def _emergency(e: dict[str, Any]) -> str:
    text = f"{e.get('waiting', 0)} waiting, {e.get('delivered_today', 0)} delivered"
    if e.get("delivery_median_s") is not None:
        text += f" (median {e['delivery_median_s']:.0f} s)"
    return text


def _alarm(alarm: dict[str, Any], now: datetime) -> str:
    who = alarm.get("organisation_name") or alarm.get("organisation", "?")
    if alarm.get("agent_id"):
        who += f" / agent {alarm['agent_id']}"
    kind = {
        "silent-sender": "silent sender",
        "agent-silent": "agent missed its heartbeats",
        "stalled-transfer": "transfer stalled",
    }.get(alarm.get("kind", ""), alarm.get("kind", "alarm"))
    since = _when(alarm.get("since"), now)
    allowed = f", usual at most {alarm['allowed_s']} s" if alarm.get("allowed_s") is not None else ""
    return f"{kind}: {who} — last seen {since}{allowed}"


def render(snapshot: dict[str, Any]) -> RenderableType:
    """The dashboard: one row per organisation and agent, then the alarms."""
    now = datetime.now(UTC)
    table = Table(title=f"CAMI regional dashboard — {_now()} UTC", title_justify="left", expand=False)
    for column in (
        "organisation",
        "agent",
        "link",
        "heartbeat",
        "queue",
        "oldest waiting",
        "today: studies / inst. / bytes",
        "in flight",
        "failed 1 h",
        "incomplete",
        "emergency",
        "last arrival",
    ):
        table.add_column(column, overflow="fold")
    for org in snapshot.get("organisations", []):
        today = org.get("today", {})
        failures = org.get("failures_last_hour", {})
        common = [
            f"{today.get('studies', 0)} / {today.get('instances', 0)} / {_size(today.get('bytes'))}",
            _in_flight(org.get("in_flight", [])),
            f"{failures.get('transfers', 0)} transfers, {failures.get('rejections', 0)} rejected",
            str(org.get("incomplete_packages", 0)),
            _emergency(org.get("emergency", {})),
            _when(org.get("last_arrival"), now),
        ]
        alarmed = bool(org.get("alarms"))
        agents = org.get("agents") or [{}]
        for agent in agents:
            link = agent.get("link_state") or ("—" if not agent else "unknown")
            table.add_row(
                _organisation(org),
                str(agent.get("agent_id", "—")),
                Text(link, style={"up": "green", "down": "red"}.get(link, "")),
                _when(agent.get("last_heartbeat"), now) if agent else "—",
                f"{agent.get('queue_depth', 0)} ({_size(agent.get('queue_bytes'))})" if agent else "—",
                _when(agent.get("oldest_waiting_at"), now) if agent else "—",
                *common,
                style="red" if alarmed else None,
            )
    alarms = snapshot.get("alarms", [])
    lines: list[RenderableType] = [table]
    if alarms:
        lines.append(Text(f"{len(alarms)} alarm(s):", style="bold red"))
        lines.extend(Text("  " + _alarm(a, now), style="red") for a in alarms)
    else:
        lines.append(Text("no alarms", style="green"))
    return Group(*lines)
