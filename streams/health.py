"""How a backend is doing, as a readiness probe wants to know it: one of three states and a line.

* ``ok``: it does what the archive needs;
* ``degraded``: it still does, with less redundancy than configured (a Kafka partition with a
  replica out of sync, a broker of the cluster gone, an S3 erasure set healing a drive);
* ``down``: the archive cannot rely on it now (unreachable, a partition without a leader or with
  fewer in-sync replicas than ``min.insync.replicas``, a blob directory missing or read-only).

The line (``detail``) is for the operator: where the backend is and what was seen, never a
credential and never patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "degraded", "down"]
OK: Status = "ok"
DEGRADED: Status = "degraded"
DOWN: Status = "down"


@dataclass(frozen=True, slots=True)
class Health:
    status: Status
    detail: str

    @classmethod
    def ok(cls, detail: str) -> Health:
        return cls(OK, detail)

    @classmethod
    def degraded(cls, detail: str) -> Health:
        return cls(DEGRADED, detail)

    @classmethod
    def down(cls, detail: str) -> Health:
        return cls(DOWN, detail)
