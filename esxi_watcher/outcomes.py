"""Where a dropped file ends: done/, rejected/ or failed/ in the drop dir, with a reason beside it.

Files are only ever renamed (never copied, truncated or deleted) and never overwrite another file.
Every name fits the file system: the name and its `<name>.reason.txt` stay within NAME_MAX bytes
(a longer stem is shortened on a character boundary, the extension kept, and the reason says so).
A checksum file beside an ISO (see checksums) goes with it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterable

import structlog

from esxi_watcher import checksums
from esxi_watcher.store import Job, JobStore, State
from esxi_watcher.watch import OUTCOME_DIRS, file_identity

log = structlog.get_logger(__name__)

DONE, REJECTED, FAILED = OUTCOME_DIRS
OUTCOME_OF_STATE = {State.REGISTERED: DONE, State.DUPLICATE: DONE, State.FAILED: FAILED, State.REJECTED: REJECTED}

NAME_MAX = 255  # bytes in one file name on Linux file systems
REASON_SUFFIX = ".reason.txt"
_LONGEST_EXTENSION = 16  # bytes; a longer "extension" is part of the stem


def byte_length(name: str) -> int:
    return len(os.fsencode(name))


def _split(name: str) -> tuple[str, str]:
    """Given a file name, return (stem, extension with its dot); '' when it has none worth keeping."""
    stem, dot, extension = name.rpartition(".")
    if not stem or byte_length(dot + extension) > _LONGEST_EXTENSION:
        return name, ""
    return stem, dot + extension


def fitted_name(stem: str, tag: str, extension: str) -> str:
    """Given a name's parts, return stem + tag + extension with the stem shortened (whole characters
    only) so that the name and its reason file fit in NAME_MAX bytes."""
    budget = NAME_MAX - byte_length(REASON_SUFFIX + tag + extension)
    while byte_length(stem) > budget:
        stem = stem[:-1]
    return stem + tag + extension


def _free_name(folder: Path, name: str, job_id: int) -> Path:
    stem, extension = _split(name)
    for attempt in range(1000):
        tag = "" if attempt == 0 else f".job{job_id}" if attempt == 1 else f".job{job_id}-{attempt}"
        candidate = folder / fitted_name(stem, tag, extension)
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(f"no free name for {name!r} in {folder}")


def _note_text(reason: str | None, original: str, target: Path, job_id: int) -> str | None:
    lines = [reason] if reason else []
    if target.name != original and byte_length(original) + byte_length(REASON_SUFFIX) > NAME_MAX:
        lines.append(f"renamed to {target.name}: the name was too long ({byte_length(original)} bytes; "
                     f"a name and its {REASON_SUFFIX} must fit in {NAME_MAX}). It was dropped as {original}")
    if not lines:
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return "\n".join(lines) + f"\n\njob {job_id}, {stamp}. Nothing was deleted: this file is as dropped.\n"


def move_to_outcome(drop_dir: Path, path: Path, outcome: str, job_id: int, reason: str | None,
                    companions: Iterable[Path] = ()) -> Path:
    """Rename a dropped file (or link, dir, FIFO: never followed) into drop_dir/<outcome>/.

    Return its new path. Write <name>.reason.txt beside it when a reason is given or the name had to
    be shortened. Companions (its checksum files) follow it; one that cannot is logged and stays.
    """
    folder = drop_dir / outcome
    folder.mkdir(mode=0o775, exist_ok=True)  # a setgid drop dir passes its group and setgid on
    target = _free_name(folder, path.name, job_id)
    note = Path(f"{target}{REASON_SUFFIX}")
    text = _note_text(reason, path.name, target, job_id)
    if text:  # written first, so the file never shows up in its folder without its reason
        note.write_text(text, encoding="utf-8")
    try:
        os.rename(path, target)
    except OSError:
        if text:
            note.unlink(missing_ok=True)
        raise
    log.info("iso.moved", job=job_id, iso=path.name, to=outcome, reason=reason,
             **({"renamed": target.name} if target.name != path.name else {}))
    for companion in companions:
        _move_companion(folder, companion, job_id)
    return target


def _move_companion(folder: Path, companion: Path, job_id: int) -> None:
    try:
        os.rename(companion, _free_name(folder, companion.name, job_id))
    except OSError as error:
        log.warning("checksum.not_moved", job=job_id, checksum=companion.name, error=str(error))


def identity_at(path: Path) -> str | None:
    try:
        return file_identity(os.lstat(path))
    except OSError:
        return None


def locate(recorded: Path, identity: str | None, folders: Iterable[Path]) -> Path | None:
    """Where a job's file is now: its recorded path if that still holds it, else the entry with the
    same identity (dev:inode:size:mtime, kept by a rename) in one of these folders; None if gone."""
    if identity is None or identity_at(recorded) == identity:
        return recorded if os.path.lexists(recorded) else None
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if identity_at(folder / name) == identity:
                return folder / name
    return None


class Mover:
    """Moves finished jobs' files into their outcome folders and records where they went.

    A move that cannot happen (done/ is not a folder, a read-only or immutable drop dir, ...) leaves
    the file and its job as they are: it is logged once per job and error and tried again later.
    """

    def __init__(self, drop_dir: Path):
        self.drop_dir = Path(drop_dir)
        self._reported: dict[int, str] = {}
        self._lock = threading.Lock()
        self._moving = threading.Lock()  # one move at a time: two threads may finish the same job

    def outcome_folders(self) -> list[Path]:
        return [self.drop_dir / name for name in OUTCOME_DIRS]

    def finish(self, store: JobStore, job: Job) -> Job:
        """Given a finished job, move its file out of the drop dir; return the job as stored."""
        with self._moving:
            return self._finish(store, job)

    def _finish(self, store: JobStore, job: Job) -> Job:
        job = self.find(store, job)
        path = Path(job.iso_path)
        here = identity_at(path)
        if path.parent != self.drop_dir or here is None or (job.file_identity and here != job.file_identity):
            return job  # already moved, gone, or another file took its name
        reason = job.error if job.state is not State.REGISTERED else None
        try:
            moved = move_to_outcome(self.drop_dir, path, OUTCOME_OF_STATE[job.state], job.id, reason,
                                    checksums.companions(self.drop_dir, path.name))
        except OSError as error:
            self._report(job, error)
            return job
        with self._lock:
            self._reported.pop(job.id, None)
        return store.update(job.id, iso_path=str(moved))

    def find(self, store: JobStore, job: Job) -> Job:
        """Make the store point at the job's file when a move happened but its record did not (the
        store could not be written): the file is looked for by identity in the outcome folders."""
        path = Path(job.iso_path)
        if path.parent != self.drop_dir or not job.file_identity or identity_at(path) == job.file_identity:
            return job
        found = locate(path, job.file_identity, self.outcome_folders())
        if found is None or found == path:
            return job
        log.warning("iso.found_moved", job=job.id, iso=job.iso, recorded=str(path), found=str(found))
        return store.update(job.id, iso_path=str(found))

    def _report(self, job: Job, error: OSError) -> None:
        text = str(error)
        with self._lock:
            if self._reported.get(job.id) == text:
                return
            self._reported[job.id] = text
        log.error("iso.move_failed", job=job.id, iso=job.iso, state=job.state, error=text,
                  note="the file stays in the drop dir; the move is tried again at the next reconcile")
