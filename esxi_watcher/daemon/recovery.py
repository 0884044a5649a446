"""Crash recovery: re-enter every step a previous run left half-done, before any worker starts.

A build that was running is dead (its processes, mounts and nbd devices are ended) and its job is
queued again; an upload that was running starts over on its target (never resumed); finished jobs
whose ISO did not reach its folder are moved; work dirs and kept images no job owns are removed.
"""

from __future__ import annotations

import os
import re

import structlog

from esxi_watcher import build
from esxi_watcher.daemon import targets
from esxi_watcher.daemon.build_step import clean_host
from esxi_watcher.daemon.context import Context
from esxi_watcher.store import FINAL_STATES, State, Target

log = structlog.get_logger(__name__)

_KEPT_IMAGE = re.compile(r"([0-9]+)\.dd\.gz(" + re.escape(build.SHA256_SUFFIX) + r")?")


def recover(context: Context) -> None:
    store = context.store
    report = clean_host(context)  # nothing runs yet: every build of ours is dead
    log.info("recover.host_cleaned", **report.counts())
    for job in store.jobs((State.BUILDING,)):
        store.update(job.id, state=State.QUEUED, stage="re-queued after restart", pgid=None,
                     build_attempts=max(job.build_attempts - 1, 0))
        log.warning("recover.requeued", job=job.id, iso=job.iso)
    for record in store.registrations_in(Target.UPLOADING):
        store.update_registration(record.job, record.target, state=Target.PENDING)
        log.warning("recover.upload_restarts", job=record.job, target=record.target, resource=record.resource)
    _keep_images_built_before(context)
    finish_moves(context)
    _remove_orphan_workdirs(context)
    _remove_orphan_images(context)
    targets.plan_all(context)


def finish_moves(context: Context) -> None:
    """Move finished jobs' ISOs that are still in the drop dir (a move failed, or the store could not
    record it); each that cannot move stays, logged once."""
    in_drop_dir = context.store.identities_in_drop_dir(context.config.drop_dir).values()
    for job in sorted(in_drop_dir, key=lambda job: job.id):
        if job.state in FINAL_STATES:
            context.mover.finish(context.store, job)


def _keep_images_built_before(context: Context) -> None:
    """Images built before they were kept apart sit in their job's work dir: move them to artifacts/."""
    for job in context.store.jobs_with_artifact_under(context.config.work_root):
        if job.state not in (State.BUILT, State.FAILED, State.REGISTERED) or not os.path.isfile(job.artifact):
            continue  # its registration says the image is gone, and `retry` builds it again
        kept = context.artifact_path(job.id)
        kept.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (build.SHA256_SUFFIX, ""):  # the image last: its sha256 record is there with it
            if os.path.exists(job.artifact + suffix):
                os.replace(job.artifact + suffix, f"{kept}{suffix}")
        context.store.update(job.id, artifact=str(kept))
        log.info("recover.image_kept", job=job.id, artifact=str(kept))


def _remove_orphan_workdirs(context: Context) -> None:
    """Remove every work dir of ours (no build runs yet); anything else in work/ is not ours to delete."""
    for entry in context.config.work_root.iterdir():
        if not context.made_workdir(entry.name):
            log.warning("recover.workdir_not_ours", entry=str(entry),
                        reason="not a work dir this daemon made: left alone")
        else:
            log.info("recover.workdir_removed", workdir=str(entry))
            build.remove_workdir(entry)


def _remove_orphan_images(context: Context) -> None:
    """Remove kept images whose job is gone (forgotten while the daemon was down)."""
    folder = context.config.artifacts_dir
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        match = _KEPT_IMAGE.fullmatch(entry.name)
        if not match:
            continue
        job = context.store.get(int(match.group(1)))
        if job is None or job.artifact != str(folder / (match.group(1) + ".dd.gz")):
            entry.unlink(missing_ok=True)
            log.info("recover.image_removed", artifact=str(entry))
