"""Watch the drop dir and say when a dropped file is complete.

inotify events (through watchdog) and full scans only nominate candidates; a candidate is ready
once the file has not changed for the settle period (its own mtime and ctime say when it last did:
any write, rename or chmod moves them), it is the same file as at the previous look, and no process
holds it open for writing. Nothing here reads file contents or follows symlinks.

The file's times, not the moment an event arrives, start the settle period: watchdog holds every
event back while a move out of the drop dir waits 0.5 s for its other half (the daemon moves files
to done/ and rejected/), so arrival times can lag by that much.

Nothing here polls: a new candidate (or the drop dir itself going away) calls `on_change`, and
`next_deadline()` says when the earliest candidate can next be judged, so the daemon's loop sleeps
until then.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from esxi_watcher import procfs

log = structlog.get_logger(__name__)

OUTCOME_DIRS = ("done", "rejected", "failed")
_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart", "~")


def is_temporary_name(name: str) -> bool:
    """Names that cp/rsync/scp/browsers write to before renaming the finished file."""
    lowered = name.lower()
    return name.startswith(".") or lowered.endswith(_TEMP_SUFFIXES)


def file_identity(status: os.stat_result) -> str:
    """A string that changes when the file is replaced or written to."""
    return f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"


def open_for_writing(path: Path, proc_root: Path = procfs.PROC) -> bool:
    """Return whether any process we can see holds this file open for writing."""
    return next(procfs.writers(path, proc_root), None) is not None


@dataclass
class _Candidate:
    identity: str | None
    stable_since: float  # monotonic time of its last change, from its mtime/ctime


class _Nominator(FileSystemEventHandler):
    def __init__(self, watcher: DropWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        for attribute in ("src_path", "dest_path"):
            path = getattr(event, attribute, None)
            if path:
                path = Path(os.fsdecode(path))
                if path == self.watcher.drop_dir:  # the drop dir itself was removed or moved
                    self.watcher.changed()
                else:
                    self.watcher.nominate(path)


class _OverflowAlarm(logging.Handler):
    """watchdog logs lost inotify events; a full rescan heals them."""

    def __init__(self, watcher: DropWatcher):
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            log.warning("watch.events_lost", reason=record.getMessage())
            self.watcher.request_rescan("inotify queue overflow")


class DropWatcher:
    """Nominates files in the drop dir and hands them out once they are complete."""

    def __init__(self, drop_dir: Path, settle: float, proc_root: Path = procfs.PROC):
        self.drop_dir = Path(drop_dir)
        self.settle = settle
        self.proc_root = proc_root
        self._candidates: dict[Path, _Candidate] = {}
        self._lock = threading.Lock()
        self._observer: Observer | None = None
        self._watched_identity: tuple[int, int] | None = None
        self._rescan_reason: str | None = "start-up"
        self.rescans: dict[str, int] = {}  # how many full scans, by reason
        self._entries_changed: int | None = None  # the drop dir's mtime at the last check
        self._overflow_alarm = _OverflowAlarm(self)
        self.on_change: Callable[[], None] | None = None  # called on news: a new candidate, a rescan

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def start(self) -> None:
        logging.getLogger("watchdog").addHandler(self._overflow_alarm)
        self._start_observer()

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self._overflow_alarm)
        self._stop_observer()

    def _start_observer(self) -> None:
        try:
            status = os.stat(self.drop_dir)
        except OSError:
            self._watched_identity = None
            return
        observer = Observer()
        observer.schedule(_Nominator(self), str(self.drop_dir), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._watched_identity = (status.st_dev, status.st_ino)
        self._entries_changed = status.st_mtime_ns
        log.info("watch.started", drop_dir=str(self.drop_dir))

    def _stop_observer(self) -> None:
        if self._observer is None:
            return
        # Newer watchdog logs a spurious error when its emitter is stopped mid-read.
        emitter_log = logging.getLogger("watchdog.observers.inotify")
        level = emitter_log.level
        emitter_log.setLevel(logging.CRITICAL)
        try:
            self._observer.stop()
            self._observer.join(timeout=5)
        finally:
            emitter_log.setLevel(level)
        self._observer = None

    def ensure_watching(self) -> None:
        """Re-arm inotify if the drop dir was removed and recreated (or appeared late), and rescan
        when its entries changed: that heals events inotify lost (a queue overflow, which watchdog
        before 7 drops silently) at the cost of a stat per call."""
        try:
            status = os.stat(self.drop_dir)
            identity = (status.st_dev, status.st_ino)
        except OSError:
            status, identity = None, None
        if status is not None and status.st_mtime_ns != self._entries_changed:
            if self._entries_changed is not None:
                self.request_rescan("drop dir entries changed")
            self._entries_changed = status.st_mtime_ns
        alive = self._observer is not None and self._observer.is_alive()
        if identity == self._watched_identity and (alive or identity is None):
            return
        log.warning("watch.rearmed", drop_dir=str(self.drop_dir), exists=identity is not None)
        self._stop_observer()
        self._start_observer()
        self.request_rescan("drop dir recreated")

    def request_rescan(self, reason: str) -> None:
        with self._lock:
            self._rescan_reason = reason
        self.changed()

    def rescan_if_requested(self) -> None:
        with self._lock:
            reason, self._rescan_reason = self._rescan_reason, None
        if reason:
            self.rescans[reason] = self.rescans.get(reason, 0) + 1
            self.scan(reason)

    def scan(self, reason: str) -> int:
        """Nominate every entry of the drop dir; return how many there were."""
        try:
            names = os.listdir(self.drop_dir)
        except OSError as error:
            log.warning("watch.scan_failed", drop_dir=str(self.drop_dir), error=error.strerror)
            return 0
        for name in names:
            self.nominate(self.drop_dir / name, announce=False)  # the scanning loop looks next anyway
        log.debug("watch.scanned", reason=reason, entries=len(names))
        return len(names)

    def nominate(self, path: Path, announce: bool = True) -> None:
        if path.parent != self.drop_dir or is_temporary_name(path.name):
            return
        if path.name in OUTCOME_DIRS:
            return
        now = time.monotonic()
        with self._lock:
            candidate = self._candidates.get(path)
            if candidate is None:
                self._candidates[path] = _Candidate(None, now)
        if candidate is None and announce:
            self.changed()

    def next_deadline(self) -> float | None:
        """The monotonic time at which ready() may hand out (or must look at) a candidate; None if
        there is none. A candidate not looked at yet is due now."""
        with self._lock:
            candidates = list(self._candidates.values())
        deadlines = [time.monotonic() if candidate.identity is None
                     else candidate.stable_since + self.settle
                     for candidate in candidates]
        return min(deadlines, default=None)

    def ready(self, known_identities: set[str] | frozenset[str] = frozenset()) -> list[Path]:
        """Return the candidates that are complete now, each once; drop vanished and known ones."""
        now = time.monotonic()
        with self._lock:
            items = list(self._candidates.items())
        ready = []
        for path, candidate in items:
            verdict = self._judge(path, candidate, now, known_identities)
            if verdict != "wait":
                with self._lock:
                    self._candidates.pop(path, None)
            if verdict == "ready":
                ready.append(path)
        return ready

    def _judge(self, path: Path, candidate: _Candidate, now: float, known: set[str] | frozenset[str]) -> str:
        try:
            status = os.lstat(path)
        except OSError:
            return "gone"
        identity = file_identity(status)
        if identity in known:
            return "known"
        if stat.S_ISDIR(status.st_mode) and not path.name.lower().endswith(".iso"):
            return "ignore"
        changed = max(status.st_mtime, status.st_ctime)  # wall clock: when it last changed
        since = min(now, now - (time.time() - changed))
        if identity != candidate.identity:
            candidate.identity, candidate.stable_since = identity, since
        else:  # a chmod moves only the ctime; a writer seen holding it made us wait from then
            candidate.stable_since = max(candidate.stable_since, since)
        if now - candidate.stable_since < self.settle:
            return "wait"
        if stat.S_ISREG(status.st_mode) and open_for_writing(path, self.proc_root):
            candidate.stable_since = now
            return "wait"
        return "ready"
