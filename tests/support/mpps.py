"""What a modality sends an MPPS SCP: the SOP class and a step's attribute list."""

from __future__ import annotations

from pydicom.dataset import Dataset

#: Modality Performed Procedure Step SOP Class
MPPS = "1.2.840.10008.3.1.2.3.3"


def step(status: str, **extra: str) -> Dataset:
    """An N-CREATE or N-SET attribute list: the step's status and any other attributes."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds
