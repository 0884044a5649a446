"""`esxi-watcher retry JOB`: put a failed job back in line, at the step that failed.

The ISO is looked for where the job last saw it, then by identity (a rename keeps it) in the drop
dir and in failed/: an admin may have moved it, or a move may have happened that the store could
not record.
"""

from __future__ import annotations

import os
from pathlib import Path

from esxi_watcher import checksums
from esxi_watcher.errors import NotRetryable
from esxi_watcher.outcomes import DONE as DONE_FOLDER, FAILED as FAILED_FOLDER, REASON_SUFFIX, identity_at, locate
from esxi_watcher.store import Job, JobStore, State, Step, Target


def retry_job(store: JobStore, job: Job, drop_dir: Path, target: str | None = None) -> Job:
    """Given a job that failed (or failed on a target), queue its registration on the target(s) that
    failed (if its image is built) or its build again."""
    failed_targets = _failed_targets(store, job, target)
    if job.state is not State.FAILED:
        if not failed_targets:
            raise NotRetryable(f"job {job.id} is {job.state}, not failed: nothing to retry")
        _reset(store, job.id, failed_targets)  # other targets still work on it: its ISO stays where it is
        return store.get(job.id)
    if target is not None and job.failed_stage is not Step.REGISTER:
        raise NotRetryable(f"job {job.id} failed while building: `esxi-watcher retry {job.id}` builds it again")
    found = find_iso(job, drop_dir)
    iso_path = _back_to_drop_dir(found, drop_dir)
    _remove_stale_note(Path(job.iso_path))
    return requeue(store, job, stage="retry requested", targets=failed_targets, iso_path=str(iso_path),
                   file_identity=identity_at(iso_path))


def _failed_targets(store: JobStore, job: Job, target: str | None) -> list[str]:
    """The targets whose registration of this job failed (only `target`, when given)."""
    records = store.registrations(job.id)
    if target is None:
        return [record.target for record in records if record.state is Target.FAILED]
    record = next((record for record in records if record.target == target), None)
    if record is None:
        known = ", ".join(record.target for record in records) or "none yet"
        raise NotRetryable(f"job {job.id} has no registration on target {target} (its targets: {known})")
    if record.state is Target.REMOVED:
        raise NotRetryable(f"job {job.id} was removed from target {target} by retention (maas.keep): "
                           f"{record.removal or 'no reason recorded'}")
    if record.state is not Target.FAILED:
        raise NotRetryable(f"job {job.id} is {record.state} on target {target}, not failed: nothing to retry")
    return [target]


def requeue(store: JobStore, job: Job, *, stage: str, targets: list[str] | None = None, **where: object) -> Job:
    """Given a failed job, put it back in line at the step that failed: its registration on `targets`
    (default: every target it failed on) when its image is kept, else its build. Attempts count
    anew; `where` says where its ISO is now (iso_path, file_identity, iso)."""
    failed = [record.target for record in store.registrations(job.id) if record.state is Target.FAILED]
    _reset(store, job.id, failed if targets is None else targets)
    if job.failed_stage is Step.REGISTER and job.artifact and os.path.exists(job.artifact):
        return store.update(job.id, state=State.BUILT, stage=stage, error=None, failed_stage=None, next_try=0,
                            **where)
    return store.update(job.id, state=State.QUEUED, stage=stage, error=None, failed_stage=None, next_try=0,
                        build_attempts=0, artifact=None, **where)


def _reset(store: JobStore, job_id: int, targets: list[str]) -> None:
    for target in targets:
        store.update_registration(job_id, target, state=Target.PENDING, attempts=0, next_try=0, since=None,
                                  error=None)


def find_iso(job: Job, drop_dir: Path) -> Path:
    """Where the failed job's ISO is now: its recorded path, or the same file in the drop dir or failed/."""
    recorded = Path(job.iso_path)
    found = locate(recorded, job.file_identity, (drop_dir, drop_dir / FAILED_FOLDER))
    if found is None and os.path.lexists(recorded):
        found = recorded  # the same name, touched or copied over since: still the admin's ISO
    if found is None:
        raise NotRetryable(f"the ISO is no longer at {recorded}, nor (as the same file) in {drop_dir} or "
                           f"{drop_dir / FAILED_FOLDER}: drop it again instead")
    return found


def _back_to_drop_dir(path: Path, drop_dir: Path) -> Path:
    """Rename the ISO (and its checksum files) back into the drop dir: same inode, so the job still
    knows it. An ISO in done/ (a rebuild's: a registered job uses it too) is built where it is."""
    if path.parent in (drop_dir, drop_dir / DONE_FOLDER):
        return path
    target = drop_dir / path.name
    if os.path.lexists(target):
        raise NotRetryable(f"{target} exists: move it away first")
    companions = checksums.companions(path.parent, path.name)
    os.rename(path, target)
    for companion in companions:
        if not os.path.lexists(drop_dir / companion.name):
            os.rename(companion, drop_dir / companion.name)
    _remove_stale_note(path)
    return target


def _remove_stale_note(path: Path) -> None:
    """Remove our own reason note beside where the ISO was, once the ISO is no longer there."""
    note = Path(f"{path}{REASON_SUFFIX}")
    if path.parent.name == FAILED_FOLDER and not os.path.lexists(path) and note.is_file():
        note.unlink()
