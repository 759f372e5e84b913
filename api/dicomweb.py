"""DICOMweb read side at ``/dicomweb`` (STOW-RS lives in :mod:`api.http`): QIDO-RS in
:mod:`api.qido`, WADO-RS and WADO-URI in :mod:`api.wado`. Every read goes through
:mod:`api.access` (role policy and the record-accessed event)."""

from __future__ import annotations

from fastapi import FastAPI

from api import qido, wado
from api.access import AccessRecorder
from api.bootstrap import Archive


def install(app: FastAPI, archive: Archive, recorder: AccessRecorder) -> None:
    """Add the QIDO-RS, WADO-RS and WADO-URI routes to ``app``."""
    qido.install(app, archive, recorder)
    wado.install(app, archive, recorder)
