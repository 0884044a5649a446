"""A job's registrations, one per MAAS target, and the job's outcome decided from them.

A job's registrations are made when it is queued, so that MAAS names follow the order ISOs were
dropped in, and for a target added later, once for every image already built (it is kept in
state_dir/artifacts/). The job is `registered` once every configured target holds its image, and
`failed` once a target failed for good while no other one still works on it.
"""

from __future__ import annotations

import os

import structlog

from esxi_watcher.daemon.context import Context
from esxi_watcher.intake import decide_resource
from esxi_watcher.store import ACTIVE_TARGET_STATES, Job, Registration, State, Step, Target

log = structlog.get_logger(__name__)


def has_image(job: Job) -> bool:
    """Whether the job's image was built (it may have been registered or failed on a target since)."""
    return job.state in (State.BUILT, State.REGISTERED) or (
        job.state is State.FAILED and job.failed_stage is Step.REGISTER)


def plan(context: Context, job: Job) -> list[str]:
    """Make the job's registration on each configured target that has none; return those targets.

    The MAAS name is decided now, per target (intake's rule: when other bytes hold the name on
    that target, this image gets the name tagged with its sha256).
    """
    if job.sha256 is None or not (job.state in (State.QUEUED, State.BUILDING) or has_image(job)):
        return []
    store = context.store
    planned = {record.target for record in store.registrations(job.id)}
    made = []
    for target in context.config.targets:
        if target.name in planned:
            continue
        if has_image(job) and not (job.artifact and os.path.exists(job.artifact)):
            log.warning("target.image_not_kept", job=job.id, iso=job.iso, target=target.name,
                        reason="its image is not kept (built before images were kept, or removed by maas.keep from "
                               "every target): `esxi-watcher rebuild` builds it again")
            continue
        resource = decide_resource(store, target, job.facts, job.sha256)
        if store.add_registration(job.id, target.name, resource):
            log.info("target.planned", job=job.id, iso=job.iso, target=target.name, resource=resource)
            made.append(target.name)
    if made and has_image(job):
        settle(context, job.id)
    return made


def plan_all(context: Context) -> None:
    """Plan every job on every configured target (at start and after a reload: a target may be new),
    and decide every built job's outcome again (a target may be gone)."""
    states = (State.QUEUED, State.BUILDING, State.BUILT, State.REGISTERED, State.FAILED)
    names = [target.name for target in context.config.targets]
    for job in context.store.jobs_missing_a_registration(states, names):  # not the whole history
        plan(context, job)
    for job in context.store.jobs((State.BUILT,)) + context.store.jobs_failed_at(Step.REGISTER):
        settle(context, job.id)


def settle(context: Context, job_id: int) -> Job | None:
    """Decide the job's state from its registrations on the configured targets; move its ISO out of
    the drop dir once that state is final. Return the job as stored."""
    store = context.store
    with context.outcome_lock:
        job = store.get(job_id)
        if job is None or not has_image(job):
            return job
        names = {target.name for target in context.config.targets}
        records = [record for record in store.registrations(job_id) if record.target in names]
        if not records:
            return job
        if any(record.state in ACTIVE_TARGET_STATES for record in records):
            if job.state is not State.BUILT:
                job = store.update(job_id, state=State.BUILT, stage="registering", error=None, failed_stage=None)
            return job
        failed = [record for record in records if record.state is Target.FAILED]
        if failed:
            return _failed(context, job, failed)
        return _registered(context, job, records)


def _failed(context: Context, job: Job, failed: list[Registration]) -> Job:
    reason = "; ".join(f"MAAS {record.target}: {record.error}" for record in failed)
    if job.state is not State.FAILED or job.error != reason:
        job = context.store.update(job.id, state=State.FAILED, failed_stage=Step.REGISTER, error=reason, stage=None)
        log.error("job.failed", job=job.id, iso=job.iso, stage=Step.REGISTER, reason=reason,
                  targets=[record.target for record in failed])
    return context.mover.finish(context.store, job)


def _registered(context: Context, job: Job, records: list[Registration]) -> Job:
    if job.state is not State.REGISTERED:
        job = context.store.update(job.id, state=State.REGISTERED, stage=None, error=None, failed_stage=None)
        log.info("job.registered", job=job.id, iso=job.iso, targets=[record.target for record in records])
    return context.mover.finish(context.store, job)
