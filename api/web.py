"""The browser side: sign-in, the study page the MIS links to, patient search, the viewer (issue 5).

Installed into the HTTP app by :func:`api.http.create_app`; every read goes through
:mod:`api.access` (role policy and the record-accessed event).
"""

from __future__ import annotations

from fastapi import FastAPI

from api.access import AccessRecorder
from api.bootstrap import Archive


def install(app: FastAPI, archive: Archive, recorder: AccessRecorder) -> None:
    """Add the browser pages and their JSON/static routes to ``app``."""
