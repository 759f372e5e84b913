"""Configuration: a few environment variables with local defaults (12-factor style).

=====================  ==========================================  =================================
variable               meaning                                     default
=====================  ==========================================  =================================
CAMI_HOME              data directory of the embedded backends      ./cami-data
CAMI_EVENT_LOG         event log URL                                sqlite:///$CAMI_HOME/events.db
CAMI_BLOBS             blob store URL                               file:///$CAMI_HOME/blobs
CAMI_CLICKHOUSE        ClickHouse URL                               chdb:///$CAMI_HOME/clickhouse
CAMI_QUERY_STORE       query store URL (QIDO-RS, C-FIND, lists)     sqlite:///$CAMI_HOME/query.db
CAMI_PARTITIONS        partitions of newly created topics           6
CAMI_KAFKA_WAIT        seconds the first request waits for a Kafka  120
                       broker that is not up yet (0: one try)
CAMI_TOPIC_PREFIX      what the archive's Kafka topic and consumer  cami (``cami.dicom``...)
                       group names start with
CAMI_SENDERS           who may send (AE title -> organisation)      $CAMI_HOME/senders.toml
CAMI_ORGANISATIONS     the regional directory (code -> names)       $CAMI_HOME/organisations.toml
CAMI_DICOM_HOST        address the DICOM services listen on         127.0.0.1
CAMI_DICOM_PORT        port of the DICOM services                   11112
CAMI_HTTP_HOST         address the HTTP API listens on              127.0.0.1
CAMI_HTTP_PORT         port of the HTTP API (DICOMweb, reports)     8042
CAMI_HL7_HOST          address the HL7 v2 (MLLP) listener uses      127.0.0.1
CAMI_HL7_PORT          port of the HL7 v2 listener (``off``: none)  2575
CAMI_HL7_CHARSET       character set of HL7 messages whose MSH-18   UTF-8
                       declares none (e.g. CP1251 for an old MIS)
CAMI_TIMEZONE          the region's time zone (IANA name): HL7      UTC
                       times without an offset, worklist times
CAMI_DOUBLE_READ       modalities whose studies are read twice,     none
                       independently (screening: e.g. MG,DX)
CAMI_PSEUDONYM_KEY     HMAC key for patient pseudonyms (analytics)  a development key (set it!)
CAMI_TLS_CERT          PEM certificate chain of the archive         none: no TLS
CAMI_TLS_KEY           PEM private key of that certificate          the key in CAMI_TLS_CERT
CAMI_TLS_CA            PEM CA(s) client certificates must chain to  none
CAMI_TLS_CLIENT_CERT   none | optional | required (DICOM TLS port)   optional with CAMI_TLS_CA, else none
CAMI_DICOM_TLS_PORT    port of the DICOM services over TLS          2762 with CAMI_TLS_CERT
CAMI_HTTP_TLS          on | off: HTTPS on CAMI_HTTP_PORT            on with CAMI_TLS_CERT
CAMI_ENV               ``production`` or ``development``            development
CAMI_READY_MAX_LAG     events a projection may be behind before     10000
                       ``/readyz`` answers 503 (``off``: never)
=====================  ==========================================  =================================

TLS (``ingest.tls``): with ``CAMI_TLS_CERT`` the DICOM services listen on a second port,
``CAMI_DICOM_TLS_PORT``, beside the plain one (set ``CAMI_DICOM_PORT=off`` to close the plain
one), and the HTTP API answers HTTPS only (``CAMI_HTTP_TLS=off`` leaves it plain, e.g. behind a
TLS-terminating proxy). The agent and HL7 ports to come use the same settings.

Production mode (``CAMI_ENV=production`` or ``cami serve --production``) refuses to start
without the secrets that have development fallbacks: today ``CAMI_PSEUDONYM_KEY`` (at least 32
characters, not the development key), since pseudonyms made under the public development key can
be reversed by anyone who has a list of PatientIDs.

Ports and addresses (:mod:`schemas.addresses`, checked here before anything is opened): a port is
an integer 1-65535, a listener's port (``CAMI_DICOM_PORT``, ``CAMI_DICOM_TLS_PORT``,
``CAMI_HTTP_PORT``, ``CAMI_HL7_PORT``) also 0 (a free one) and, but for HTTP, ``off``; a host is an
IPv4/IPv6 address or an RFC 1123 host name, never looked up. The same holds for the hosts and ports
inside ``CAMI_EVENT_LOG`` (Kafka brokers), ``CAMI_BLOBS`` (the S3 endpoint) and ``CAMI_CLICKHOUSE``.
A bad one is a :class:`ConfigError` naming the variable, the value and what is allowed.

Real servers: ``CAMI_EVENT_LOG=kafka://broker1:9092,broker2:9092?replication=3&min_insync=2``,
``CAMI_BLOBS=s3://bucket?endpoint=https://s3.region.local`` (credentials from the usual
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), ``CAMI_CLICKHOUSE=clickhouse://user:pass@host:8123/cami``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.dicom import DEFAULT_MAX_INFLATED_BYTES
from ingest.hl7.listener import DEFAULT_PORT as DEFAULT_HL7_PORT
from ingest.hl7.wire import CHARSETS
from ingest.importer import ImportLimits
from ingest.scp import DEFAULT_MAX_ASSOCIATIONS, DEFAULT_REQUEST_TIMEOUT
from ingest.tls import TlsSettings
from schemas.addresses import AddressError, check_host, parse_host_port, parse_port, parse_port_or_off, url_address
from streams import parse_wait
from streams.blobs import ENVIRONMENT as BLOB_STORE_ENVIRONMENT
from streams.topics import check_topic_prefix

#: the fallback pseudonym key for demos and development; refused in production mode
DEVELOPMENT_PSEUDONYM_KEY = b"cami-development-key-change-me"
MIN_PSEUDONYM_KEY_LENGTH = 32
#: the largest HTTP request body by default (1 GiB: a CT study in one STOW-RS request)
DEFAULT_MAX_HTTP_BODY = 1 << 30
#: how many events a projection may be behind the log before ``/readyz`` says the node is not ready
DEFAULT_READY_MAX_LAG = 10_000
ENVIRONMENTS = ("development", "production")


class ConfigError(ValueError):
    """The configuration cannot be used (the message is one line for the operator)."""


@dataclass(frozen=True)
class Settings:
    home: Path
    event_log_url: str
    blob_store_url: str
    warehouse_url: str
    #: the row store DICOM queries read (``CAMI_QUERY_STORE``; empty: a SQLite file in ``home``)
    query_store: str = ""
    partitions: int = 6
    senders_path: Path | None = None
    #: the regional directory of organisations (``CAMI_ORGANISATIONS``; default in ``home``)
    organisations_path: Path | None = None
    dicom_host: str = "127.0.0.1"
    dicom_port: int | None = 11112  # None: no plain DICOM port (TLS only)
    http_host: str = "127.0.0.1"
    http_port: int = 8042
    hl7_host: str = "127.0.0.1"
    hl7_port: int | None = DEFAULT_HL7_PORT  # None: no HL7 listener
    #: the Python codec for HL7 messages that declare no character set in MSH-18
    hl7_charset: str = "utf-8"
    #: the region's time zone (IANA name)
    timezone: str = "UTC"
    #: modalities whose studies get two independent readings (ingest/reports/readings.py)
    double_read_modalities: tuple[str, ...] = ()
    pseudonym_key: bytes = DEVELOPMENT_PSEUDONYM_KEY
    tls: TlsSettings = field(default_factory=TlsSettings)
    dicom_tls_port: int | None = None  # None: no DICOM TLS port
    http_tls: bool = False
    #: ``CAMI_ENV=production``: development fallbacks of secrets are refused (see check_production)
    production: bool = False
    #: seconds a DICOM connection has to begin (and complete) its A-ASSOCIATE-RQ
    dicom_request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: DICOM associations at once
    dicom_max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    #: how far a deflated data set may inflate before it is refused as a deflate bomb
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    #: how far files and zip members of ``cami import`` may inflate
    import_limits: ImportLimits = field(default_factory=ImportLimits)
    #: the users file (``CAMI_USERS``; default ``$CAMI_HOME/users.toml``)
    users_path: Path | None = None
    #: the browser session signing key (``CAMI_SESSION_KEY``; default a key file in ``home``)
    session_key: str = field(default="", repr=False)
    #: the largest HTTP request body (STOW-RS) in bytes; larger ones get 413
    http_max_body: int = DEFAULT_MAX_HTTP_BODY
    #: S3 credentials and region that complete the blob store URL (never in the URL itself)
    blob_store_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: events a projection may be behind before ``/readyz`` answers 503 (None: lag never does)
    ready_max_lag: int | None = DEFAULT_READY_MAX_LAG

    @property
    def query_store_url(self) -> str:
        return self.query_store or f"sqlite://{self.home}/query.db"

    @property
    def senders_file(self) -> Path:
        return self.senders_path or self.home / "senders.toml"

    @property
    def organisations_file(self) -> Path:
        return self.organisations_path or self.home / "organisations.toml"

    @property
    def users_file(self) -> Path:
        return self.users_path or self.home / "users.toml"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("CAMI_HOME", "cami-data")).expanduser().resolve()
        tls = _tls_settings(env)
        return cls(
            home=home,
            event_log_url=_event_log_url(env.get("CAMI_EVENT_LOG", f"sqlite://{home}/events.db"), env),
            blob_store_url=_blob_store_url(env.get("CAMI_BLOBS", f"file://{home}/blobs")),
            warehouse_url=_warehouse_url(env.get("CAMI_CLICKHOUSE", f"chdb://{home}/clickhouse")),
            query_store=env.get("CAMI_QUERY_STORE", ""),
            partitions=int(env.get("CAMI_PARTITIONS", "6")),
            senders_path=Path(env["CAMI_SENDERS"]).expanduser().resolve() if env.get("CAMI_SENDERS") else None,
            dicom_host=_host(env, "CAMI_DICOM_HOST"),
            dicom_port=_port_or_off(env, "CAMI_DICOM_PORT", 11112),
            http_host=_host(env, "CAMI_HTTP_HOST"),
            http_port=_port(env, "CAMI_HTTP_PORT", 8042),
            hl7_host=_host(env, "CAMI_HL7_HOST"),
            hl7_port=_port_or_off(env, "CAMI_HL7_PORT", DEFAULT_HL7_PORT),
            hl7_charset=_hl7_charset(env.get("CAMI_HL7_CHARSET", "")),
            timezone=_timezone(env.get("CAMI_TIMEZONE", "")),
            double_read_modalities=_modalities(env.get("CAMI_DOUBLE_READ", "")),
            pseudonym_key=env.get("CAMI_PSEUDONYM_KEY", "").encode() or DEVELOPMENT_PSEUDONYM_KEY,
            tls=tls,
            dicom_tls_port=_port_or_off(env, "CAMI_DICOM_TLS_PORT", 2762) if tls.enabled else None,
            http_tls=tls.enabled and env.get("CAMI_HTTP_TLS", "on").strip().lower() != "off",
            production=_environment(env.get("CAMI_ENV", "")) == "production",
            dicom_request_timeout=float(env.get("CAMI_DICOM_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)),
            dicom_max_associations=int(env.get("CAMI_DICOM_MAX_ASSOCIATIONS", DEFAULT_MAX_ASSOCIATIONS)),
            max_inflated_bytes=int(env.get("CAMI_MAX_INFLATED_BYTES", DEFAULT_MAX_INFLATED_BYTES)),
            import_limits=_import_limits(env),
            users_path=_path(env, "CAMI_USERS"),
            organisations_path=_path(env, "CAMI_ORGANISATIONS"),
            session_key=env.get("CAMI_SESSION_KEY", ""),
            http_max_body=int(env.get("CAMI_HTTP_MAX_BODY", DEFAULT_MAX_HTTP_BODY)),
            blob_store_env={name: env[name] for name in BLOB_STORE_ENVIRONMENT if env.get(name)},
            ready_max_lag=_ready_max_lag(env.get("CAMI_READY_MAX_LAG", "")),
        )

    def check_production(self) -> None:
        """Raise :class:`ConfigError` when a secret still has its development fallback."""
        key = self.pseudonym_key
        if key == DEVELOPMENT_PSEUDONYM_KEY:
            raise ConfigError("production mode needs CAMI_PSEUDONYM_KEY (the development key is refused)")
        if len(key) < MIN_PSEUDONYM_KEY_LENGTH:
            minimum = MIN_PSEUDONYM_KEY_LENGTH
            raise ConfigError(f"production mode needs CAMI_PSEUDONYM_KEY of at least {minimum} characters")

    def describe(self) -> dict[str, str]:
        """The settings without secrets (user:password in URLs masked)."""
        return {
            "home": str(self.home),
            "event_log": _mask(self.event_log_url),
            "blobs": _mask(self.blob_store_url),
            "clickhouse": _mask(self.warehouse_url),
            "query_store": _mask(self.query_store_url),
            "tls": str(self.tls.certificate) if self.tls.enabled else "off",
        }


def _hl7_charset(name: str) -> str:
    if not name.strip():
        return "utf-8"
    codec = CHARSETS.get(name.strip().upper())
    if codec is None:
        raise ConfigError(f"CAMI_HL7_CHARSET={name!r}: one of {', '.join(sorted(CHARSETS))}")
    return codec


def _modalities(value: str) -> tuple[str, ...]:
    codes = tuple(sorted({c.strip().upper() for c in value.split(",") if c.strip()}))
    bad = [c for c in codes if not c.isalnum() or len(c) > 16]
    if bad:
        raise ConfigError(f"CAMI_DOUBLE_READ: {', '.join(bad)} is not a DICOM modality code (e.g. MG,DX)")
    return codes


def _timezone(name: str) -> str:
    name = name.strip() or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"CAMI_TIMEZONE={name!r} is not a time zone (e.g. Europe/Moscow)") from None
    return name


def _path(env: Mapping[str, str], variable: str) -> Path | None:
    value = env.get(variable, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _tls_settings(env: Mapping[str, str]) -> TlsSettings:
    ca = _path(env, "CAMI_TLS_CA")
    settings = TlsSettings(
        certificate=_path(env, "CAMI_TLS_CERT"),
        key=_path(env, "CAMI_TLS_KEY"),
        ca=ca,
        client_certificates=env.get("CAMI_TLS_CLIENT_CERT", "optional" if ca else "none").strip().lower(),
    )
    settings.check()  # a half-configured TLS must not start as plain text
    return settings


def _import_limits(env: Mapping[str, str]) -> ImportLimits:
    default = ImportLimits()
    return ImportLimits(
        max_file=int(env.get("CAMI_IMPORT_MAX_FILE", default.max_file)),
        max_ratio=float(env.get("CAMI_IMPORT_MAX_RATIO", default.max_ratio)),
        max_zip_total=int(env.get("CAMI_IMPORT_MAX_ZIP_TOTAL", default.max_zip_total)),
    )


def _host(env: Mapping[str, str], variable: str, default: str = "127.0.0.1") -> str:
    """A listener's bind address: an IP literal or a host name (no DNS lookup here)."""
    try:
        return check_host(env.get(variable, default))
    except AddressError as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def _port(env: Mapping[str, str], variable: str, default: int) -> int:
    """A listener's port: 1-65535, or 0 for a free one (what the tests and ``cami demo`` use)."""
    try:
        return parse_port(env.get(variable, str(default)), free=True)
    except AddressError as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def _port_or_off(env: Mapping[str, str], variable: str, default: int) -> int | None:
    """As :func:`_port`, or None for ``off`` (the listener closed)."""
    try:
        return parse_port_or_off(env.get(variable, str(default)), free=True)
    except AddressError as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def _event_log_url(url: str, env: Mapping[str, str]) -> str:
    """``kafka://host:port[,host:port]``: each bootstrap server's address (the rest of the URL is
    read where the log is opened, :func:`streams.open_event_log`). ``CAMI_KAFKA_WAIT`` and
    ``CAMI_TOPIC_PREFIX`` become the URL's ``wait`` and ``topic_prefix`` options (where it names
    none itself), so every process that opens the log from the URL gets them; the embedded log
    has no use for them."""
    options = {
        "wait": ("CAMI_KAFKA_WAIT", parse_wait),
        "topic_prefix": ("CAMI_TOPIC_PREFIX", check_topic_prefix),
    }
    values: dict[str, str] = {}
    for option, (variable, check) in options.items():
        value = env.get(variable, "").strip()
        if value:
            try:
                check(value)
            except ValueError as exc:
                raise ConfigError(f"{variable}: {exc}") from None
            values[option] = value
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "kafka":
        return url
    for server in rest.partition("/")[0].partition("?")[0].split(","):
        try:
            parse_host_port(server, port_required=False)
        except AddressError as exc:
            raise ConfigError(f"CAMI_EVENT_LOG: Kafka bootstrap server {exc}") from None
    given = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for option, (_, check) in options.items():
        for value in given.get(option, []):
            try:
                check(value)
            except ValueError as exc:
                raise ConfigError(f"CAMI_EVENT_LOG: option {option}: {exc}") from None
    missing = {option: value for option, value in values.items() if option not in given}
    if missing:
        url += ("&" if "?" in url else "?") + urlencode(missing)
    return url


def _blob_store_url(url: str) -> str:
    """``s3://bucket?endpoint=http(s)://host[:port]``: the endpoint's address."""
    if url.partition("://")[0].lower() == "s3":
        for endpoint in parse_qs(urlsplit(url).query, keep_blank_values=True).get("endpoint", []):
            try:
                url_address(endpoint, schemes=("http", "https"))
            except AddressError as exc:
                raise ConfigError(f"CAMI_BLOBS: endpoint {exc}") from None
    return url


def _warehouse_url(url: str) -> str:
    """``clickhouse[s]://user:password@host[:port]/db``: the server's address."""
    if url.partition("://")[0].lower() in ("clickhouse", "clickhouses"):
        try:
            url_address(url)
        except AddressError as exc:
            raise ConfigError(f"CAMI_CLICKHOUSE: {exc}") from None
    return url


def _ready_max_lag(value: str) -> int | None:
    value = value.strip().lower()
    if not value:
        return DEFAULT_READY_MAX_LAG
    if value == "off":
        return None
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(f"CAMI_READY_MAX_LAG={value!r}: a number of events (0 or more) or off")
    return int(value)


def _environment(value: str) -> str:
    value = value.strip().lower() or "development"
    if value not in ENVIRONMENTS:
        raise ConfigError(f"CAMI_ENV must be one of {', '.join(ENVIRONMENTS)}, not {value!r}")
    return value


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        credentials, _, host = rest.partition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
