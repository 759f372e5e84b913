"""DICOMweb: WADO-RS retrieve (instances, metadata, rendered frames) and WADO-URI (issue 5)."""

from __future__ import annotations

from fastapi import FastAPI

from api.access import AccessRecorder
from api.bootstrap import Archive


def install(app: FastAPI, archive: Archive, recorder: AccessRecorder) -> None:
    """Add the routes to ``app``."""
