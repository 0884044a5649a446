"""Take a complete dropped file in: refuse what is not an ESXi installer, queue what is.

The file is opened once without following links and without blocking (a FIFO cannot hang us);
everything after that reads through that descriptor, so a file swapped meanwhile is noticed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog

from esxi_watcher import outcomes
from esxi_watcher.iso import inspect_iso
from esxi_watcher.store import DUPLICATE, QUEUED, REJECTED, JobConflict, JobStore, Job
from esxi_watcher.watch import file_identity

log = structlog.get_logger(__name__)

_HASH_CHUNK = 4 << 20


class Changed(Exception):
    """The file changed while it was read: it goes back to settling."""


@dataclass(frozen=True)
class Refusal:
    reason: str


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def precheck(status: os.stat_result, max_size: int) -> Refusal | None:
    """Given lstat() of a dropped entry, return why it cannot be an ISO, or None."""
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        return Refusal("is a symbolic link: esxi-watcher never follows links; copy the ISO file itself")
    if stat.S_ISDIR(mode):
        return Refusal("is a directory, not an ISO file")
    if not stat.S_ISREG(mode):
        return Refusal("is not a regular file (a FIFO, socket or device node)")
    if status.st_size == 0:
        return Refusal("is empty (0 bytes)")
    if not status.st_mode & 0o444:
        # root could read it anyway, but a file nobody may read was not meant to be taken yet
        return Refusal(f"has no read permission (mode {stat.S_IMODE(status.st_mode):04o}): "
                       "chmod a+r it and drop it again")
    if status.st_size > max_size:
        return Refusal(f"is {_human_size(status.st_size)}, over watch.max_iso_size "
                       f"({_human_size(max_size)}); raise it if this really is an ESXi ISO")
    return None


def sha256_of(descriptor: int, stop_event: threading.Event | None = None,
              heartbeat: Callable[[], None] | None = None) -> str | None:
    """Hash an open file from its start; None if asked to stop meanwhile."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        if stop_event is not None and stop_event.is_set():
            return None
        if heartbeat is not None:
            heartbeat()
        chunk = os.pread(descriptor, _HASH_CHUNK, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)


class Intake:
    def __init__(self, drop_dir: Path, max_size: int, store: JobStore, stop_event: threading.Event,
                 heartbeat: Callable[[], None] | None = None):
        self.heartbeat = heartbeat
        self.drop_dir = drop_dir
        self.max_size = max_size
        self.store = store
        self.stop_event = stop_event

    def take_in(self, path: Path) -> Job | None:
        """Turn a settled drop-dir entry into a job. Return None when it must settle again."""
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            return None
        refusal = precheck(status, self.max_size)
        if refusal:
            return self._reject(path, status, refusal.reason)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            return self._reject(path, status, f"cannot be opened: {error.strerror}")
        try:
            return self._read(path, status, descriptor)
        except Changed:
            log.info("intake.changed_while_read", iso=path.name)
            return None
        finally:
            os.close(descriptor)

    def _read(self, path: Path, status: os.stat_result, descriptor: int) -> Job | None:
        self._same_file(descriptor, status)
        facts = inspect_iso(f"/proc/self/fd/{descriptor}")
        if not facts.esxi:
            self._same_file(descriptor, status)
            return self._reject(path, status, f"not an ESXi installer ISO: {facts.reason}")
        sha256 = sha256_of(descriptor, self.stop_event, self.heartbeat)
        if sha256 is None:
            return None
        self._same_file(descriptor, status)
        return self._queue(path, status, sha256, facts.to_dict())

    @staticmethod
    def _same_file(descriptor: int, status: os.stat_result) -> None:
        if file_identity(os.fstat(descriptor)) != file_identity(status):
            raise Changed()

    def _queue(self, path: Path, status: os.stat_result, sha256: str, facts: dict) -> Job:
        values = dict(iso=path.name, iso_path=str(path), file_identity=file_identity(status),
                      sha256=sha256, size=status.st_size, facts=facts)
        try:
            job = self.store.add(state=QUEUED, **values)
        except JobConflict as conflict:
            return self._same_content(path, values, conflict.existing)
        log.info("job.queued", job=job.id, iso=path.name, version=facts["version"],
                 update=facts["update"], build=facts["build"], vendor=facts["vendor"], sha256=sha256)
        return job

    def _same_content(self, path: Path, values: dict, existing: Job) -> Job:
        if existing.state == QUEUED and not still_in_place(existing):
            # The queued file was renamed or copied over: the job follows its content.
            log.info("job.file_moved", job=existing.id, iso=path.name, was=existing.iso)
            return self.store.update(existing.id, iso=values["iso"], iso_path=values["iso_path"],
                                     file_identity=values["file_identity"])
        reason = (f"same content (sha256 {values['sha256'][:12]}…) as {existing.iso!r}, job {existing.id} "
                  f"({existing.state}{', ' + existing.resource if existing.resource else ''}): not built twice")
        job = self.store.add(state=DUPLICATE, duplicate_of=existing.id, error=reason, **values)
        log.info("job.duplicate", job=job.id, iso=path.name, duplicate_of=existing.id)
        moved = outcomes.move_to_outcome(self.drop_dir, path, outcomes.DONE, job.id, reason)
        return self.store.update(job.id, iso_path=str(moved))

    def _reject(self, path: Path, status: os.stat_result, reason: str) -> Job:
        job = self.store.add(state=REJECTED, iso=path.name, iso_path=str(path),
                             file_identity=file_identity(status), size=status.st_size, error=reason)
        log.warning("job.rejected", job=job.id, iso=path.name, reason=reason)
        moved = outcomes.move_to_outcome(self.drop_dir, path, outcomes.REJECTED, job.id, reason)
        return self.store.update(job.id, iso_path=str(moved))


def still_in_place(job: Job) -> bool:
    """Whether the file a job took in is still where it was, unchanged."""
    try:
        return file_identity(os.lstat(job.iso_path)) == job.file_identity
    except OSError:
        return False
