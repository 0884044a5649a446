"""What the daemon is doing, in one line (systemd's STATUS=) and as a table (`esxi-watcher status`)."""

from __future__ import annotations

import time
from typing import Iterable

from esxi_watcher.store import ACTIVE_STATES, Job, Registration, State, Target


def status_line(counts: dict[str, int], activity: list[str], problems: list[str] = (),
                newest: str | None = None) -> str:
    """Given job counts by state, what the workers do now, what the admin must still set up and the
    newest registered resource, return systemd's STATUS= text."""
    parts = list(activity)
    if not parts:
        registered = f"{counts.get(State.REGISTERED, 0)} registered" + (f" (newest {newest})" if newest else "")
        idle = f"idle: {registered}, {counts.get(State.QUEUED, 0)} queued"
        if counts.get(State.BUILT):
            idle += f", {counts[State.BUILT]} registering"
        if counts.get(State.FAILED):
            idle += f", {counts[State.FAILED]} failed"
        parts.append(idle)
    parts += [problem for problem in problems if problem not in parts]
    return "; ".join(parts)


def describe_wait(record: Registration) -> str:
    """How long and why a registration waits for MAAS: 'since 14:02, 9 tries: connection refused'."""
    shown = "%H:%M" if time.time() - (record.since or 0) < 86400 else "%Y-%m-%d %H:%M"
    reason = record.error.splitlines()[0] if record.error else "no answer"
    tries = f"{record.attempts} {'try' if record.attempts == 1 else 'tries'}"
    return f"since {time.strftime(shown, time.localtime(record.since))}, {tries}: {reason}"


def registration_note(record: Registration, job_stage: str | None = None) -> str | None:
    """What a registration waits for, why it failed or was removed, in one line; None once registered.
    An upload shows how far it is when the job's stage tells (the register step records it every few %)."""
    if record.state is Target.REGISTERED:
        return None
    if record.state is Target.REMOVED:
        return f"removed: {record.removal}" if record.removal else "removed"
    if record.state is Target.UPLOADING:
        return upload_note(record, job_stage)
    if record.state is Target.FAILED:
        return f"failed: {record.error}"
    if record.since is not None:
        return f"waiting for MAAS {describe_wait(record)}"
    return record.error or "waiting for its image"


def upload_note(record: Registration, job_stage: str | None) -> str:
    """Given an uploading registration and its job's stage, return 'uploading 45% (1.2 GiB of
    2.6 GiB, ETA 1 min)', or 'uploading' when the stage is not this upload's."""
    prefix = f"uploading {record.resource} to {record.target}: "
    if job_stage and job_stage.startswith(prefix):
        return "uploading " + job_stage[len(prefix):]
    return "uploading"


def _notes(records: list[Registration], named: bool, job_stage: str | None = None) -> list[str]:
    notes = []
    for record in records:
        note = registration_note(record, job_stage)
        if note:
            notes.append(f"{record.target}: {note}" if named else note)
    return notes


def job_rows(jobs: Iterable[Job], registrations: Iterable[Registration] = ()) -> list[dict]:
    """The JSON form of `status --json`: one object per job, its registrations on each target in it.
    A job still registering gives its targets' notes as its stage and their errors as its error."""
    by_job: dict[int, list[Registration]] = {}
    for record in registrations:
        by_job.setdefault(record.job, []).append(record)
    rows = []
    for job in jobs:
        facts = job.facts or {}
        records = by_job.get(job.id, [])
        first = records[0] if records else None
        stage, error = job.stage, job.error
        if job.state is State.BUILT and records:
            stage = "; ".join(_notes(records, named=len(records) > 1, job_stage=job.stage)) or stage
            error = "; ".join(f"{r.target}: {r.error}" for r in records if r.error) or None
        rows.append({
            "id": job.id, "iso": job.iso, "iso_path": job.iso_path, "sha256": job.sha256,
            "state": job.state, "stage": stage, "resource": first.resource if first else None,
            "resource_id": first.resource_id if first else None, "error": error,
            "version": facts.get("version"), "update": facts.get("update"), "build": facts.get("build"),
            "vendor": facts.get("vendor"), "build_attempts": job.build_attempts,
            "duplicate_of": job.duplicate_of, "artifact": job.artifact,
            "next_try": job.next_try if job.next_try > time.time() else None,
            "updated": job.updated,
            "registrations": [_registration_row(record, job.stage) for record in records],
        })
    return rows


def _registration_row(record: Registration, job_stage: str | None) -> dict:
    return {"target": record.target, "state": record.state, "resource": record.resource,
            "resource_id": record.resource_id, "set_version": record.set_version, "attempts": record.attempts,
            "since": record.since, "next_try": record.next_try if record.next_try > time.time() else None,
            "error": record.error, "note": registration_note(record, job_stage),
            "created_resource": record.created_resource, "removed": record.removed,
            "removal": record.removal, "kept": record.kept, "updated": record.updated}


def job_table(jobs: Iterable[Job], registrations: Iterable[Registration] = ()) -> str:
    """A plain table for people: id, state, ISO, resource or reason; a line per target under a job
    registered on more than one."""
    jobs = list(jobs)
    by_job: dict[int, list[Registration]] = {}
    for record in registrations:
        by_job.setdefault(record.job, []).append(record)
    width = min(max([len(job.iso) for job in jobs] + [3]), 64)
    lines = [f"{'ID':>4}  {'STATE':<10}  {'ISO':<{width}}  RESOURCE / REASON"]
    for job in jobs:
        records = by_job.get(job.id, [])
        lines.append(_job_line(job, records, width))
        if len(records) > 1:
            lines += [_target_line(record, width, job.stage) for record in records]
    return "\n".join(lines)


def _job_line(job: Job, records: list[Registration], width: int) -> str:
    detail = records[0].resource if records else ""
    if job.state in (State.BUILT, State.REGISTERED) and len(records) == 1:
        note = registration_note(records[0], job.stage)  # registered: None, or why retention removed it
    elif job.state in ACTIVE_STATES:
        note = job.stage
    else:
        note = job.error if job.state is not State.REGISTERED else None
    if note:
        detail = (detail + ": " if detail else "") + note
    iso = job.iso.replace("\n", "\\n")
    first_line = detail.splitlines()[0] if detail else ""
    return f"{job.id:>4}  {job.state:<10}  {iso[:width]:<{width}}  {first_line}"


def _target_line(record: Registration, width: int, job_stage: str | None = None) -> str:
    note = registration_note(record, job_stage)
    detail = record.resource + (f": {note}" if note else "")
    return f"{'':>4}  {'':<10}  {'  ' + record.target + ' ' + str(record.state):<{width}}  {detail.splitlines()[0]}"
