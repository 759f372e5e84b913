"""Where ``cami demo`` writes.

On the embedded defaults the demo fills the configured home, as it always has (``cami status``
shows it afterwards). When a backend is a real server (Kafka, S3, a ClickHouse server) the demo's
synthetic studies would land in an archive that keeps every event forever and reports them as
its own; so the demo then runs only when told ``--yes``, and writes to a corner of its own:

* Kafka: the same cluster, its topics and consumer groups under ``<prefix>-demo``
  (``cami-demo.dicom``...; the ``topic_prefix`` of :class:`streams.topics.TopicNames`);
* S3: the same server and credentials, the bucket ``<bucket>-demo``;
* everything else embedded under ``$CAMI_HOME/demo``: the read models (chdb, also when a ClickHouse
  server is configured: it is not written to), the query store, the senders and users files, and
  the event log or the blobs when those are embedded.

Pure: :func:`demo_place` only computes settings and says where they point.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from api.config import Settings
from streams.topics import ARCHIVE_PREFIX, SOURCE_OF_TRUTH, TopicNames

#: what the demo's own topic prefix and bucket end with
SUFFIX = "-demo"
#: the longest S3 bucket name
MAX_BUCKET = 63


@dataclass(frozen=True)
class DemoPlace:
    """The settings the demo runs on and, for people, where that is."""

    settings: Settings
    #: the real servers among the configured backends (none: the embedded defaults, no --yes needed)
    servers: tuple[str, ...] = ()
    #: where the demo writes, one line each
    writes: tuple[str, ...] = ()
    #: the variables that show the demo's data again (``cami status`` with them); empty: as configured
    see_again: dict[str, str] = field(default_factory=dict)

    @property
    def needs_consent(self) -> bool:
        return bool(self.servers)


def demo_place(settings: Settings) -> DemoPlace:
    """Where ``cami demo`` writes with these settings (see the module docstring)."""
    servers = real_servers(settings)
    if not servers:
        return DemoPlace(settings, writes=(f"{settings.home} (the embedded backends)",))
    home = settings.home / "demo"
    kafka = _scheme(settings.event_log_url) == "kafka"
    s3 = _scheme(settings.blob_store_url) == "s3"
    event_log_url = demo_kafka_url(settings.event_log_url) if kafka else f"sqlite://{home}/events.db"
    blob_store_url = demo_s3_url(settings.blob_store_url) if s3 else f"file://{home}/blobs"
    demo = replace(
        settings,
        home=home,
        event_log_url=event_log_url,
        blob_store_url=blob_store_url,
        warehouse_url=f"chdb://{home}/clickhouse",
        query_store="",
        senders_path=None,
        organisations_path=None,
        users_path=None,
    )
    writes = []
    if kafka:
        old, new = _topic_prefix(settings.event_log_url), _topic_prefix(event_log_url)
        names = TopicNames(new)
        topics = ", ".join(names.physical(t) for t in SOURCE_OF_TRUTH)
        writes.append(
            f"Kafka {_kafka_servers(event_log_url)}: topics {topics} and consumer groups {new}.*"
            f" (not the archive's {old}.*)"
        )
    if s3:
        writes.append(f"S3 {_s3_where(blob_store_url)} (not bucket {_bucket(settings.blob_store_url)})")
    embedded = ["the read models (embedded ClickHouse)", "the query store", "the senders and users files"]
    if not kafka:
        embedded.insert(0, "the event log")
    if not s3:
        embedded.insert(0, "the blobs")
    writes.append(f"{home}: {', '.join(embedded)}")
    see_again = {
        "CAMI_HOME": str(home),
        "CAMI_EVENT_LOG": event_log_url,
        "CAMI_BLOBS": blob_store_url,
        "CAMI_CLICKHOUSE": demo.warehouse_url,
    }
    # the settings the demo does not use must not send `cami status` elsewhere
    for variable, value in (
        ("CAMI_QUERY_STORE", settings.query_store),
        ("CAMI_SENDERS", settings.senders_path),
        ("CAMI_ORGANISATIONS", settings.organisations_path),
        ("CAMI_USERS", settings.users_path),
    ):
        if value:
            see_again[variable] = ""
    return DemoPlace(demo, tuple(servers), tuple(writes), see_again)


def real_servers(settings: Settings) -> list[str]:
    """The configured backends that are servers (Kafka, S3, ClickHouse), where they are."""
    found = []
    if _scheme(settings.event_log_url) == "kafka":
        found.append(f"Kafka at {_kafka_servers(settings.event_log_url)}")
    if _scheme(settings.blob_store_url) == "s3":
        found.append(f"S3 {_s3_where(settings.blob_store_url)}")
    if _scheme(settings.warehouse_url) in ("clickhouse", "clickhouses"):
        parts = urlsplit(settings.warehouse_url)
        found.append(f"ClickHouse at {parts.hostname}:{parts.port or 8123}")
    if _scheme(settings.query_store_url) != "sqlite":
        found.append(f"query store {_scheme(settings.query_store_url)}")
    return found


def demo_kafka_url(url: str) -> str:
    """The Kafka URL with ``topic_prefix`` ``<its prefix>-demo`` (its other options kept)."""
    prefix = _topic_prefix(url) + SUFFIX
    return _with_query(url, {"topic_prefix": prefix})


def demo_s3_url(url: str) -> str:
    """The S3 URL with the bucket ``<bucket>-demo`` (cut to fit the 63 characters S3 allows)."""
    parts = urlsplit(url)
    bucket = parts.netloc[: MAX_BUCKET - len(SUFFIX)].rstrip(".-") + SUFFIX
    return urlunsplit(parts._replace(netloc=bucket))


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def _topic_prefix(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query)).get("topic_prefix", ARCHIVE_PREFIX)


def _with_query(url: str, options: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in options]
    return urlunsplit(parts._replace(query=urlencode([*query, *options.items()])))


def _kafka_servers(url: str) -> str:
    return urlsplit(url).netloc


def _bucket(url: str) -> str:
    return urlsplit(url).netloc


def _s3_where(url: str) -> str:
    """``http://host:9000, bucket cami`` (the endpoint, or the default one)."""
    options = dict(parse_qsl(urlsplit(url).query))
    endpoint = options.get("endpoint", "(the default endpoint)")
    return f"{endpoint}, bucket {_bucket(url)}"


def see_again_command(place: DemoPlace) -> str:
    """The command line that shows the demo's data again."""
    if not place.see_again:
        return "cami status"
    return " ".join(f"{name}={_quoted(value)}" for name, value in place.see_again.items()) + " cami status"


def _quoted(value: str) -> str:
    return shlex.quote(value) if value else "''"
