"""`esxi-watcher rebuild JOB`: build a registered job's ISO again with today's template and kickstart.

The ISO is used where it is (done/ normally, found by identity when it was renamed there): a new job
is queued for the same file, with today's recipe fingerprint and `rebuild_of` in its provenance, and
the daemon builds and registers it like any other (same content, same MAAS name: a new set on the
resource; the earlier job's registration stays as it was). Nothing is done when the recipe is the
one the job was built with.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from esxi_watcher import provenance
from esxi_watcher.config import Config
from esxi_watcher.errors import NotRebuildable
from esxi_watcher.intake import sha256_of
from esxi_watcher.outcomes import DONE, FAILED, locate
from esxi_watcher.store import Job, JobConflict, JobStore, State, Step
from esxi_watcher.watch import file_identity


def can_rebuild(job: Job) -> bool:
    """Whether the job is finished with an image built: registered, or failed while registering."""
    return job.sha256 is not None and (job.state is State.REGISTERED or (
        job.state is State.FAILED and job.failed_stage is Step.REGISTER))


def rebuild_job(store: JobStore, job: Job, config: Config) -> Job:
    """Given a registered job and the configuration, queue a new job for its ISO with today's recipe;
    return it. Raise NotRebuildable saying why not."""
    if not can_rebuild(job):
        raise NotRebuildable(f"job {job.id} is {job.state}" + (" (its build failed)" if job.state is State.FAILED
                                                               else "") +
                             ": only a registered job, or one that failed to register, can be rebuilt")
    path, identity = find_same_iso(job, config.drop_dir)
    if path.parent == config.drop_dir:  # the daemon takes it in (or moves it) on its own: no second job
        raise NotRebuildable(f"the ISO of job {job.id} is in the drop dir ({path}), not in {config.drop_dir / DONE}: "
                             f"the daemon takes it in as a new drop")
    try:
        fingerprint = provenance.fingerprint_for(config)
    except OSError as error:
        raise NotRebuildable(f"cannot work out today's recipe fingerprint: {error}") from error
    if fingerprint == job.fingerprint:
        raise NotRebuildable(f"job {job.id} was built with the current template and kickstart (fingerprint "
                             f"{provenance.short(fingerprint)}…): nothing to rebuild")
    record = provenance.queued_record(iso=job.iso, sha256=job.sha256, size=job.size, facts=job.facts or {},
                                      build_config=config.build, fingerprint=fingerprint, rebuild_of=job.id)
    try:
        return store.add(state=State.QUEUED, stage=f"rebuild of job {job.id}", iso=job.iso, iso_path=str(path),
                         file_identity=identity, sha256=job.sha256, size=job.size, facts=job.facts,
                         fingerprint=fingerprint, provenance=record)
    except JobConflict as conflict:
        raise NotRebuildable(f"job {conflict.existing.id} ({conflict.existing.state}) already builds this ISO with "
                             f"the current template and kickstart: nothing to rebuild") from None


def find_same_iso(job: Job, drop_dir: Path) -> tuple[Path, str]:
    """Where the job's ISO is now, unchanged, and its file identity: the recorded path, the same file
    renamed in done/, the drop dir or failed/, or the recorded path holding the same bytes (a copy
    put back). Raise NotRebuildable when it is gone or changed."""
    recorded = Path(job.iso_path)
    found = locate(recorded, job.file_identity, (drop_dir / DONE, drop_dir, drop_dir / FAILED))
    if found is not None and job.file_identity is not None:
        return found, job.file_identity
    if not os.path.lexists(recorded):
        raise NotRebuildable(f"the ISO of job {job.id} is gone: not at {recorded}, nor (as the same file) in "
                             f"{drop_dir / DONE}, {drop_dir} or {drop_dir / FAILED}; drop it again instead")
    sha256 = _sha256_at(recorded)
    if sha256 != job.sha256:
        raise NotRebuildable(f"{recorded} changed since job {job.id} took it in (sha256 "
                             f"{(sha256 or 'unreadable')[:12]}…, was {job.sha256[:12]}…): drop the ISO again instead")
    return recorded, _identity(recorded)


def _identity(path: Path) -> str:
    return file_identity(os.lstat(path))


def _sha256_at(path: Path) -> str | None:
    """The sha256 of a regular file read without following a link; None when it is not one."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        return sha256_of(descriptor)
    finally:
        os.close(descriptor)
