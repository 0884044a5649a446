"""What the daemon is doing, in one line (systemd's STATUS=) and as a table (`esxi-watcher status`)."""

from __future__ import annotations

import time
from typing import Iterable

from esxi_watcher.store import ACTIVE_STATES, Job


def status_line(counts: dict[str, int], activity: dict[str, str], problems: list[str] = (),
                newest: str | None = None) -> str:
    """Given job counts by state, what the workers do now, what the admin must still set up and the
    newest registered resource, return systemd's STATUS= text."""
    parts = [activity[worker] for worker in ("store", "builder", "registrar") if activity.get(worker)]
    if not parts:
        registered = f"{counts.get('registered', 0)} registered" + (f" (newest {newest})" if newest else "")
        idle = f"idle: {registered}, {counts.get('queued', 0)} queued"
        if counts.get("built"):
            idle += f", {counts['built']} waiting for MAAS"
        if counts.get("failed"):
            idle += f", {counts['failed']} failed"
        parts.append(idle)
    parts += [problem for problem in problems if problem not in parts]
    return "; ".join(parts)


def job_rows(jobs: Iterable[Job]) -> list[dict]:
    """The JSON form of `status --json`: one object per job."""
    rows = []
    for job in jobs:
        facts = job.facts or {}
        rows.append({
            "id": job.id, "iso": job.iso, "iso_path": job.iso_path, "sha256": job.sha256,
            "state": job.state, "stage": job.stage, "resource": job.resource,
            "resource_id": job.resource_id, "error": job.error, "version": facts.get("version"),
            "update": facts.get("update"), "build": facts.get("build"), "vendor": facts.get("vendor"),
            "build_attempts": job.build_attempts, "register_attempts": job.register_attempts,
            "duplicate_of": job.duplicate_of,
            "next_try": job.next_try if job.next_try > time.time() else None,
            "updated": job.updated,
        })
    return rows


def job_table(jobs: Iterable[Job]) -> str:
    """A plain table for people: id, state, ISO, resource or reason."""
    jobs = list(jobs)
    width = min(max([len(job.iso) for job in jobs] + [3]), 64)
    lines = [f"{'ID':>4}  {'STATE':<10}  {'ISO':<{width}}  RESOURCE / REASON"]
    for job in jobs:
        detail = job.resource or ""
        note = job.stage if job.state in ACTIVE_STATES else job.error if job.state != "registered" else None
        if note:
            detail = (detail + ": " if detail else "") + note
        iso = job.iso.replace("\n", "\\n")
        first_line = detail.splitlines()[0] if detail else ""
        lines.append(f"{job.id:>4}  {job.state:<10}  {iso[:width]:<{width}}  {first_line}")
    return "\n".join(lines)
