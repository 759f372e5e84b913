"""The original bytes of a stored object, sent as stored on C-MOVE and C-GET sub-operations.

The Query/Retrieve handlers (:mod:`api.dicom.qr`) yield datasets; a :class:`StoredObject` carries
the blob's Part-10 bytes so that the data set leaves exactly as it was received whenever the peer
takes the stored transfer syntax (group-length elements, undefined lengths and a deflated stream
included). See :func:`install_stored_encoding` for how pynetdicom is made to send them.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import pynetdicom.association
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

from ingest.dicom import Received, split_part10
from streams.blobs import BlobStore

log = logging.getLogger("cami.qr")

#: syntaxes pydicom re-encodes losslessly into one another (never pixel data compression)
UNCOMPRESSED = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
#: an association carries at most 128 presentation contexts (PS3.8 9.3.2.2: odd IDs 1..255)
MAX_CONTEXTS = 128


class StoredObject(Dataset):
    """A C-STORE sub-operation's object: the UIDs and transfer syntax pynetdicom picks the
    presentation context by, and the stored Part-10 bytes. Its data set is sent exactly as stored
    (see :func:`install_stored_encoding`), never re-encoded by pydicom, which would drop
    group-length elements, for one."""

    def __init__(self, received: Received, sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(received.transfer_syntax)
        self._received = received

    def encoded(self, implicit: bool, little: bool, deflated: bool) -> bytes | None:
        """The data set bytes for a context of this encoding: the stored bytes themselves when it is
        the stored one (a deflated data set as stored, its compressed stream included); else, for an
        uncompressed object the peer takes only in another uncompressed syntax, pydicom's encoding,
        but only when pydicom writes the stored data set back byte for byte in its own syntax, so
        nothing is lost on the way (None: the sub-operation fails, nothing altered is sent)."""
        received = self._received
        syntax = received.transfer_syntax
        stored = received.part10[received.dataset_offset :]
        own = _encoding(syntax)
        if (implicit, little, deflated) == own:
            return stored
        if syntax not in UNCOMPRESSED:
            return None  # pixel data compression and byte order are never converted (pynetdicom agrees)
        ds = dcmread(BytesIO(received.part10), force=False)
        inflated = zlib.decompress(stored, -zlib.MAX_WBITS) if own[2] else stored
        if encode(ds, own[0], own[1]) != inflated:
            log.error("not converting %s from %s: pydicom would not keep it byte for byte", self.SOPInstanceUID, syntax)
            return None
        return encode(ds, implicit, little, deflated)


def _encoding(syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) of a transfer syntax's data set encoding."""
    return syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian, syntax == DeflatedExplicitVRLittleEndian


def _encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    if isinstance(ds, StoredObject):
        return ds.encoded(is_implicit_vr, is_little_endian, deflated)
    return encode(ds, is_implicit_vr, is_little_endian, deflated)


def install_stored_encoding() -> None:
    """Make pynetdicom's C-STORE requests take a :class:`StoredObject`'s data set as stored.

    A C-MOVE/C-GET handler can only yield a Dataset, which pynetdicom encodes with pydicom (its
    chunked mode sends a file's bytes unchanged, but only from ``send_c_store`` called directly,
    not from a handler). So the ``encode`` pynetdicom's association module calls is wrapped: a
    :class:`StoredObject` gives its stored bytes, every other data set is encoded as before.
    Idempotent."""
    association: Any = pynetdicom.association  # pynetdicom ships no type information
    if association.encode is not _encode:
        association.encode = _encode


def stored_dataset(blobs: BlobStore, row: dict[str, Any]) -> Dataset:
    """The stored object as a :class:`StoredObject`. A blob that cannot be read gives a stand-in
    the C-STORE sub-operation fails on (no transfer syntax: pynetdicom refuses to send it)."""
    try:
        received = split_part10(blobs.get(str(row["blob_sha256"])))
        return StoredObject(received, str(row["sop_class_uid"]), str(row["sop_uid"]))
    except Exception as exc:  # BlobStoreError, MalformedObject...
        log.error("not sending %s: %s", row.get("sop_uid"), exc)
        stand_in = Dataset()
        stand_in.SOPClassUID = str(row.get("sop_class_uid") or "")
        stand_in.SOPInstanceUID = str(row.get("sop_uid") or "")
        return stand_in


def offered_syntaxes(stored: str) -> list[str]:
    """The stored syntax, and explicit VR little endian too when the stored one is uncompressed."""
    if stored in UNCOMPRESSED and stored != ExplicitVRLittleEndian:
        return [stored, ExplicitVRLittleEndian]
    return [stored]


def move_contexts(rows: Sequence[dict[str, Any]]) -> list[PresentationContext]:
    """One context per (SOP class, offered transfer syntax), each with that one syntax, so the
    destination cannot pick explicit VR for an object it could take as stored (pynetdicom sends
    on the exact match when one is accepted); at most :data:`MAX_CONTEXTS`."""
    pairs = sorted(
        {(str(r["sop_class_uid"]), ts) for r in rows for ts in offered_syntaxes(str(r["transfer_syntax_uid"]))}
    )
    if len(pairs) > MAX_CONTEXTS:
        log.warning("C-MOVE needs %d presentation contexts; proposing the first %d", len(pairs), MAX_CONTEXTS)
    return [build_context(sop, [ts]) for sop, ts in pairs[:MAX_CONTEXTS]]
