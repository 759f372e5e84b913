"""The archive's HTTP surface (FastAPI): DICOMweb (STOW-RS, QIDO-RS, WADO-RS, WADO-URI), the
reports API, monitoring and audit, and the browser pages; one router per module, mounted by
:func:`api.http.app.create_app`, run by :mod:`api.http.server`."""

from api.http.app import create_app
from api.http.server import HttpServer, serve_http

__all__ = ["HttpServer", "create_app", "serve_http"]
