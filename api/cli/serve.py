"""``cami serve``: the archive's network services -- DICOM (storage, commitment, Query/Retrieve)
and HTTP (DICOMweb, study pages, reports, monitoring) -- and, on the embedded log, the processors."""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import sys
import threading
from dataclasses import replace
from typing import Any

from api.bootstrap import bootstrap
from api.cli.output import console
from api.config import ConfigError, Settings
from streams.processing import EmbeddedRunner


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the archive's network services (DICOM Storage SCP with commitment)")
    p.add_argument("--dicom-port", type=int, help="DICOM port (default CAMI_DICOM_PORT or 11112)")
    p.add_argument(
        "--dicom-tls-port", type=int, help="DICOM TLS port (default CAMI_DICOM_TLS_PORT or 2762; needs CAMI_TLS_CERT)"
    )
    p.add_argument("--hl7-port", type=int, help="HL7 v2 (MLLP) port (default CAMI_HL7_PORT or 2575)")
    p.add_argument(
        "--production",
        action="store_true",
        help="production mode (as CAMI_ENV=production): refuse to start with development secrets",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        if args.production and not settings.production:
            settings = replace(settings, production=True)
        if settings.production:
            settings.check_production()
    except ConfigError as exc:
        sys.stderr.write(f"cami serve: {exc}\n")
        return 1
    if args.dicom_tls_port is not None and not settings.tls.enabled:
        raise ValueError("--dicom-tls-port needs CAMI_TLS_CERT (and CAMI_TLS_KEY): see README, Configuration")
    archive = bootstrap(settings)
    archive.organisations()  # a wrong entry of the directory stops the start before any listener opens
    scp = archive.storage_scp(port=args.dicom_port, tls_port=args.dicom_tls_port)
    runner = None
    if archive.event_log.backend == "embedded":
        # one process owns the embedded ClickHouse directory: the processors run here
        runner = EmbeddedRunner(archive.event_log, archive.bindings())
        runner.start()
    scp.start()
    from api.http import serve_http

    http = serve_http(archive)  # DICOMweb STOW-RS and the reports API, CAMI_HTTP_HOST:CAMI_HTTP_PORT
    hl7 = archive.hl7_listener(port=args.hl7_port)  # ADT, ORM/OMI, ORU from the MIS
    if hl7 is not None:
        hl7.start()
    notifier = archive.order_notifier()  # orders' status back to the MIS that asked ([[mis]])
    if notifier is not None:
        notifier.start()
    senders = archive.senders()
    pilot = ", pilot mode: unknown callers accepted" if senders.accept_unknown else ""
    known = len(senders.senders)
    ports = ([f"{scp.port}"] if scp.plain else []) + ([f"{scp.tls_port} (TLS)"] if scp.tls_port is not None else [])
    where = f"{senders.ae_title} on {scp.host}:{', '.join(ports)}"
    console.print(f"CAMI DICOM (storage, commitment, Q/R) {where} ({known} senders{pilot})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"CAMI HTTP (DICOMweb, study pages, reports) on {http.url}")
    console.print(f"MIS link: {http.url}/study?patient=<PatientID>&study=<StudyInstanceUID>")
    if hl7 is not None:
        console.print(f"CAMI HL7 v2 over MLLP (ADT, ORM, OMI, ORU) on {hl7.host}:{hl7.port}")
    # what is alive now lives as long as the process: left out of the collector's full passes,
    # which otherwise walk it all (~0.1 s with every thread stopped; pynetdicom's server also
    # asks for one every 60 rounds of its accept loop)
    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    if notifier is not None:
        notifier.stop()
    if hl7 is not None:
        hl7.stop()
    http.stop()
    scp.stop()
    if runner is not None:
        runner.stop()
    archive.close()
    return 0
