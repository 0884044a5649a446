"""`esxi-watcher retry JOB`: put a failed job back in line, at the step that failed."""

from __future__ import annotations

import os
from pathlib import Path

from esxi_watcher.errors import EsxiWatcherError
from esxi_watcher.store import BUILT, FAILED, QUEUED, Job, JobStore


class NotRetryable(EsxiWatcherError):
    exit_code = 2


def retry_job(store: JobStore, job: Job, drop_dir: Path) -> Job:
    """Given a failed job, queue its registration (if its image is built) or its build again."""
    if job.state != FAILED:
        raise NotRetryable(f"job {job.id} is {job.state}, not failed: nothing to retry")
    iso_path = _back_to_drop_dir(Path(job.iso_path), drop_dir)
    if job.failed_stage == "register" and job.artifact and os.path.exists(job.artifact):
        return store.update(job.id, state=BUILT, stage="retry requested", error=None, next_try=0,
                            register_attempts=0, iso_path=str(iso_path))
    return store.update(job.id, state=QUEUED, stage="retry requested", error=None, next_try=0,
                        build_attempts=0, register_attempts=0, iso_path=str(iso_path), artifact=None)


def _back_to_drop_dir(path: Path, drop_dir: Path) -> Path:
    """Rename the ISO from failed/ back into the drop dir (same inode, so the job still knows it)."""
    if path.parent == drop_dir:
        return path
    if not path.exists():
        raise NotRetryable(f"the ISO is no longer at {path}: drop it again instead")
    target = drop_dir / path.name
    if os.path.lexists(target):
        raise NotRetryable(f"{target} exists: move it away first")
    os.rename(path, target)
    reason = Path(f"{path}.reason.txt")
    if reason.exists():
        reason.unlink()  # our own note, not a dropped file
    return target
