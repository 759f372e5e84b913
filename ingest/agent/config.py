"""``agent.toml``: one file configures one hospital's agent (``cami agent run --config agent.toml``).

The file is TOML. Every key is checked when the agent starts: a misspelt key or a bad value stops
it with a message naming the key (``[cami] port: expected an integer 1-65535``; a host is an IP
address or a host name, :mod:`schemas.addresses`, never looked up in DNS here). Relative paths
(``data_dir``, ``token_file``, ``[folder] path``, a CA bundle in ``verify_tls``) are taken from the
directory of the file itself, so the file and its data can move together. A full example::

    [agent]
    organisation = "1.2.643.5.1.13.13.12.2.50.1001"  # the hospital's organisation code in CAMI
    agent_id = "okb-agent-1"         # names this agent in CAMI's monitoring (one agent per hospital)
    data_dir = "data"                # spool, queue and outbox (agent.db); keep it on a local disk
    heartbeat_seconds = 30           # how often the agent reports its queue to CAMI
    request_poll_seconds = 15        # how often it asks CAMI for full-import requests

    [cami]
    base_url = "https://cami.region.example"  # required: events, full-import requests, hash checks
    token_file = "agent.token"       # the agent user's API token (or token = "...", less safe)
    verify_tls = true                # true, false, or the path of a CA bundle ("region-ca.pem")
    delivery = "dicom"               # "dicom" (C-STORE + storage commitment) or "stow" (HTTPS only)
    host = "cami.region.example"     # CAMI's DICOM address (required for delivery = "dicom")
    port = 11112
    ae_title = "CAMI"                # CAMI's AE title for scheduled studies
    emergency_ae_title = "CAMI_URGENT"  # and for emergencies (they arrive flagged emergency)
    commitment_timeout_seconds = 60  # how long to wait for CAMI's storage commitment report

    [router]                         # the agent's own Storage SCP: the PACS and modalities send here
    ae_title = "LAMI_AGENT"
    emergency_ae_title = "LAMI_URGENT"  # whatever arrives here goes at once, as an emergency
    host = "0.0.0.0"
    port = 11113
    allowed_callers = ["CT1", "LOCAL_PACS"]  # calling AE titles that may store here; leave out for any

    [[poll]]                         # a PACS that cannot push (as many [[poll]] tables as needed)
    ae_title = "LOCAL_PACS"
    host = "10.1.2.3"
    port = 104
    days_back = 7                    # C-FIND of studies dated from today - days_back to today
    interval_seconds = 300
    retrieve = "move"                # "move" (to the router's AE title) or "get"

    [folder]                         # a drop folder: complete files are picked up
    path = "/srv/dicom-drop"
    settle_seconds = 10              # a file is complete once unchanged this long

    [mis]                            # the small HTTP endpoint for the MIS (pathology flags, reports)
    host = "127.0.0.1"
    port = 8099
    token_file = "mis.token"         # or token = "..."

    [rules]
    pathology_only = true            # false: every study goes, not only those marked pathology
    pathology_marks = ["private", "mis", "sr"]  # which marks count (see below)
    pathology_codes = ["SCT:263654008", "SCT:52101004"]  # SR findings meaning pathology

    [schedule]
    windows = ["mon-fri 20:00-07:00", "sat,sun 00:00-24:00"]  # local time; none: always open
    bandwidth_kbps = 256             # cap on the link to CAMI; leave out for none

Only ``[agent]`` (organisation, agent_id, data_dir) and ``[cami]`` (base_url, a token, and host and
port for DICOM delivery) are required; every other key has the default shown. Leave out ``[router]``
for the defaults above, ``[folder]`` and ``[mis]`` to run without them.

Pathology marks: ``private`` is CAMI's private block in the objects (creator ``CAMI``, group 0x0011,
``(0011,xx10)`` = ``Y``); ``mis`` is a flag the MIS posts to the agent's endpoint (before or after the
study arrives); ``sr`` is a structured report of the study with a coded finding: a CODE content item
whose value (``ConceptCodeSequence``) is one of ``pathology_codes``, written ``SCHEME:VALUE``. The
defaults are SNOMED CT 263654008 "Abnormal" and 52101004 "Present". Emergencies (CAMI's private
``(0011,xx11)`` = ``EMERGENCY``, the router's emergency AE title, ``cami agent send --emergency``, an
urgent full-import request) go regardless of marks and windows.

Transfer windows are described in :mod:`ingest.agent.schedule` (``DAYS START-END``; a window that
crosses midnight belongs to the day it starts on).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from ingest.agent.schedule import Window, parse_window
from schemas.addresses import MAX_PORT, AddressError, check_host, url_address

__all__ = [
    "DEFAULT_PATHOLOGY_CODES",
    "PATHOLOGY_MARKS",
    "AgentConfig",
    "AgentConfigError",
    "CamiTarget",
    "FolderSource",
    "MisEndpoint",
    "PollSource",
    "RouterConfig",
    "Rules",
    "Schedule",
    "Window",
    "load_config",
]


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

    ae_title: str = "LAMI_AGENT"
    emergency_ae_title: str = "LAMI_URGENT"
    host: str = "0.0.0.0"
    port: int = 11113
    #: calling AE titles that may store here (a poll source's PACS is added to them); empty: any
    allowed_callers: tuple[str, ...] = ()


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


#: SR coded findings that mean pathology by default (SNOMED CT): "Abnormal" and "Present" as the
#: value of a CODE content item (e.g. Finding = Abnormal, Nodule = Present)
DEFAULT_PATHOLOGY_CODES: tuple[tuple[str, str], ...] = (("SCT", "263654008"), ("SCT", "52101004"))

#: the marks that can make a study pathology: CAMI's private block, the MIS's flag, an SR finding
PATHOLOGY_MARKS = ("private", "mis", "sr")


@dataclass(frozen=True)
class Rules:
    pathology_only: bool = True
    #: which marks count: "private" (CAMI's private block), "mis" (flag posted by the MIS), "sr" (coded finding)
    pathology_marks: tuple[str, ...] = ("private", "mis", "sr")
    #: (CodingSchemeDesignator, CodeValue) of SR findings that mean pathology
    pathology_codes: tuple[tuple[str, str], ...] = DEFAULT_PATHOLOGY_CODES


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
    request_poll: float = 15.0
    polls: tuple[PollSource, ...] = ()
    folder: FolderSource | None = None
    mis: MisEndpoint | None = None
    rules: Rules = Rules()
    schedule: Schedule = Schedule()
    path: Path | None = field(default=None, compare=False)


# -- the loader --------------------------------------------------------------------------------------
T = TypeVar("T")

_SECTIONS = ("agent", "cami", "router", "poll", "folder", "mis", "rules", "schedule")


class _Table:
    """One table of the file: typed getters that name ``[section] key`` in every error, and a check
    that no key is left unread (a misspelt key is an error, not a silently ignored setting)."""

    def __init__(self, name: str, values: Any, base: Path) -> None:
        if not isinstance(values, Mapping):
            raise AgentConfigError(f"{name}: expected a table")
        self.name = name
        self.values: Mapping[str, Any] = values
        self.base = base
        self.read: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.name} {key}"

    def _get(self, key: str, kind: Callable[[Any], T | None], what: str, default: T | None) -> T | None:
        self.read.add(key)
        if key not in self.values:
            return default
        value = kind(self.values[key])
        if value is None:
            raise AgentConfigError(f"{self._where(key)}: expected {what}, got {self.values[key]!r}")
        return value

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self._get(key, lambda v: v.strip() if isinstance(v, str) and v.strip() else None, "a text", default)
        if required and value is None:
            raise AgentConfigError(f"{self._where(key)} is required")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key, required=True)
        assert value is not None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, lambda v: v if isinstance(v, bool) else None, "true or false", default)
        assert value is not None
        return value

    def number(self, key: str, default: float | None, *, positive: bool = True) -> float | None:
        def kind(v: Any) -> float | None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return None
            return float(v) if (v > 0 or not positive) else None

        return self._get(key, kind, "a number above 0" if positive else "a number", default)

    def seconds(self, key: str, default: float) -> float:
        value = self.number(key, default)
        assert value is not None
        return value

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        def kind(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) and low <= v <= high else None

        return self._get(key, kind, f"an integer {low}-{high}", default)

    def port(self, key: str, default: int | None) -> int | None:
        return self.integer(key, default, 1, MAX_PORT)

    def host(self, key: str, default: str | None = None) -> str | None:
        """An IP address or a host name (:mod:`schemas.addresses`; no DNS lookup here)."""
        value = self.text(key, default)
        if value is None:
            return None
        try:
            return check_host(value)
        except AddressError as exc:
            raise AgentConfigError(f"{self._where(key)}: {exc}") from None

    def ae_title(self, key: str, default: str | None) -> str | None:
        value = self.text(key, default)
        if value is not None and (len(value) > 16 or not value.isascii() or "\\" in value or not value.isprintable()):
            raise AgentConfigError(f"{self._where(key)}: {value!r} is not an AE title (1-16 ASCII characters)")
        return value

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = self._get(key, lambda v: v if v in options else None, " or ".join(repr(o) for o in options), default)
        assert value is not None
        return value

    def path(self, key: str, default: Path | None = None) -> Path | None:
        value = self.text(key)
        if value is None:
            return default
        return (self.base / Path(value).expanduser()).resolve()

    def token(self) -> str:
        """``token = "..."`` or ``token_file = "path"`` (the file's first line); '' when neither."""
        inline = self.text("token")
        token_file = self.path("token_file")
        if inline is not None and token_file is not None:
            raise AgentConfigError(f"{self.name}: give token or token_file, not both")
        if token_file is None:
            return inline or ""
        try:
            lines = token_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise AgentConfigError(f"{self._where('token_file')}: cannot read {token_file}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise AgentConfigError(f"{self._where('token_file')}: {token_file} is empty")
        return lines[0].strip()

    def done(self) -> None:
        unknown = sorted(set(self.values) - self.read)
        if unknown:
            raise AgentConfigError(f"{self.name}: unknown key(s) {', '.join(unknown)}")


def load_config(path: Path | str) -> AgentConfig:
    """Read and check ``agent.toml``; :class:`AgentConfigError` names the key of any bad value."""
    path = Path(path).expanduser().resolve()
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise AgentConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(document) - set(_SECTIONS))
    if unknown:
        raise AgentConfigError(f"unknown section(s) {', '.join(f'[{name}]' for name in unknown)}")
    base = path.parent

    def table(name: str) -> _Table:
        return _Table(f"[{name}]", document.get(name, {}), base)

    agent = table("agent")
    organisation = agent.required_text("organisation")
    agent_id = agent.required_text("agent_id")
    data_dir = agent.path("data_dir")
    if data_dir is None:
        raise AgentConfigError("[agent] data_dir is required")
    heartbeat = agent.seconds("heartbeat_seconds", 30.0)
    request_poll = agent.seconds("request_poll_seconds", 15.0)
    agent.done()

    cami = _cami(table("cami"))
    router = _router(table("router"))
    polls = _polls(document.get("poll", []), base)
    folder = _folder(table("folder")) if "folder" in document else None
    mis = _mis(table("mis")) if "mis" in document else None
    rules = _rules(table("rules"))
    schedule = _schedule(table("schedule"))
    return AgentConfig(
        organisation=organisation,
        agent_id=agent_id,
        data_dir=data_dir,
        cami=cami,
        router=router,
        heartbeat=heartbeat,
        request_poll=request_poll,
        polls=polls,
        folder=folder,
        mis=mis,
        rules=rules,
        schedule=schedule,
        path=path,
    )


def _cami(t: _Table) -> CamiTarget:
    base_url = t.text("base_url")
    if base_url is None:
        raise AgentConfigError(
            "[cami] base_url is required: the agent posts its transfer events and reads full-import requests over HTTPS"
        )
    if not base_url.startswith(("https://", "http://")):
        raise AgentConfigError(f"[cami] base_url: {base_url!r} is not an http(s) URL")
    try:
        url_address(base_url, schemes=("http", "https"))
    except AddressError as exc:
        raise AgentConfigError(f"[cami] base_url: {exc}") from None
    token = t.token()
    if not token:
        raise AgentConfigError("[cami] token or token_file is required (the agent user's API token)")
    delivery = cast(Literal["dicom", "stow"], t.choice("delivery", "dicom", ("dicom", "stow")))
    host = t.host("host")
    port = t.port("port", None)
    if delivery == "dicom" and (host is None or port is None):
        raise AgentConfigError('[cami] host and port are required for delivery = "dicom" (or use "stow")')
    verify_tls: bool | str
    t.read.add("verify_tls")
    raw_verify = t.values.get("verify_tls", True)
    if isinstance(raw_verify, bool):
        verify_tls = raw_verify
    elif isinstance(raw_verify, str) and raw_verify.strip():
        bundle = t.path("verify_tls")
        assert bundle is not None
        if not bundle.is_file():
            raise AgentConfigError(f"[cami] verify_tls: the CA bundle {bundle} does not exist")
        verify_tls = str(bundle)
    else:
        raise AgentConfigError(f"[cami] verify_tls: expected true, false or a CA bundle's path, got {raw_verify!r}")
    defaults = CamiTarget()
    target = CamiTarget(
        ae_title=t.ae_title("ae_title", defaults.ae_title) or defaults.ae_title,
        emergency_ae_title=t.ae_title("emergency_ae_title", defaults.emergency_ae_title) or defaults.emergency_ae_title,
        host=host,
        port=port,
        base_url=base_url.rstrip("/"),
        token=token,
        delivery=delivery,
        commitment_timeout=t.seconds("commitment_timeout_seconds", defaults.commitment_timeout),
        verify_tls=verify_tls,
    )
    t.done()
    return target


def _router(t: _Table) -> RouterConfig:
    defaults = RouterConfig()
    router = RouterConfig(
        ae_title=t.ae_title("ae_title", defaults.ae_title) or defaults.ae_title,
        emergency_ae_title=t.ae_title("emergency_ae_title", defaults.emergency_ae_title) or defaults.emergency_ae_title,
        host=t.host("host", defaults.host) or defaults.host,
        port=t.port("port", defaults.port) or defaults.port,
        allowed_callers=_ae_titles(t, "allowed_callers"),
    )
    if router.ae_title == router.emergency_ae_title:
        raise AgentConfigError("[router] emergency_ae_title must differ from ae_title")
    t.done()
    return router


def _ae_titles(t: _Table, key: str) -> tuple[str, ...]:
    t.read.add(key)
    values = t.values.get(key, [])
    if not isinstance(values, list) or not all(
        isinstance(v, str) and 0 < len(v.strip()) <= 16 and v.isascii() and v.isprintable() and "\\" not in v
        for v in values
    ):
        raise AgentConfigError(f"{t._where(key)}: expected a list of AE titles (1-16 ASCII characters each)")
    return tuple(dict.fromkeys(v.strip() for v in values))


def _polls(values: Any, base: Path) -> tuple[PollSource, ...]:
    if not isinstance(values, list):
        raise AgentConfigError("[[poll]]: expected one or more [[poll]] tables")
    polls: list[PollSource] = []
    for index, value in enumerate(values):
        t = _Table(f"[[poll]] #{index + 1}", value, base)
        ae_title = t.ae_title("ae_title", None)
        host = t.host("host")
        port = t.port("port", None)
        if ae_title is None or host is None or port is None:
            raise AgentConfigError(f"{t.name}: ae_title, host and port are required")
        poll = PollSource(
            ae_title=ae_title,
            host=host,
            port=port,
            days_back=t.integer("days_back", 7, 0, 3650) or 0,
            interval=t.seconds("interval_seconds", 300.0),
            retrieve=cast(Literal["move", "get"], t.choice("retrieve", "move", ("move", "get"))),
        )
        t.done()
        polls.append(poll)
    return tuple(polls)


def _folder(t: _Table) -> FolderSource:
    path = t.path("path")
    if path is None:
        raise AgentConfigError("[folder] path is required")
    folder = FolderSource(path=path, settle=t.seconds("settle_seconds", 10.0))
    t.done()
    return folder


def _mis(t: _Table) -> MisEndpoint:
    defaults = MisEndpoint()
    token = t.token()
    if not token:
        raise AgentConfigError("[mis] token or token_file is required (the MIS authenticates with it)")
    mis = MisEndpoint(
        host=t.host("host", defaults.host) or defaults.host,
        port=t.port("port", defaults.port) or defaults.port,
        token=token,
    )
    t.done()
    return mis


def _rules(t: _Table) -> Rules:
    defaults = Rules()
    t.read.update(("pathology_marks", "pathology_codes"))
    marks = t.values.get("pathology_marks", list(defaults.pathology_marks))
    if not isinstance(marks, list) or not all(isinstance(m, str) and m in PATHOLOGY_MARKS for m in marks):
        raise AgentConfigError(
            f"[rules] pathology_marks: expected a list of {', '.join(repr(m) for m in PATHOLOGY_MARKS)}, got {marks!r}"
        )
    raw_codes = t.values.get("pathology_codes")
    codes = defaults.pathology_codes if raw_codes is None else _codes(raw_codes)
    rules = Rules(
        pathology_only=t.boolean("pathology_only", defaults.pathology_only),
        pathology_marks=tuple(dict.fromkeys(marks)),
        pathology_codes=codes,
    )
    t.done()
    return rules


def _codes(values: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(values, list):
        raise AgentConfigError(f'[rules] pathology_codes: expected a list like ["SCT:263654008"], got {values!r}')
    codes: list[tuple[str, str]] = []
    for index, value in enumerate(values):
        scheme, _, code = value.partition(":") if isinstance(value, str) else ("", "", "")
        if not scheme.strip() or not code.strip():
            raise AgentConfigError(
                f"[rules] pathology_codes[{index}]: expected SCHEME:VALUE (e.g. SCT:263654008), got {value!r}"
            )
        codes.append((scheme.strip(), code.strip()))
    return tuple(codes)


def _schedule(t: _Table) -> Schedule:
    t.read.add("windows")
    raw = t.values.get("windows", [])
    if not isinstance(raw, list):
        raise AgentConfigError(f'[schedule] windows: expected a list like ["mon-fri 20:00-07:00"], got {raw!r}')
    windows: list[Window] = []
    for index, text in enumerate(raw):
        if not isinstance(text, str):
            raise AgentConfigError(f"[schedule] windows[{index}]: expected a text, got {text!r}")
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            raise AgentConfigError(f"[schedule] windows[{index}]: {exc}") from None
    schedule = Schedule(windows=tuple(windows), bandwidth_kbps=t.number("bandwidth_kbps", None))
    t.done()
    return schedule
