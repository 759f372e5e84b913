"""``agent.toml``: one file configures one hospital's agent.

(The loader, :func:`load_config`, and its validation are filled in below the dataclasses.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Literal


class AgentConfigError(ValueError):
    """The agent file is unreadable or holds a bad value (the message names the key)."""


@dataclass(frozen=True)
class CamiTarget:
    """Where CAMI is: its DICOM address and/or its HTTPS base URL, and the agent's token."""

    ae_title: str = "CAMI"
    emergency_ae_title: str = "CAMI_URGENT"
    host: str | None = None
    port: int | None = None
    base_url: str | None = None
    token: str = ""
    delivery: Literal["dicom", "stow"] = "dicom"
    commitment_timeout: float = 60.0
    #: True, False, or the path of a CA bundle
    verify_tls: bool | str = True


@dataclass(frozen=True)
class RouterConfig:
    """The agent's own Storage SCP (modalities and the local PACS forward to it)."""

    ae_title: str = "CAMI_AGENT"
    emergency_ae_title: str = "CAMI_AGENT_URG"
    host: str = "0.0.0.0"
    port: int = 11113


@dataclass(frozen=True)
class PollSource:
    """A PACS that cannot push: found by C-FIND, pulled by C-MOVE (or C-GET)."""

    ae_title: str
    host: str
    port: int
    days_back: int = 7
    interval: float = 300.0
    retrieve: Literal["move", "get"] = "move"


@dataclass(frozen=True)
class FolderSource:
    path: Path
    #: a file is complete once its size and mtime stayed the same this long
    settle: float = 10.0


@dataclass(frozen=True)
class MisEndpoint:
    """The agent's small HTTP endpoint for the MIS (pathology flags, reports)."""

    host: str = "127.0.0.1"
    port: int = 8099
    token: str = ""


@dataclass(frozen=True)
class Rules:
    pathology_only: bool = True
    #: which marks count: "private" (CAMI's private block), "mis" (flag posted by the MIS), "sr" (coded finding)
    pathology_marks: tuple[str, ...] = ("private", "mis", "sr")
    #: (CodingSchemeDesignator, CodeValue) of SR findings that mean pathology
    pathology_codes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Window:
    """Transfer window: on these weekdays (0 = Monday), from ``start`` to ``end`` (may cross midnight)."""

    weekdays: frozenset[int]
    start: time
    end: time
    #: True when end is 24:00 (the whole rest of the day)
    until_midnight: bool = False


@dataclass(frozen=True)
class Schedule:
    #: no windows: always open
    windows: tuple[Window, ...] = ()
    #: None: no cap
    bandwidth_kbps: float | None = None


@dataclass(frozen=True)
class AgentConfig:
    organisation: str
    agent_id: str
    data_dir: Path
    cami: CamiTarget
    router: RouterConfig = RouterConfig()
    heartbeat: float = 30.0
    polls: tuple[PollSource, ...] = ()
    folder: FolderSource | None = None
    mis: MisEndpoint | None = None
    rules: Rules = Rules()
    schedule: Schedule = Schedule()
    path: Path | None = field(default=None, compare=False)
