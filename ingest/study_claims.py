"""Which patient each study is being stored under by arrivals still in flight.

The SOP index says which patient a study is *held* under once an instance's event is durable.
Between an arrival's check and that record (the blob write and the event append, milliseconds),
other arrivals of the same study must already see the patient it is being stored under, or two
instances of one study could be stored under two patients. A claim covers that window:

* arrivals of one study under the same PatientID proceed side by side: a modality or a PACS that
  sends one study over several associations is not serialised;
* an arrival under another PatientID waits until the claims on that study end, and is then checked
  against the index like any other (and refused there if the study is now held under the first).

Claims live in this process (as the per-instance locks do): one ingest process per SOP index.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StudyClaims:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        #: study -> (the patient its in-flight arrivals carry, how many there are)
        self._claims: dict[str, tuple[str, int]] = {}

    @contextmanager
    def claim(self, study_instance_uid: str, patient_id: str) -> Iterator[None]:
        """Hold a claim on the study for ``patient_id`` while the block runs (waits while other
        arrivals hold it for another patient)."""
        with self._changed:
            while (current := self._claims.get(study_instance_uid)) is not None and current[0] != patient_id:
                self._changed.wait()
            self._claims[study_instance_uid] = (patient_id, (current[1] if current else 0) + 1)
        try:
            yield
        finally:
            with self._changed:
                patient, count = self._claims[study_instance_uid]
                if count == 1:
                    del self._claims[study_instance_uid]
                    self._changed.notify_all()
                else:
                    self._claims[study_instance_uid] = (patient, count - 1)

    def in_flight(self, study_instance_uid: str) -> int:
        """How many arrivals hold a claim on the study now (for tests and metrics)."""
        with self._changed:
            current = self._claims.get(study_instance_uid)
            return current[1] if current else 0
