"""Configuration: environment variables with local defaults (12-factor style), optionally a file.

Every option is one row of :data:`OPTIONS` (its file key, variable, meaning and default): this
table, the README's "Configuration" section, ``cami config show --defaults`` and
``infra/cami.toml.example`` (generated from it) must agree, and a test holds them to it.

The configuration file (``cami --config FILE``, else ``CAMI_CONFIG=FILE``; nothing else is looked
for) is TOML with flat keys, the variables' names without ``CAMI_`` in lower case
(``dicom_port = 11112``), and an ``[s3]`` table for the blob store's credentials. Its values
become ``CAMI_*`` entries, the environment's on top (a set, non-empty variable wins), and
:meth:`Settings.from_env` reads the result. Unknown keys (with a "did you mean" hint), wrong
types and bad values are a :class:`ConfigError` naming the file, the key, the value and what is
allowed; ``cami config check`` lists them all.

==========================  ==========================================  =================================
variable                    meaning                                     default
==========================  ==========================================  =================================
CAMI_CONFIG                 the configuration file (``cami --config``)  none: the environment only
CAMI_HOME                   data directory of the embedded backends     ./cami-data
CAMI_EVENT_LOG              event log URL                               sqlite:///$CAMI_HOME/events.db
CAMI_BLOBS                  blob store URL                              file:///$CAMI_HOME/blobs
CAMI_CLICKHOUSE             ClickHouse URL                              chdb:///$CAMI_HOME/clickhouse
CAMI_QUERY_STORE            query store URL (QIDO-RS, C-FIND, lists):   sqlite:///$CAMI_HOME/query.db
                            a SQLite file (one host), or postgresql://
                            user:password@host:5432/db (several hosts)
CAMI_PARTITIONS             partitions of newly created topics          6
CAMI_KAFKA_WAIT             seconds the first request waits for a       120
                            Kafka broker that is not up yet (0: once)
CAMI_TOPIC_PREFIX           what the archive's Kafka topic and          cami (``cami.dicom``...)
                            consumer group names start with
CAMI_SENDERS                who may send (AE title -> organisation)     $CAMI_HOME/senders.toml
CAMI_ORGANISATIONS          the regional directory (code -> names)      $CAMI_HOME/organisations.toml
CAMI_USERS                  HTTP users and their token hashes           $CAMI_HOME/users.toml
CAMI_DICOM_HOST             address the DICOM services listen on        127.0.0.1
CAMI_DICOM_PORT             port of the DICOM services (``off``: none)  11112
CAMI_DICOM_PROXY_FROM       load balancers whose DICOM connections      none
                            begin with a PROXY protocol header
CAMI_HTTP_HOST              address the HTTP API listens on             127.0.0.1
CAMI_HTTP_PORT              port of the HTTP API (DICOMweb, reports)    8042
CAMI_HL7_HOST               address the HL7 v2 (MLLP) listener uses     127.0.0.1
CAMI_HL7_PORT               port of the HL7 v2 listener (``off``: none) 2575
CAMI_HL7_CHARSET            character set of HL7 messages whose MSH-18  UNICODE UTF-8
                            declares none (e.g. CP1251 for an old MIS)
CAMI_TIMEZONE               the region's time zone (IANA name): HL7     UTC
                            times without an offset, worklist times
CAMI_DOUBLE_READ            modalities whose studies are read twice,    none
                            independently (screening: e.g. MG,DX)
CAMI_DICOM_REQUEST_TIMEOUT  seconds to send the A-ASSOCIATE-RQ          5
CAMI_DICOM_MAX_ASSOCIATIONS DICOM associations at once                  32
CAMI_MAX_INFLATED_BYTES     how far a deflated data set may inflate     268435456 (256 MiB)
CAMI_HTTP_MAX_BODY          the largest HTTP request body (STOW-RS)     1073741824 (1 GiB)
CAMI_MIS_NOTICES            on | off: this node sends orders' status    on
                            to the MIS (on exactly one of several)
CAMI_READY_MAX_LAG          events a projection may be behind before    10000
                            ``/readyz`` answers 503 (``off``: never)
CAMI_IMPORT_MAX_FILE        ``cami import``: largest file or member     2147483648 (2 GiB)
CAMI_IMPORT_MAX_RATIO       ``cami import``: inflation ratio of a       100
                            member over 1 MiB
CAMI_IMPORT_MAX_ZIP_TOTAL   ``cami import``: inflated total of a zip    68719476736 (64 GiB)
CAMI_ENV                    ``production`` or ``development``           development
CAMI_PSEUDONYM_KEY          HMAC key for patient pseudonyms (analytics) a development key (set it!)
CAMI_SESSION_KEY            the browser session signing key             a key file in $CAMI_HOME
CAMI_TLS_CERT               PEM certificate chain of the archive        none: no TLS
CAMI_TLS_KEY                PEM private key of that certificate         the key in CAMI_TLS_CERT
CAMI_TLS_CA                 PEM CA(s) client certificates must chain to none
CAMI_TLS_CLIENT_CERT        none | optional | required (DICOM TLS port) optional with CAMI_TLS_CA, else none
CAMI_DICOM_TLS_PORT         port of the DICOM services over TLS         2762 with CAMI_TLS_CERT
CAMI_HTTP_TLS               on | off: HTTPS on CAMI_HTTP_PORT           on with CAMI_TLS_CERT
CAMI_LOG_LEVEL              debug | info | warning | error              info for ``cami serve``,
                                                                        ``workers``, ``agent run``;
                                                                        else warning (``-v``: info)
CAMI_LOG_FORMAT             text | json (one JSON object a line)        text
CAMI_S3_ACCESS_KEY          S3 access key (file: ``[s3] access_key``)   boto3's chain (AWS_ACCESS_KEY_ID)
CAMI_S3_SECRET_KEY          S3 secret key (file: ``[s3] secret_key``)   boto3's chain (AWS_SECRET_ACCESS_KEY)
==========================  ==========================================  =================================

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
inside ``CAMI_EVENT_LOG`` (Kafka brokers), ``CAMI_BLOBS`` (the S3 endpoint), ``CAMI_CLICKHOUSE`` and
``CAMI_QUERY_STORE`` (a PostgreSQL server).
A bad one is a :class:`ConfigError` naming the variable (or the file and key), the value and what
is allowed.

Real servers: ``CAMI_EVENT_LOG=kafka://broker1:9092,broker2:9092?replication=3&min_insync=2``,
``CAMI_BLOBS=s3://bucket?endpoint=https://s3.region.local`` (credentials from ``CAMI_S3_*`` or the
usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), ``CAMI_CLICKHOUSE=clickhouse://user:pass@host:8123/cami``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.dicom import DEFAULT_MAX_INFLATED_BYTES
from ingest.hl7.listener import DEFAULT_PORT as DEFAULT_HL7_PORT
from ingest.hl7.wire import CHARSETS
from ingest.importer import ImportLimits
from ingest.scp import DEFAULT_MAX_ASSOCIATIONS, DEFAULT_REQUEST_TIMEOUT
from ingest.tls import CLIENT_CERTIFICATE_MODES, TlsConfigError, TlsSettings
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
#: ``CAMI_LOG_LEVEL``: what is logged (unset: info for the services, warning for the rest)
LOG_LEVELS = ("debug", "info", "warning", "error")
#: ``CAMI_LOG_FORMAT``: ``text`` lines for people, ``json`` (one object a line) for log collectors
LOG_FORMATS = ("text", "json")
#: the variable that names the configuration file (``cami --config FILE`` sets it)
CONFIG_VARIABLE = "CAMI_CONFIG"
_SWITCH_ON = ("on", "true", "yes", "1")
_SWITCH_OFF = ("off", "false", "no", "0")


class ConfigError(ValueError):
    """The configuration cannot be used (the message is one line for the operator).

    ``variable`` is the setting the message is about (when it is one) and ``reason`` what is wrong
    with its value, so that a value from the configuration file can be reported by its key."""

    def __init__(self, message: str, *, variable: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.variable = variable
        self.reason = reason


class _TlsRefusal(ConfigError, TlsConfigError):
    """TLS settings that cannot work: a ConfigError for ``cami``, a TlsConfigError as before."""


def _refuse(variable: str, reason: str) -> ConfigError:
    return ConfigError(f"{variable}: {reason}", variable=variable, reason=reason)


# -- every option: the one table ---------------------------------------------------------------------

#: kinds of value (what the file accepts for each; the environment always gives text)
TEXT, INTEGER, NUMBER, PORT, PORT_OR_OFF, COUNT_OR_OFF, SWITCH, LIST = (
    "text",
    "integer",
    "number",
    "port",
    "port-or-off",
    "count-or-off",
    "switch",
    "list",
)
#: what a file value of each kind may be, in words
KIND_RULES = {
    TEXT: "a string (in quotes)",
    INTEGER: "an integer (no quotes)",
    NUMBER: "a number (no quotes)",
    PORT: "an integer 1-65535, or 0 for a free one (no quotes)",
    PORT_OR_OFF: 'an integer 1-65535, 0 for a free one, or "off"',
    COUNT_OR_OFF: 'an integer (0 or more) or "off"',
    SWITCH: 'true or false (or "on", "off")',
    LIST: 'a list of strings (["MG", "DX"]) or one comma-separated string',
}


@dataclass(frozen=True)
class Option:
    """One setting: its key in the file (``[s3]`` ones as ``s3.<name>``), its variable, the kind
    of value, the default and the meaning (both in words), a value the example file shows."""

    key: str
    variable: str
    kind: str
    default: str
    meaning: str
    example: str | int | float | bool | list[str]
    group: str
    secret: bool = False

    @property
    def table(self) -> str:
        """The TOML table the key lives in (``""``: the top level)."""
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        """The key inside its table."""
        return self.key.rpartition(".")[2]


def _options() -> tuple[Option, ...]:
    rows: list[Option] = []

    def add(
        key: str,
        kind: str,
        default: str,
        meaning: str,
        example: str | int | float | bool | list[str],
        *,
        variable: str = "",
        secret: bool = False,
    ) -> None:
        rows.append(Option(key, variable or f"CAMI_{key.upper()}", kind, default, meaning, example, group, secret))

    group = "Backends"
    add(
        "home",
        TEXT,
        "./cami-data",
        "data directory of the embedded backends, the local token and the default place of the senders, users "
        "and organisations files (relative paths in this file and in the environment are relative to the "
        "working directory)",
        "/var/lib/cami",
    )
    add(
        "event_log",
        TEXT,
        "sqlite:///$CAMI_HOME/events.db",
        "the event log (the source of truth): sqlite:///FILE embedded, or "
        "kafka://b1:9092,b2:9092?replication=3&min_insync=2",
        "kafka://b1:9092,b2:9092,b3:9092?replication=3&min_insync=2",
    )
    add(
        "blobs",
        TEXT,
        "file:///$CAMI_HOME/blobs",
        "the blob store (DICOM bytes by SHA-256): file:///DIR, or "
        "s3://bucket/prefix?endpoint=https://s3.example.local&region=us-east-1 (credentials in [s3], never in "
        "the URL)",
        "s3://cami-blobs/archive?endpoint=https://s3.example.local",
    )
    add(
        "clickhouse",
        TEXT,
        "chdb:///$CAMI_HOME/clickhouse",
        "the warehouse: chdb:///DIR embedded, or clickhouse://user:password@host:8123/cami (clickhouses:// for TLS)",
        "clickhouse://cami:password@ch.example.local:8123/cami",
    )
    add(
        "query_store",
        TEXT,
        "sqlite:///$CAMI_HOME/query.db",
        "the row store QIDO-RS, C-FIND and the study lists read, the same for every cami serve and cami workers: "
        "sqlite:///FILE (all on one host), or postgresql://user:password@host:5432/cami (nodes on several hosts; "
        "the password better in PGPASSWORD or the environment than in this file)",
        "sqlite:///var/lib/cami/query.db",
    )
    add("partitions", INTEGER, "6", "partitions of newly created topics", 6)
    add(
        "kafka_wait",
        NUMBER,
        "120",
        "seconds the first request waits for a Kafka broker that is not up yet (0: one try), then one line "
        "naming the brokers and exit 1",
        120,
    )
    add(
        "topic_prefix",
        TEXT,
        "cami",
        "what the Kafka topics and consumer groups are called (cami.dicom, cami.archive-index...); another "
        "prefix keeps a second archive apart on one cluster",
        "cami",
    )

    group = "Listeners"
    add(
        "dicom_host",
        TEXT,
        "127.0.0.1",
        "address the DICOM services (storage, commitment, Q/R) listen on: an IPv4 or IPv6 address or a host name",
        "0.0.0.0",
    )
    add("dicom_port", PORT_OR_OFF, "11112", 'port of the DICOM services ("off" closes it: TLS only)', 11112)
    add(
        "dicom_proxy_from",
        LIST,
        "none",
        "IP addresses of the TCP load balancers (haproxy send-proxy or send-proxy-v2) whose DICOM connections "
        "begin with a PROXY protocol header naming the real peer; they must send one, nobody else may",
        ["10.0.0.5"],
    )
    add("http_host", TEXT, "127.0.0.1", "address the HTTP API, DICOMweb and the pages listen on", "0.0.0.0")
    add("http_port", PORT, "8042", "port of the HTTP API, DICOMweb and the pages", 8042)
    add("hl7_host", TEXT, "127.0.0.1", "address the HL7 v2 (MLLP) listener for the MIS uses", "0.0.0.0")
    add("hl7_port", PORT_OR_OFF, "2575", 'port of the HL7 v2 (MLLP) listener ("off" closes it)', 2575)
    add(
        "hl7_charset",
        TEXT,
        "UNICODE UTF-8",
        "character set of HL7 messages whose MSH-18 declares none (e.g. CP1251 for an MIS that never says)",
        "UNICODE UTF-8",
    )
    add(
        "timezone",
        TEXT,
        "UTC",
        "the region's time zone (IANA name): HL7 times without an offset are read in it",
        "Europe/Moscow",
    )
    add("double_read", LIST, "none", "modalities whose studies are read twice, independently (screening)", ["MG", "DX"])
    add(
        "dicom_request_timeout",
        NUMBER,
        "5",
        "seconds a DICOM connection has to send (and complete) its A-ASSOCIATE-RQ",
        5,
    )
    add("dicom_max_associations", INTEGER, "32", "DICOM associations at once (silent connections hold no slot)", 32)
    add(
        "max_inflated_bytes",
        INTEGER,
        "268435456 (256 MiB)",
        "how far a deflated data set may inflate before it is refused",
        268435456,
    )
    add(
        "http_max_body",
        INTEGER,
        "1073741824 (1 GiB)",
        "the largest HTTP request body (STOW-RS); larger gets 413",
        1073741824,
    )
    add(
        "ready_max_lag",
        COUNT_OR_OFF,
        "10000",
        'events a projection may be behind the log before GET /readyz answers 503 ("off": lag is shown, never '
        "decisive)",
        10000,
    )
    add(
        "mis_notices",
        SWITCH,
        "true",
        "this node sends orders' status to the MIS listed as [[mis]] in the senders file; with several ingest "
        "nodes, true on exactly one (each node remembers what it sent: two would send some stages twice or out "
        "of order)",
        True,
    )

    group = "Files of the archive"
    add(
        "senders",
        TEXT,
        "$CAMI_HOME/senders.toml",
        "who may send and query: AE titles, organisations, roles",
        "/etc/cami/senders.toml",
    )
    add(
        "organisations",
        TEXT,
        "$CAMI_HOME/organisations.toml",
        "the regional directory: organisation code -> full name, short name, region",
        "/etc/cami/organisations.toml",
    )
    add(
        "users",
        TEXT,
        "$CAMI_HOME/users.toml",
        "HTTP users and their token hashes (cami users add)",
        "/etc/cami/users.toml",
    )

    group = "cami import"
    add(
        "import_max_file",
        INTEGER,
        "2147483648 (2 GiB)",
        "cami import: the largest file or zip member (past it: refused as a possible zip bomb)",
        2147483648,
    )
    add("import_max_ratio", NUMBER, "100", "cami import: inflation ratio of a zip member over 1 MiB", 100)
    add("import_max_zip_total", INTEGER, "68719476736 (64 GiB)", "cami import: inflated total of one zip", 68719476736)

    group = "Production and secrets"
    add(
        "env",
        TEXT,
        "development",
        'development or production: "production" (also cami serve --production) refuses to start without pseudonym_key',
        "production",
    )
    add(
        "pseudonym_key",
        TEXT,
        "a development key",
        "the secret HMAC key of the analytics pseudonyms (at least 32 characters): set it in production, keep "
        "it out of the warehouse; changing it needs cami replay --projection analytics",
        "<a secret of at least 32 random characters>",
        secret=True,
    )
    add(
        "session_key",
        TEXT,
        "a key file $CAMI_HOME/session.key (made once)",
        "the browser session signing key (at least 32 characters), the same on every node behind one address",
        "<a secret of at least 32 random characters>",
        secret=True,
    )

    group = "TLS"
    add(
        "tls_cert",
        TEXT,
        "none: no TLS",
        "PEM certificate chain of the archive: turns on the DICOM TLS port and HTTPS",
        "/etc/cami/tls/archive.pem",
    )
    add("tls_key", TEXT, "the key in tls_cert", "PEM private key of that certificate", "/etc/cami/tls/archive.key")
    add(
        "tls_ca",
        TEXT,
        "none",
        "PEM CA certificate(s) that client certificates must chain to",
        "/etc/cami/tls/region-ca.pem",
    )
    add(
        "tls_client_cert",
        TEXT,
        "optional with tls_ca, else none",
        "on the DICOM TLS port: none (not asked for), optional (a shown one must verify), required",
        "optional",
    )
    add("dicom_tls_port", PORT_OR_OFF, "2762 with tls_cert", 'port of the DICOM services over TLS ("off": none)', 2762)
    add(
        "http_tls",
        SWITCH,
        "true with tls_cert",
        "false leaves the HTTP API plain (behind a TLS-terminating proxy)",
        True,
    )

    group = "Logging"
    add(
        "log_level",
        TEXT,
        "info for cami serve, workers and agent run, else warning (-v: info)",
        "debug, info, warning or error (info and above: the archive's own messages and the web server's; "
        "debug: every library's too)",
        "info",
    )
    add(
        "log_format",
        TEXT,
        "text",
        'text lines for people, or "json": every line on stderr one JSON object (time, level, logger, '
        "message, exc) for log collectors",
        "json",
    )

    group = "[s3]: credentials of an s3:// blob store (better in a root-only file or the environment)"
    add(
        "s3.access_key",
        TEXT,
        "boto3's chain (AWS_ACCESS_KEY_ID...)",
        "S3 access key",
        "cami-archive",
        variable="CAMI_S3_ACCESS_KEY",
    )
    add(
        "s3.secret_key",
        TEXT,
        "boto3's chain (AWS_SECRET_ACCESS_KEY...)",
        "S3 secret key",
        "<the secret key>",
        variable="CAMI_S3_SECRET_KEY",
        secret=True,
    )
    add(
        "s3.region",
        TEXT,
        "AWS_DEFAULT_REGION, else boto3's",
        "S3 region where the blobs URL names none (its region option wins)",
        "us-east-1",
        variable="AWS_REGION",
    )
    return tuple(rows)


#: every option of the archive: the source of truth for keys, variables, meanings and defaults
OPTIONS: tuple[Option, ...] = _options()
BY_KEY = {option.key: option for option in OPTIONS}
BY_VARIABLE = {option.variable: option for option in OPTIONS}
TABLES = frozenset(option.table for option in OPTIONS if option.table)


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
    #: load balancers whose DICOM connections begin with a PROXY protocol header (``CAMI_DICOM_PROXY_FROM``)
    dicom_proxy_from: tuple[str, ...] = ()
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
    #: this node sends orders' status to the MIS (``CAMI_MIS_NOTICES``; one node of several)
    mis_notices: bool = True
    #: ``CAMI_LOG_LEVEL`` (one of :data:`LOG_LEVELS`; empty: the command's default)
    log_level: str = ""
    #: ``CAMI_LOG_FORMAT`` (one of :data:`LOG_FORMATS`)
    log_format: str = "text"

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
        """The settings ``env`` (default: this process's environment) gives, with the values of the
        configuration file it names (``CAMI_CONFIG``) beneath its own. ConfigError if any is bad."""
        layers = Layers.of(env)
        layers.raise_problems()
        try:
            return _read(layers.values)
        except ConfigError as exc:
            raise layers.explain(exc) from None

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


def _read(env: Mapping[str, str]) -> Settings:
    """The settings of one flat mapping of variables (the file's already beneath the environment's)."""
    home = Path(env.get("CAMI_HOME", "") or "cami-data").expanduser().resolve()
    tls = _tls_settings(env)
    dicom_tls_port = _port_or_off(env, "CAMI_DICOM_TLS_PORT", 2762)  # checked with TLS off too
    http_tls = _switch(env, "CAMI_HTTP_TLS", True)
    return Settings(
        home=home,
        event_log_url=_event_log_url(env.get("CAMI_EVENT_LOG", "") or f"sqlite://{home}/events.db", env),
        blob_store_url=_blob_store_url(env.get("CAMI_BLOBS", "") or f"file://{home}/blobs"),
        warehouse_url=_warehouse_url(env.get("CAMI_CLICKHOUSE", "") or f"chdb://{home}/clickhouse"),
        query_store=_query_store_url(env.get("CAMI_QUERY_STORE", "")),
        partitions=_integer(env, "CAMI_PARTITIONS", 6),
        senders_path=_path(env, "CAMI_SENDERS"),
        dicom_host=_host(env, "CAMI_DICOM_HOST"),
        dicom_port=_port_or_off(env, "CAMI_DICOM_PORT", 11112),
        http_host=_host(env, "CAMI_HTTP_HOST"),
        http_port=_port(env, "CAMI_HTTP_PORT", 8042),
        hl7_host=_host(env, "CAMI_HL7_HOST"),
        hl7_port=_port_or_off(env, "CAMI_HL7_PORT", DEFAULT_HL7_PORT),
        hl7_charset=_hl7_charset(env.get("CAMI_HL7_CHARSET", "")),
        timezone=_timezone(env.get("CAMI_TIMEZONE", "")),
        double_read_modalities=_modalities(env.get("CAMI_DOUBLE_READ", "")),
        dicom_proxy_from=_balancers(env.get("CAMI_DICOM_PROXY_FROM", "")),
        pseudonym_key=env.get("CAMI_PSEUDONYM_KEY", "").encode() or DEVELOPMENT_PSEUDONYM_KEY,
        tls=tls,
        dicom_tls_port=dicom_tls_port if tls.enabled else None,
        http_tls=tls.enabled and http_tls,
        production=_environment(env.get("CAMI_ENV", "")) == "production",
        dicom_request_timeout=_number(env, "CAMI_DICOM_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT),
        dicom_max_associations=_integer(env, "CAMI_DICOM_MAX_ASSOCIATIONS", DEFAULT_MAX_ASSOCIATIONS),
        max_inflated_bytes=_integer(env, "CAMI_MAX_INFLATED_BYTES", DEFAULT_MAX_INFLATED_BYTES),
        import_limits=_import_limits(env),
        users_path=_path(env, "CAMI_USERS"),
        organisations_path=_path(env, "CAMI_ORGANISATIONS"),
        session_key=env.get("CAMI_SESSION_KEY", ""),
        http_max_body=_integer(env, "CAMI_HTTP_MAX_BODY", DEFAULT_MAX_HTTP_BODY),
        blob_store_env={name: env[name] for name in BLOB_STORE_ENVIRONMENT if env.get(name)},
        ready_max_lag=_ready_max_lag(env.get("CAMI_READY_MAX_LAG", "")),
        mis_notices=_switch(env, "CAMI_MIS_NOTICES", True),
        log_level=_choice(env, "CAMI_LOG_LEVEL", LOG_LEVELS, ""),
        log_format=_choice(env, "CAMI_LOG_FORMAT", LOG_FORMATS, "text"),
    )


@dataclass(frozen=True)
class LogSettings:
    #: one of :data:`LOG_LEVELS`, or empty: the command's default (info for services, else warning)
    level: str = ""
    #: one of :data:`LOG_FORMATS`
    format: str = "text"


def log_settings(env: Mapping[str, str] | None = None) -> LogSettings:
    """Only ``CAMI_LOG_LEVEL`` and ``CAMI_LOG_FORMAT`` (file and environment, as for the settings):
    what ``cami`` needs before any command runs (the rest is the command's to read, or not)."""
    layers = Layers.of(env)
    layers.raise_problems()
    try:
        return LogSettings(
            level=_choice(layers.values, "CAMI_LOG_LEVEL", LOG_LEVELS, ""),
            format=_choice(layers.values, "CAMI_LOG_FORMAT", LOG_FORMATS, "text"),
        )
    except ConfigError as exc:
        raise layers.explain(exc) from None


def use_config_file(path: Path) -> None:
    """``cami --config FILE``: this process (and what it starts) reads ``FILE`` as CAMI_CONFIG would."""
    os.environ[CONFIG_VARIABLE] = str(path.expanduser().absolute())


# -- the configuration file ----------------------------------------------------------------------------

FROM_FILE = "file"
FROM_ENVIRONMENT = "environment"
FROM_BOTH = "environment (over the file)"
FROM_DEFAULT = "default"


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file as read: its values as variables, what was written, what is wrong."""

    path: Path
    #: variable -> its value as the environment would give it
    values: Mapping[str, str]
    #: variable -> the value as the file has it (for messages)
    written: Mapping[str, Any]
    #: one line each: unknown keys, wrong types (those values are left out of ``values``)
    problems: tuple[str, ...] = ()

    def shown(self, variable: str) -> str:
        option = BY_VARIABLE.get(variable)
        if option is not None and option.secret:
            return "(hidden)"
        return _toml_shown(self.written.get(variable, self.values.get(variable, "")))


def read_config_file(path: Path) -> ConfigFile:
    """Read a configuration file: ConfigError when it cannot be read or is not TOML; unknown keys and
    values of the wrong type are collected in ``problems`` (each naming the file, the key, the
    value and what is allowed). The values themselves are checked where the settings read them."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise _unreadable(f"{path}: no such configuration file (named by --config or CAMI_CONFIG)") from None
    except IsADirectoryError:
        raise _unreadable(f"{path} is a directory, not a configuration file") from None
    except OSError as exc:
        raise _unreadable(f"{path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file: {exc}") from None
    values: dict[str, str] = {}
    written: dict[str, Any] = {}
    problems: list[str] = []
    for key, value, table in _entries(data):
        option = BY_KEY.get(f"{table}.{key}" if table else key)
        if option is None:
            problems.append(f"{path}: {_unknown(key, table, value)}")
            continue
        text = _as_text(option, value)
        if text is None:
            shown = "(hidden)" if option.secret else _toml_shown(value)
            problems.append(f"{path}: {option.key} = {shown}: {KIND_RULES[option.kind]}")
            continue
        values[option.variable] = text
        written[option.variable] = value
    return ConfigFile(path, values, written, tuple(problems))


def _unreadable(message: str) -> ConfigError:
    return ConfigError(message, variable=CONFIG_VARIABLE, reason=message)


def _entries(data: Mapping[str, Any]) -> Iterable[tuple[str, Any, str]]:
    """(key, value, table) of every entry: the top level's, then those of the known tables."""
    for key, value in data.items():
        if isinstance(value, dict) and key in TABLES:
            yield from ((inner, item, key) for inner, item in value.items())
        else:
            yield key, value, ""


def _unknown(key: str, table: str, value: Any) -> str:
    """An unknown key or table, and what was probably meant."""
    if isinstance(value, dict) and not table:
        tables = ", ".join(f"[{name}]" for name in sorted(TABLES))
        return f"unknown table [{key}] (the only table is {tables}); see cami config show --defaults"
    wanted = key.lower().removeprefix("cami_")
    if not table:  # an [s3] key at the top level: s3_access_key, CAMI_S3_SECRET_KEY, aws_region...
        for option in OPTIONS:
            if option.table and wanted in (f"{option.table}_{option.name}", option.variable.lower()):
                hint = f" (did you mean {option.name} in the [{option.table}] table?)"
                return f"unknown key {key}{hint}; see cami config show --defaults"
    here = [option.name for option in OPTIONS if option.table == table]
    guess = difflib.get_close_matches(wanted, here, n=1, cutoff=0.6)
    hint = f" (did you mean {f'[{table}] ' if table else ''}{guess[0]}?)" if guess else ""
    where = f"[{table}] " if table else ""
    return f"unknown key {where}{key}{hint}; see cami config show --defaults"


def _as_text(option: Option, value: Any) -> str | None:
    """The file's value as the environment would give it, or None when it is of the wrong type."""
    kind = option.kind
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == TEXT:
        return value if isinstance(value, str) else None
    if kind in (INTEGER, PORT):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == NUMBER:
        return str(value) if number else None
    if kind in (PORT_OR_OFF, COUNT_OR_OFF):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return "off" if isinstance(value, str) and value.strip().lower() == "off" else None
    if kind == SWITCH:
        if isinstance(value, bool):
            return "on" if value else "off"
        return value.strip().lower() if isinstance(value, str) and value.strip().lower() in ("on", "off") else None
    if kind == LIST:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return ",".join(value)
        return None
    raise AssertionError(f"unknown kind {kind!r}")


def _toml_value(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)  # dates and times


def _toml_shown(value: Any, most: int = 80) -> str:
    shown = _toml_value(value)
    return shown if len(shown) <= most else shown[:most] + "..."


@dataclass(frozen=True)
class Layers:
    """What the settings read: the configuration file's values beneath the environment's."""

    #: variable -> value (the environment's where it sets a non-empty one, else the file's)
    values: Mapping[str, str]
    #: variable -> where its value came from (:data:`FROM_FILE`, :data:`FROM_ENVIRONMENT`, :data:`FROM_BOTH`)
    sources: Mapping[str, str]
    file: ConfigFile | None = None

    @classmethod
    def of(cls, env: Mapping[str, str] | None = None) -> Layers:
        """The layers of ``env`` (default: this process's environment) and the file its
        ``CAMI_CONFIG`` names. ConfigError when that file cannot be read or is no TOML."""
        env = os.environ if env is None else env
        given = {name: value for name, value in env.items() if value != ""}
        named = given.get(CONFIG_VARIABLE, "").strip()
        known = {name: FROM_ENVIRONMENT for name in given if name in BY_VARIABLE}
        if not named:
            return cls(dict(env), known)
        file = read_config_file(Path(named).expanduser())
        sources = {name: FROM_FILE for name in file.values} | known
        sources |= {name: FROM_BOTH for name in file.values if name in known}
        return cls({**env, **file.values, **given}, sources, file)

    def raise_problems(self) -> None:
        """ConfigError naming the file's first problem (and that there are more)."""
        if self.file is None or not self.file.problems:
            return
        first, *more = self.file.problems
        raise ConfigError(first + (" (and more: cami config check lists every problem)" if more else ""))

    def explain(self, exc: ConfigError) -> ConfigError:
        """``exc`` in the file's terms when the value it is about came from the file."""
        if self.file is None:
            return exc
        variable = exc.variable or _leading_variable(str(exc))
        if variable and self.sources.get(variable) == FROM_FILE:
            option = BY_VARIABLE[variable]
            reason = exc.reason or str(exc).removeprefix(f"{variable}: ")
            message = f"{self.file.path}: {option.key} = {self.file.shown(variable)}: {reason}"
            return type(exc)(message, variable=variable, reason=reason)
        keys = [
            BY_VARIABLE[name].key
            for name in dict.fromkeys(_VARIABLE.findall(str(exc)))
            if self.sources.get(name) == FROM_FILE
        ]
        if not keys:
            return exc
        message = f"{exc} (in {self.file.path}: {', '.join(keys)})"
        return type(exc)(message, variable=exc.variable, reason=exc.reason)

    def source(self, variable: str) -> str:
        return self.sources.get(variable, FROM_DEFAULT)


_VARIABLE = re.compile(r"\b(?:CAMI|AWS)_[A-Z0-9_]*[A-Z0-9]\b")


def _leading_variable(message: str) -> str:
    """The variable a message starts with (``CAMI_TLS_KEY: no such file ...``), if it is one."""
    found = re.match(r"((?:CAMI|AWS)_[A-Z0-9_]+)[:=]", message)
    return found.group(1) if found and found.group(1) in BY_VARIABLE else ""


# -- cami config check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigRow:
    """One option as ``cami config check`` shows it: the value in effect (secrets hidden) and where
    it came from."""

    key: str
    variable: str
    value: str
    source: str


@dataclass(frozen=True)
class ConfigCheck:
    #: the configuration file (None: the environment alone)
    file: Path | None
    #: one line each; empty: the configuration can be used
    problems: tuple[str, ...]
    #: things that work but should not stay so (a file with secrets that everyone can read)
    warnings: tuple[str, ...] = ()
    #: every option, in :data:`OPTIONS` order (empty when there are problems)
    rows: tuple[ConfigRow, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems


def check_configuration(env: Mapping[str, str] | None = None, file: Path | None = None) -> ConfigCheck:
    """Every problem of the configuration ``env`` (default: this process's environment) gives, with
    ``file`` or the one its ``CAMI_CONFIG`` names, not only the first: what ``cami config check``
    reports. With none, the rows of the settings in effect."""
    env = os.environ if env is None else env
    if file is not None:
        env = {**env, CONFIG_VARIABLE: str(file)}
    try:
        layers = Layers.of(env)
    except ConfigError as exc:
        named = env.get(CONFIG_VARIABLE, "")
        return ConfigCheck(Path(named) if named else None, (str(exc),))
    read = layers.file
    problems = list(read.problems if read is not None else ())
    values = dict(layers.values)
    settings: Settings | None = None
    for _ in range(len(OPTIONS) + 1):  # each round drops the value refused in the one before
        try:
            settings = _read(values)
            break
        except ConfigError as exc:
            problems.append(str(layers.explain(exc)))
            variable = exc.variable or _leading_variable(str(exc))
            if not variable or variable not in values:
                break
            del values[variable]
    if settings is not None and settings.production:
        try:
            settings.check_production()
        except ConfigError as exc:
            problems.append(str(exc))
    warnings = _file_warnings(read) if read is not None else ()
    if problems or settings is None:
        return ConfigCheck(read.path if read else None, tuple(problems), warnings)
    rows = tuple(_row(option, layers, settings) for option in OPTIONS)
    return ConfigCheck(read.path if read else None, (), warnings, rows)


def _file_warnings(file: ConfigFile) -> tuple[str, ...]:
    secrets = [BY_VARIABLE[name].key for name in file.values if BY_VARIABLE[name].secret]
    try:
        mode = file.path.stat().st_mode
    except OSError:
        return ()
    if secrets and mode & (stat.S_IROTH | stat.S_IWOTH):
        return (
            f"{file.path} holds secrets ({', '.join(secrets)}) and everyone can read it: chmod 600 (or 640 "
            "for the archive's group), or move them to a root-only EnvironmentFile",
        )
    return ()


#: the defaults that follow from other settings, as they are in effect
_EFFECTIVE: dict[str, Callable[[Settings], str]] = {
    "home": lambda s: str(s.home),
    "event_log": lambda s: _mask(s.event_log_url),
    "blobs": lambda s: _mask(s.blob_store_url),
    "clickhouse": lambda s: _mask(s.warehouse_url),
    "query_store": lambda s: _mask(s.query_store_url),
    "senders": lambda s: str(s.senders_file),
    "organisations": lambda s: str(s.organisations_file),
    "users": lambda s: str(s.users_file),
    "session_key": lambda s: f"a key file {s.home / 'session.key'}",
    "dicom_tls_port": lambda s: "off (no tls_cert)" if s.dicom_tls_port is None else str(s.dicom_tls_port),
    "http_tls": lambda s: "true" if s.http_tls else "false",
    "log_level": lambda s: s.log_level or "info for cami serve, workers and agent run, else warning",
}


def _row(option: Option, layers: Layers, settings: Settings) -> ConfigRow:
    source = layers.source(option.variable)
    if source == FROM_DEFAULT:
        effective = _EFFECTIVE.get(option.key)
        value = effective(settings) if effective else option.default
    elif option.secret:
        value = "*** (set)"
    else:
        value = _mask(layers.values[option.variable])
    return ConfigRow(option.key, option.variable, value, source)


# -- the example file --------------------------------------------------------------------------------------


def example_file() -> str:
    """Every option, commented out, with its meaning, variable and default: ``cami config show
    --defaults``, and ``infra/cami.toml.example`` (a test keeps the two equal). Uncommenting a
    line (``#key = ...``) sets that option."""
    lines = [
        "# cami.toml: the archive's configuration, read by `cami --config FILE` or CAMI_CONFIG=FILE.",
        "#",
        "# Written by `cami config show --defaults` from api/config.py (OPTIONS); every option below is",
        "# commented out, with its meaning, the environment variable that overrides it (a set, non-empty",
        "# CAMI_* variable wins over this file) and its default. The example values are examples.",
        "# `cami config check FILE` checks a file and shows the settings in effect and where each came from.",
        "#",
        "# Secrets (pseudonym_key, session_key, [s3] secret_key) are better in a file only root and the",
        "# archive can read (chmod 640, owned root:cami), or in the environment (systemd EnvironmentFile=).",
    ]
    group = ""
    for option in OPTIONS:
        if option.group != group:
            group = option.group
            lines += ["", "", f"# == {group} " + "=" * max(3, 96 - len(group))]
            if option.table:
                lines += ["", f"#[{option.table}]"]
        lines.append("")
        lines += _wrapped(option.meaning, prefix="# ")
        lines.append(f"# {option.variable}; default: {option.default}")
        lines.append(f"#{option.name} = {_toml_value(option.example)}")
    return "\n".join(lines) + "\n"


def _wrapped(text: str, *, prefix: str, width: int = 100) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(prefix) + len(line) + 1 + len(word) > width:
            lines.append(prefix + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(prefix + line)
    return lines


def effective_file(check: ConfigCheck) -> str:
    """The settings in effect as a configuration file (``cami config show``): what the file or the
    environment sets as lines, the defaults and the secrets commented out."""
    lines = [f"# the settings in effect ({check.file or 'no configuration file'}, the environment on top)"]
    table = ""
    for row in check.rows:
        option = BY_KEY[row.key]
        if option.table != table:
            table = option.table
            lines += ["", f"[{table}]"]
        if row.source == FROM_DEFAULT:
            lines.append(f"# {option.name}: {row.value} (default)")
        elif option.secret:
            lines.append(f"# {option.name}: set, not shown (from the {row.source})")
        else:
            written = _file_value(option, row.value)
            lines.append(f"{option.name} = {_toml_value(written)}  # {row.source}")
    return "\n".join(lines) + "\n"


def _file_value(option: Option, text: str) -> Any:
    """A variable's text as the file would hold it (ports as integers...)."""
    if option.kind in (INTEGER, PORT, PORT_OR_OFF, COUNT_OR_OFF) and text.strip().isdigit():
        return int(text)
    if option.kind == NUMBER:
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text else number
    if option.kind == SWITCH and text.strip().lower() in _SWITCH_ON + _SWITCH_OFF:
        return text.strip().lower() in _SWITCH_ON
    if option.kind == LIST:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


# -- the checks of each value ----------------------------------------------------------------------------


def _choice(env: Mapping[str, str], variable: str, allowed: tuple[str, ...], default: str) -> str:
    value = env.get(variable, "").strip()
    if not value:
        return default
    if value.lower() not in allowed:
        raise _refuse(variable, f"{value!r} is not one of {', '.join(allowed)}")
    return value.lower()


def _integer(env: Mapping[str, str], variable: str, default: int, lowest: int = 1) -> int:
    value = env.get(variable, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) < lowest:
        raise _refuse(variable, f"{value!r} is not a whole number of {lowest} or more")
    return int(value)


def _number(env: Mapping[str, str], variable: str, default: float) -> float:
    value = env.get(variable, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number < float("inf"):
        raise _refuse(variable, f"{value!r} is not a number greater than 0")
    return number


def _switch(env: Mapping[str, str], variable: str, default: bool) -> bool:
    value = env.get(variable, "").strip().lower()
    if not value:
        return default
    if value not in _SWITCH_ON + _SWITCH_OFF:
        raise _refuse(variable, f"{value!r} is not on or off")
    return value in _SWITCH_ON


def _hl7_charset(name: str) -> str:
    if not name.strip():
        return "utf-8"
    codec = CHARSETS.get(name.strip().upper())
    if codec is None:
        raise _refuse("CAMI_HL7_CHARSET", f"{name!r} is not one of {', '.join(sorted(CHARSETS))}")
    return codec


def _modalities(value: str) -> tuple[str, ...]:
    codes = tuple(sorted({c.strip().upper() for c in value.split(",") if c.strip()}))
    bad = [c for c in codes if not c.isalnum() or len(c) > 16]
    if bad:
        raise _refuse("CAMI_DOUBLE_READ", f"{', '.join(bad)} is not a DICOM modality code (e.g. MG,DX)")
    return codes


def _balancers(value: str) -> tuple[str, ...]:
    """IP addresses, as the peer address of a connection shows them (no names: never looked up)."""
    found: list[str] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            found.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise _refuse("CAMI_DICOM_PROXY_FROM", f"{item!r} is not an IP address (e.g. 10.0.0.5,10.0.0.6)") from None
    return tuple(dict.fromkeys(found))


def _timezone(name: str) -> str:
    name = name.strip() or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _refuse("CAMI_TIMEZONE", f"{name!r} is not a time zone (e.g. Europe/Moscow)") from None
    return name


def _path(env: Mapping[str, str], variable: str) -> Path | None:
    value = env.get(variable, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _tls_settings(env: Mapping[str, str]) -> TlsSettings:
    ca = _path(env, "CAMI_TLS_CA")
    mode = env.get("CAMI_TLS_CLIENT_CERT", "").strip().lower() or ("optional" if ca else "none")
    if mode not in CLIENT_CERTIFICATE_MODES:
        modes = ", ".join(CLIENT_CERTIFICATE_MODES)
        reason = f"must be one of {modes}, not {mode!r}"
        raise _TlsRefusal(f"CAMI_TLS_CLIENT_CERT: {reason}", variable="CAMI_TLS_CLIENT_CERT", reason=reason)
    settings = TlsSettings(
        certificate=_path(env, "CAMI_TLS_CERT"),
        key=_path(env, "CAMI_TLS_KEY"),
        ca=ca,
        client_certificates=mode,
    )
    try:
        settings.check()  # a half-configured TLS must not start as plain text
    except TlsConfigError as exc:
        variable = _leading_variable(str(exc))
        reason = str(exc).removeprefix(f"{variable}: ") if variable else ""
        raise _TlsRefusal(str(exc), variable=variable, reason=reason) from None
    return settings


def _import_limits(env: Mapping[str, str]) -> ImportLimits:
    default = ImportLimits()
    return ImportLimits(
        max_file=_integer(env, "CAMI_IMPORT_MAX_FILE", default.max_file),
        max_ratio=_number(env, "CAMI_IMPORT_MAX_RATIO", default.max_ratio),
        max_zip_total=_integer(env, "CAMI_IMPORT_MAX_ZIP_TOTAL", default.max_zip_total),
    )


def _host(env: Mapping[str, str], variable: str, default: str = "127.0.0.1") -> str:
    """A listener's bind address: an IP literal or a host name (no DNS lookup here)."""
    try:
        return check_host(env.get(variable, default))
    except AddressError as exc:
        raise _refuse(variable, str(exc)) from None


def _port(env: Mapping[str, str], variable: str, default: int) -> int:
    """A listener's port: 1-65535, or 0 for a free one (what the tests and ``cami demo`` use)."""
    try:
        return parse_port(env.get(variable, str(default)), free=True)
    except AddressError as exc:
        raise _refuse(variable, str(exc)) from None


def _port_or_off(env: Mapping[str, str], variable: str, default: int) -> int | None:
    """As :func:`_port`, or None for ``off`` (the listener closed)."""
    try:
        return parse_port_or_off(env.get(variable, str(default)), free=True)
    except AddressError as exc:
        raise _refuse(variable, str(exc)) from None


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
                raise _refuse(variable, str(exc)) from None
            values[option] = value
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "kafka":
        return url
    for server in rest.partition("/")[0].partition("?")[0].split(","):
        try:
            parse_host_port(server, port_required=False)
        except AddressError as exc:
            raise _refuse("CAMI_EVENT_LOG", f"Kafka bootstrap server {exc}") from None
    given = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for option, (_, check) in options.items():
        for value in given.get(option, []):
            try:
                check(value)
            except ValueError as exc:
                raise _refuse("CAMI_EVENT_LOG", f"option {option}: {exc}") from None
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
                raise _refuse("CAMI_BLOBS", f"endpoint {exc}") from None
    return url


def _warehouse_url(url: str) -> str:
    """``clickhouse[s]://user:password@host[:port]/db``: the server's address."""
    if url.partition("://")[0].lower() in ("clickhouse", "clickhouses"):
        try:
            url_address(url)
        except AddressError as exc:
            raise _refuse("CAMI_CLICKHOUSE", str(exc)) from None
    return url


def _query_store_url(url: str) -> str:
    """``postgresql://user:password@host[:port]/db`` (or ``postgres://``): the server's address."""
    if url.partition("://")[0].lower() in ("postgresql", "postgres"):
        try:
            url_address(url)
        except AddressError as exc:
            raise _refuse("CAMI_QUERY_STORE", str(exc)) from None
    return url


def _ready_max_lag(value: str) -> int | None:
    value = value.strip().lower()
    if not value:
        return DEFAULT_READY_MAX_LAG
    if value == "off":
        return None
    if not (value.isascii() and value.isdigit()):
        raise _refuse("CAMI_READY_MAX_LAG", f"{value!r} is not a number of events (0 or more) or off")
    return int(value)


def _environment(value: str) -> str:
    value = value.strip().lower() or "development"
    if value not in ENVIRONMENTS:
        raise _refuse("CAMI_ENV", f"{value!r} is not one of {', '.join(ENVIRONMENTS)}")
    return value


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        credentials, _, host = rest.partition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
