"""AE titles as text: pynetdicom hands them over as bytes or str, space-padded; every handler
(storage here, query/retrieve on the read side) compares them as stripped strings."""

from __future__ import annotations

from typing import Any


def ae_title(value: Any) -> str:
    """An AE title (or any short ASCII value of an association) as a stripped string; '' for none."""
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")).strip()


def called_ae_title(assoc: Any) -> str:
    """The AE title the peer called, as its A-ASSOCIATE-RQ says (``acceptor.ae_title`` is ours)."""
    primitive = getattr(assoc.requestor, "primitive", None)
    called = getattr(primitive, "called_ae_title", None) if primitive is not None else None
    return ae_title(called if called else assoc.acceptor.ae_title)
