"""`esxi-watcher show JOB`: what built a job's image and where it is registered, for people and as JSON."""

from __future__ import annotations

import time
from typing import Any, Iterable

from esxi_watcher.process import command_line
from esxi_watcher.store import Job, Registration


def show_dict(job: Job, registrations: Iterable[Registration]) -> dict[str, Any]:
    """Given a job and its registrations, return the stable JSON form of `show --json`: the job, its
    provenance record as stored (keys may be missing on old jobs) and one entry per target."""
    return {
        "id": job.id, "iso": job.iso, "iso_path": job.iso_path, "state": str(job.state),
        "error": job.error, "duplicate_of": job.duplicate_of, "sha256": job.sha256, "size": job.size,
        "fingerprint": job.fingerprint, "artifact": job.artifact, "created": job.created, "updated": job.updated,
        "provenance": job.provenance or {},
        "registrations": [{
            "target": record.target, "state": str(record.state), "resource": record.resource,
            "resource_id": record.resource_id, "set_version": record.set_version, "error": record.error,
            "removed": record.removed, "removal": record.removal,
        } for record in registrations],
    }


def show_text(job: Job, registrations: Iterable[Registration]) -> str:
    """Given a job and its registrations, return its provenance as aligned lines for a terminal."""
    record = job.provenance or {}
    iso = record.get("iso") or {}
    template = record.get("template") or {}
    kickstart = record.get("kickstart") or {}
    artifact = record.get("artifact") or {}
    rows: list[tuple[str, str | None]] = [
        ("job", f"{job.id} ({job.state})" + (f", a rebuild of job {record['rebuild_of']}"
                                              if record.get("rebuild_of") else "")),
        ("iso", iso.get("name") or job.iso),
        ("iso file", job.iso_path),
        ("iso sha256", iso.get("sha256") or job.sha256),
        ("iso size", _bytes(iso.get("size", job.size))),
        ("esxi", _esxi(record.get("esxi") or job.facts or {})),
        ("template", template.get("path")),
        ("git commit", _commit(template)),
        ("fingerprint", template.get("fingerprint") or job.fingerprint),
        ("kickstart", kickstart.get("file") or ("template's own" if kickstart else None)),
        ("root password", kickstart.get("root_password")),
        ("packer", record.get("packer_version")),
    ]
    rows += [("command", command_line(argv)) for argv in record.get("commands") or []]
    rows += [(_stage_label(stage), _seconds(seconds)) for stage, seconds in (record.get("durations") or {}).items()]
    rows += [("image", job.artifact), ("image size", _bytes(artifact.get("size"))),
             ("image sha256", artifact.get("sha256"))]
    if job.duplicate_of is not None or job.error:
        rows.append(("note" if job.duplicate_of is not None else "error", (job.error or "").splitlines()[0]))
    for registration in registrations:
        rows += _target_rows(registration)
    width = max(len(label) for label, value in rows if value is not None)
    return "\n".join(f"{printable(label) + ':':<{width + 1}} {printable(value)}"
                     for label, value in rows if value is not None)


def printable(text: str) -> str:
    """Given text from the store (file names come from whoever dropped them), return it with control
    characters escaped, so that nothing in it moves the cursor or recolours the terminal."""
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in str(text))


def _target_rows(record: Registration) -> list[tuple[str, str | None]]:
    where = f"{record.resource}" + (f" (id {record.resource_id}" if record.resource_id is not None else "")
    if record.set_version:
        where += f", set {record.set_version}" if record.resource_id is not None else f" (set {record.set_version}"
    if record.resource_id is not None or record.set_version:
        where += ")"
    rows: list[tuple[str, str | None]] = [(f"maas {record.target}", f"{record.state}: {where}")]
    if record.removal or record.removed:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.removed)) if record.removed else None
        rows.append(("  removed", ", ".join(part for part in (when, record.removal) if part)))
    elif record.error:
        rows.append(("  error", record.error.splitlines()[0]))
    return rows


def _stage_label(stage: str) -> str:
    """Given a key of the durations, return how people read it: 'register:site-b' -> 'registering on site-b'."""
    known = {"queued": "waited in line", "build": "build took"}
    if stage in known:
        return known[stage]
    step, colon, detail = stage.partition(":")
    if colon and step == "register":
        return f"registering on {detail} took"
    return f"  {detail}" if colon and step == "build" else f"{stage} took"


def _esxi(facts: dict) -> str | None:
    if not facts.get("version"):
        return None
    release = f"{facts['major']}.{facts['minor']}{facts.get('update') or ''}" if "major" in facts else facts["version"]
    text = f"ESXi {release} build {facts.get('build')} (version {facts['version']})"
    return text + (f", {facts['vendor']} image" if facts.get("vendor") else "")


def _commit(template: dict) -> str | None:
    if "git_commit" not in template:
        return None
    if template["git_commit"] is None:
        return "none (the template folder is not in a git checkout, or git could not tell)"
    return template["git_commit"] + (" with local changes" if template.get("git_dirty") else "")


def _bytes(size: int | None) -> str | None:
    return None if size is None else f"{size} bytes"


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

