"""A change notifier: a projection's sink signals it after each write, and a reader in the same
process (the dashboard's Server-Sent Events stream) learns at once that new events were folded.

In-process only: where the workers run in another process (the Kafka deployment), nothing
signals it and the readers fall back to polling on a timer.
"""

from __future__ import annotations

import threading


class ChangeNotifier:
    """A counter that goes up with each signalled change; readers compare it with the one they saw."""

    def __init__(self) -> None:
        self._version = 0
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version

    def changed(self) -> None:
        with self._lock:
            self._version += 1
