"""``cami serve``: the archive's network services -- DICOM (storage, commitment, Query/Retrieve)
and HTTP (DICOMweb, study pages, reports, monitoring) -- and, with the embedded warehouse (on
either log), the processors."""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from api.bootstrap import Archive, bootstrap
from api.cli.output import console, port_number
from api.config import Settings
from streams.processing import EmbeddedRunner

if TYPE_CHECKING:
    from ingest.hl7.listener import MllpListener
    from ingest.scp import StorageSCP
    from ingest.web_server import HttpServer


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the archive's network services (DICOM Storage SCP with commitment)")
    listener = port_number(free=True)  # 1-65535, 0: a free one; checked before anything opens
    p.add_argument("--dicom-port", type=listener, metavar="N", help="DICOM port (default CAMI_DICOM_PORT or 11112)")
    p.add_argument(
        "--dicom-tls-port",
        type=listener,
        metavar="N",
        help="DICOM TLS port (default CAMI_DICOM_TLS_PORT or 2762; needs CAMI_TLS_CERT)",
    )
    p.add_argument("--http-port", type=listener, metavar="N", help="HTTP port (default CAMI_HTTP_PORT or 8042)")
    p.add_argument("--hl7-port", type=listener, metavar="N", help="HL7 v2 (MLLP) port (default CAMI_HL7_PORT or 2575)")
    p.add_argument(
        "--production",
        action="store_true",
        help="production mode (as CAMI_ENV=production): refuse to start with development secrets",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    # a bad setting (a port out of range, an address that is none) is a ConfigError here, one
    # line from ``cami`` and exit 1, before any backend is opened or any listener started
    settings = Settings.from_env()
    if args.production and not settings.production:
        settings = replace(settings, production=True)
    if settings.production:
        settings.check_production()
    if args.dicom_tls_port is not None and not settings.tls.enabled:
        raise ValueError("--dicom-tls-port needs CAMI_TLS_CERT (and CAMI_TLS_KEY): see README, Configuration")
    # whatever has started is stopped again, in reverse order, also when a later part fails to
    # start: leaving the embedded ClickHouse open with its threads running crashed the process
    # on its way out (SIGSEGV, exit 139)
    with contextlib.ExitStack() as running:
        archive = bootstrap(settings)
        running.callback(archive.close)
        archive.organisations()  # a wrong entry of the directory stops the start before any listener opens
        scp = archive.storage_scp(port=args.dicom_port, tls_port=args.dicom_tls_port)
        if archive.embedded_warehouse:
            # one process owns the embedded ClickHouse directory: the processors run here, on
            # either log (with a ClickHouse server, `cami workers` run them and this process reads)
            runner = EmbeddedRunner(archive.event_log, archive.bindings())
            running.callback(runner.stop)
            runner.start()
        running.callback(scp.stop)
        scp.start()
        from api.http import serve_http

        # DICOMweb STOW-RS and the reports API, CAMI_HTTP_HOST:CAMI_HTTP_PORT
        http = serve_http(archive, port=args.http_port)
        running.callback(http.stop)
        hl7 = archive.hl7_listener(port=args.hl7_port)  # ADT, ORM/OMI, ORU from the MIS
        if hl7 is not None:
            running.callback(hl7.stop)
            hl7.start()
        notifier = archive.order_notifier()  # orders' status back to the MIS that asked ([[mis]])
        if notifier is not None:
            running.callback(notifier.stop)
            notifier.start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before the lines that say it is up
        _announce(archive, scp, http, hl7)
        # what is alive now lives as long as the process: left out of the collector's full passes,
        # which otherwise walk it all (~0.1 s with every thread stopped; pynetdicom's server also
        # asks for one every 60 rounds of its accept loop)
        gc.freeze()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def _announce(archive: Archive, scp: StorageSCP, http: HttpServer, hl7: MllpListener | None) -> None:
    senders = archive.senders()
    pilot = ", pilot mode: unknown callers accepted" if senders.accept_unknown else ""
    known = len(senders.senders)
    ports = ([f"{scp.port}"] if scp.plain else []) + ([f"{scp.tls_port} (TLS)"] if scp.tls_port is not None else [])
    where = f"{senders.ae_title} on {scp.host}:{', '.join(ports)}"
    console.print(f"CAMI DICOM (storage, commitment, Q/R) {where} ({known} senders{pilot})")
    console.print(f"CAMI HTTP (DICOMweb, study pages, reports) on {http.url}")
    console.print(f"MIS link: {http.url}/study?patient=<PatientID>&study=<StudyInstanceUID>")
    if hl7 is not None:
        console.print(f"CAMI HL7 v2 over MLLP (ADT, ORM, OMI, ORU) on {hl7.host}:{hl7.port}")
