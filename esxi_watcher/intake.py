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

from esxi_watcher import checksums, outcomes, provenance
from esxi_watcher.config import BuildConfig, TargetConfig
from esxi_watcher.iso import IsoFacts, inspect_iso
from esxi_watcher.naming import distinct_name, resource_name
from esxi_watcher.progress import human_size
from esxi_watcher.store import Job, JobConflict, JobStore, State, Step
from esxi_watcher.watch import file_identity

log = structlog.get_logger(__name__)

_HASH_CHUNK = 4 << 20


class Changed(Exception):
    """The file changed while it was read: it goes back to settling."""


@dataclass(frozen=True)
class Refusal:
    reason: str


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
        return Refusal(f"is {human_size(status.st_size)}, over watch.max_iso_size "
                       f"({human_size(max_size)}); raise it if this really is an ESXi ISO")
    return None


def digests_of(descriptor: int, algorithms: set[str] | frozenset[str] = frozenset({"sha256"}),
               stop_event: threading.Event | None = None,
               heartbeat: Callable[[], None] | None = None) -> dict[str, str] | None:
    """Hash an open file from its start with every algorithm at once (one read pass); None if asked
    to stop meanwhile."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    offset = 0
    while True:
        if stop_event is not None and stop_event.is_set():
            return None
        if heartbeat is not None:
            heartbeat()
        chunk = os.pread(descriptor, _HASH_CHUNK, offset)
        if not chunk:
            return {name: value.hexdigest() for name, value in hashes.items()}
        for value in hashes.values():
            value.update(chunk)
        offset += len(chunk)


def sha256_of(descriptor: int, stop_event: threading.Event | None = None,
              heartbeat: Callable[[], None] | None = None) -> str | None:
    """Hash an open file from its start; None if asked to stop meanwhile."""
    digests = digests_of(descriptor, frozenset({"sha256"}), stop_event, heartbeat)
    return None if digests is None else digests["sha256"]


class Intake:
    def __init__(self, drop_dir: Path, max_size: int, store: JobStore, stop_event: threading.Event,
                 heartbeat: Callable[[], None] | None = None, *, mover: outcomes.Mover | None = None,
                 recipe: Callable[[], tuple[BuildConfig, str]] | None = None):
        """recipe() gives the build configuration in use and its fingerprint (provenance.py): the
        same content is a duplicate only of a job built with the same recipe."""
        self.heartbeat = heartbeat
        self.recipe = recipe
        self.drop_dir = drop_dir
        self.max_size = max_size
        self.store = store
        self.stop_event = stop_event
        self.mover = mover or outcomes.Mover(drop_dir)
        self._checksums_handled: set[str] = set()  # identities of checksum files already used or reported

    def take_in(self, path: Path) -> Job | None:
        """Turn a settled drop-dir entry into a job. Return None when it must settle again (or is a
        checksum file, which is used with its ISO)."""
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            return None
        refusal = precheck(status, self.max_size)
        if refusal:
            return self._reject(path, status, refusal.reason)
        if checksums.algorithm_of(path.name) and status.st_size <= checksums.MAX_SIZE:
            self._checksum_file(path, status)
            return None
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
        expected = self._expected_digests(path)
        algorithms = {"sha256"} | {item.algorithm for item in expected}
        digests = digests_of(descriptor, algorithms, self.stop_event, self.heartbeat)
        if digests is None:
            return None
        self._same_file(descriptor, status)
        mismatch = checksum_mismatch(expected, digests)
        if mismatch:
            return self._reject(path, status, mismatch)
        for item in expected:
            log.info("checksum.verified", iso=path.name, checksum=item.path.name, algorithm=item.algorithm)
        return self._queue(path, status, digests["sha256"], facts.to_dict())

    def _expected_digests(self, path: Path) -> list[checksums.Expected]:
        """The digests the checksum files beside the ISO give it (each such file counts as used)."""
        expected = []
        for companion in checksums.companions(self.drop_dir, path.name):
            identity = outcomes.identity_at(companion)
            if identity:
                self._checksums_handled.add(identity)
            item = checksums.read_expected(companion, path.name)
            if item is None:
                log.warning("checksum.unusable", iso=path.name, checksum=companion.name,
                            reason=f"no {checksums.algorithm_of(companion.name)} digest for this ISO in it")
            else:
                expected.append(item)
        return expected

    @staticmethod
    def _same_file(descriptor: int, status: os.stat_result) -> None:
        if file_identity(os.fstat(descriptor)) != file_identity(status):
            raise Changed()

    def _queue(self, path: Path, status: os.stat_result, sha256: str, facts: dict) -> Job:
        values = dict(iso=path.name, iso_path=str(path), file_identity=file_identity(status),
                      sha256=sha256, size=status.st_size, facts=facts)
        if self.recipe is not None:
            build_config, fingerprint = self.recipe()
            values["fingerprint"] = fingerprint
            values["provenance"] = provenance.queued_record(iso=path.name, sha256=sha256, size=status.st_size,
                                                            facts=facts, build_config=build_config,
                                                            fingerprint=fingerprint)
            failed = self.store.failed_build_of(sha256)
            if failed is not None and failed.fingerprint != fingerprint and \
                    self.store.live_job_for(sha256, fingerprint) is None:
                return self._build_again(failed, values)  # no image of it to keep: built with today's recipe
            unknown = self.store.live_job_for(sha256, None)  # built before recipes were recorded
            if unknown is not None and unknown.state is not State.FAILED:
                return self._same_content(path, values, unknown)  # `rebuild` builds it again on request
            for queued in self.store.jobs((State.QUEUED,)):  # its build takes today's recipe anyway
                if queued.sha256 == sha256 and queued.fingerprint != fingerprint and not still_in_place(queued):
                    return self._same_content(path, values, queued)
        try:
            job = self.store.add(state=State.QUEUED, **values)
        except JobConflict as conflict:
            return self._same_content(path, values, conflict.existing)
        log.info("job.queued", job=job.id, iso=path.name, version=facts["version"],
                 update=facts["update"], build=facts["build"], vendor=facts["vendor"], sha256=sha256,
                 fingerprint=provenance.short(job.fingerprint))
        return job

    def _same_content(self, path: Path, values: dict, existing: Job) -> Job:
        if existing.state is State.QUEUED and not still_in_place(existing):
            # The queued file was renamed or copied over: the job follows its content.
            log.info("job.file_moved", job=existing.id, iso=path.name, was=existing.iso)
            return self.store.update(existing.id, iso=values["iso"], iso_path=values["iso_path"],
                                     file_identity=values["file_identity"])
        if existing.state is State.FAILED:
            return self._build_again(existing, values)
        reason = duplicate_reason(values["sha256"], existing)
        job = self.store.add(state=State.DUPLICATE, duplicate_of=existing.id, error=reason, **values)
        log.info("job.duplicate", job=job.id, iso=path.name, duplicate_of=existing.id)
        return self.mover.finish(self.store, job)

    def _build_again(self, failed: Job, values: dict) -> Job:
        """The content of a failed job, dropped again (or moved back from failed/): its job goes back
        in line with this file, its attempts counted anew."""
        from esxi_watcher.retry import requeue

        old_path = Path(failed.iso_path)
        recipe = {}  # a kept image keeps the record of what built it
        if failed.failed_stage is Step.BUILD:
            recipe = {name: values[name] for name in ("fingerprint", "provenance") if name in values}
        job = requeue(self.store, failed, stage="dropped again", iso=values["iso"], iso_path=values["iso_path"],
                      file_identity=values["file_identity"], **recipe)
        note = Path(f"{old_path}{outcomes.REASON_SUFFIX}")
        if old_path.parent == self.drop_dir / outcomes.FAILED and not os.path.lexists(old_path):
            note.unlink(missing_ok=True)  # our own note on a failure that is being tried again
        log.info("job.dropped_again", job=job.id, iso=values["iso"], was=failed.iso, state=job.state)
        return job

    def _reject(self, path: Path, status: os.stat_result, reason: str) -> Job:
        job = self.store.add(state=State.REJECTED, iso=path.name, iso_path=str(path),
                             file_identity=file_identity(status), size=status.st_size, error=reason)
        log.warning("job.rejected", job=job.id, iso=path.name, reason=reason)
        return self.mover.finish(self.store, job)

    # ----- checksum files that come on their own -----

    def _checksum_file(self, path: Path, status: os.stat_result) -> None:
        """A checksum file waits for its ISO; if its ISO was taken in already, it joins that job."""
        identity = file_identity(status)
        if identity in self._checksums_handled:
            return
        names = checksums.iso_names_for(path.name)
        iso_here = [self.drop_dir / name for name in _entries(self.drop_dir) if name.lower() in names]
        if iso_here:
            known = self.store.identities_in_drop_dir(self.drop_dir)
            jobs = [known[i] for i in map(outcomes.identity_at, iso_here) if i in known]
            if not jobs:
                return  # its ISO is still settling: the ISO's intake reads this file
            job = jobs[0]
        else:
            job = self.store.newest_job_named(names)
        self._checksums_handled.add(identity)
        if job is None:
            log.info("checksum.waiting_for_iso", checksum=path.name, iso=" or ".join(names))
            return
        self._join(path, job)

    def _join(self, path: Path, job: Job) -> None:
        expected = checksums.read_expected(path, job.iso)
        reason = None
        if expected is None:
            log.warning("checksum.unusable", job=job.id, checksum=path.name, reason="no digest for the ISO in it")
        elif expected.algorithm == "sha256" and job.sha256:
            reason = checksum_mismatch([expected], {"sha256": job.sha256})
            if reason is None:
                log.info("checksum.verified", job=job.id, iso=job.iso, checksum=path.name, algorithm="sha256")
        else:
            log.info("checksum.not_verified", job=job.id, iso=job.iso, checksum=path.name,
                     note="the ISO was read before this file came; only a sha256 can be checked afterwards")
        if reason and self.store.update_if(job.id, State.QUEUED, state=State.REJECTED, error=reason, stage=None):
            log.warning("job.rejected", job=job.id, iso=job.iso, reason=reason)
            self.mover.finish(self.store, self.store.get(job.id))
            return
        if reason:
            log.error("checksum.mismatch", job=job.id, iso=job.iso, state=job.state, reason=reason)
        iso_path = Path(job.iso_path)
        if iso_path.parent != self.drop_dir:  # its ISO is in an outcome folder: the file goes beside it
            try:
                outcomes.move_to_outcome(self.drop_dir, path, iso_path.parent.name, job.id,
                                         reason)
            except OSError as error:
                log.error("checksum.not_moved", job=job.id, checksum=path.name, error=str(error))


def duplicate_reason(sha256: str, existing: Job) -> str:
    """Given an ISO's sha256 and the live job already built (or being built) from it with the same
    recipe, return why it is not built again."""
    reason = f"same content (sha256 {sha256[:12]}…) as {existing.iso!r}, job {existing.id} ({existing.state})"
    if not existing.fingerprint:
        return (reason + ", built before esxi-watcher recorded build recipes: not built twice; "
                f"`esxi-watcher rebuild {existing.id}` builds it again with today's template and kickstart")
    return (reason + f", built with the same template and kickstart (fingerprint "
            f"{provenance.short(existing.fingerprint)}…): not built twice; after a change of the template or "
            "kickstart it is built again")


def checksum_mismatch(expected: list[checksums.Expected], digests: dict[str, str]) -> str | None:
    """Given what checksum files say and the ISO's digests, return the reason it does not match, or None."""
    for item in expected:
        actual = digests.get(item.algorithm)
        if actual is not None and actual != item.digest:
            return (f"checksum mismatch: {item.path.name} says {item.algorithm} {item.digest}, the ISO's "
                    f"{item.algorithm} is {actual} (a damaged or different download)")
    return None


def decide_resource(store: JobStore, target: TargetConfig, facts: dict, sha256: str) -> str:
    """The MAAS name of an ISO's image on a target: the target's template's, or when another ISO's
    image holds that name there already, the name tagged with this ISO's sha256 (never a silent
    replacement of what the next deployment installs)."""
    name = resource_name(target.name_template, IsoFacts(**facts))
    return distinct_name(name, sha256) if store.name_holder(target.name, name, sha256) else name


def _entries(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def still_in_place(job: Job) -> bool:
    """Whether the file a job took in is still where it was, unchanged."""
    try:
        return file_identity(os.lstat(job.iso_path)) == job.file_identity
    except OSError:
        return False
