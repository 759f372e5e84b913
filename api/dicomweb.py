"""DICOMweb read side: QIDO-RS, WADO-RS (with rendered frames) and WADO-URI (issue 5).

Installed into the HTTP app by :func:`api.http.create_app`; every read goes through
:mod:`api.access` (role policy and the record-accessed event).
"""

from __future__ import annotations

from fastapi import FastAPI

from api.access import AccessRecorder
from api.bootstrap import Archive


def install(app: FastAPI, archive: Archive, recorder: AccessRecorder) -> None:
    """Add the QIDO-RS, WADO-RS and WADO-URI routes to ``app``."""
