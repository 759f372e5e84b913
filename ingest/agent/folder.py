"""Folder drop: a directory the hospital's staff or a script fills with DICOM files.

A file is taken once it is complete, which the agent cannot ask the writer, so it judges:

- a file whose size and modification time stayed the same for ``settle`` seconds (seen on two
  scans that far apart) is complete;
- a ``*.dcm`` file renamed into place is complete at once: the writer wrote ``name.part`` (or any
  temporary name) and renamed it when done. A rename changes the file's ctime but not its mtime,
  so ``ctime > mtime`` tells a renamed (or copied-with-its-times) file from one still being
  written, whose every write moves both.

Ignored: ``*.part`` files (still being written), dotfiles and dot-directories, and ``DICOMDIR``
(the index of a media set, not an object: left where it is). Subdirectories are scanned.

A taken file goes to the queue (:meth:`ingest.agent.model.Intake.accept`, source ``folder``) and,
once accepted, is **moved** to ``done/`` under the folder (same relative path), not deleted: the
hospital keeps its copy until its staff clears ``done/``. A file the queue refuses (not DICOM,
truncated, missing identifiers) is moved to ``rejected/`` with ``<name>.reason.txt`` beside it
saying why. A file the agent could not spool (its own disk trouble) stays where it is and is tried
again at the next scan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest.agent.config import FolderSource
from ingest.agent.model import Intake

log = logging.getLogger("cami.agent.folder")

DONE = "done"
REJECTED = "rejected"
SOURCE = "folder"
#: seconds between scans of ``run``
SCAN_INTERVAL = 2.0


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int
    at: float


class FolderWatch:
    def __init__(
        self,
        source: FolderSource,
        queue: Intake,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = SCAN_INTERVAL,
    ) -> None:
        self.source = source
        self.folder = Path(source.path)
        self.queue = queue
        self.clock = clock
        self.interval = interval
        #: what each waiting file looked like when first seen unchanged
        self._seen: dict[Path, _Seen] = {}

    def scan_once(self) -> int:
        """Take every complete file; the number accepted by the queue."""
        if not self.folder.is_dir():
            log.warning("drop folder %s does not exist", self.folder)
            return 0
        now = self.clock()
        present: set[Path] = set()
        accepted = 0
        for path in self._candidates():
            present.add(path)
            try:
                stat = path.stat()
            except OSError:  # gone meanwhile
                continue
            if not self._complete(path, stat, now):
                continue
            self._seen.pop(path, None)
            accepted += self._take(path)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return accepted

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.scan_once()
            except Exception:  # the watch must outlive one bad scan
                log.exception("scan of %s failed", self.folder)
            stop.wait(self.interval)

    # -- deciding -----------------------------------------------------------------------------------

    def _candidates(self) -> Iterator[Path]:
        for root, dirs, files in os.walk(self.folder):
            here = Path(root)
            if here == self.folder:
                dirs[:] = [d for d in dirs if d not in (DONE, REJECTED)]
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or name.endswith(".part") or name.upper() == "DICOMDIR":
                    continue
                yield here / name

    def _complete(self, path: Path, stat: os.stat_result, now: float) -> bool:
        if path.suffix.lower() == ".dcm" and stat.st_ctime_ns > stat.st_mtime_ns:
            return True  # renamed into place after its last write
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
            return False
        return now - seen.at >= self.source.settle

    # -- taking -------------------------------------------------------------------------------------

    def _take(self, path: Path) -> int:
        try:
            self.queue.accept(path, source=SOURCE)
        except ValueError as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("rejected %s: %s", path, reason)
            self._move(path, REJECTED, reason)
            return 0
        except OSError as exc:  # the agent's own storage: try again at the next scan
            log.error("could not spool %s (left in place): %s", path, exc)
            return 0
        self._move(path, DONE)
        return 1

    def _move(self, path: Path, to: str, reason: str | None = None) -> None:
        target = self.folder / to / path.relative_to(self.folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():  # a file of the same name handled before: keep both
            target = target.with_name(f"{path.stem}.{n}{path.suffix}")
            n += 1
        try:
            path.replace(target)
        except OSError as exc:
            log.error("could not move %s to %s/: %s", path, to, exc)
            return
        if reason is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
