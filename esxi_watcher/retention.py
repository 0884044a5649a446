"""Retention (`maas.keep`): which images of a target are past the count to keep, and what may be
done about each in MAAS. Pure functions of the store's registrations and MAAS's JSON; the daemon's
step (daemon/retention_step.py) reads MAAS, deletes and records.

The rules (docs/design.md has their sources in MAAS):

- a release line is (major, minor, vendor): 7.0 stock, 7.0 Dell and 8.0 are three lines;
- within a line, images are newest by version, then build, then job (the order they were taken in);
  only images registered (complete in MAAS) count, so an older image stays until a newer one is
  complete;
- a resource is deleted only if this daemon's upload created it and every set in it is an image
  retention removes (MAAS has no API that deletes one set of a resource), and never while MAAS
  reports it deployed within keep_deployed_within (`last_deployed`, MAAS 3.4 and newer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable


@dataclass(frozen=True)
class Image:
    """One image registered on one target, as retention sees it."""

    job: int
    resource: str  # the MAAS name
    resource_id: int | None
    set_version: str | None
    facts: dict

    @property
    def line(self) -> tuple[int, int, str]:
        return release_line(self.facts)


@dataclass(frozen=True)
class LinePlan:
    """A release line on one target: the images kept (newest first) and the older ones past `keep`."""

    line: tuple[int, int, str]
    kept: list[Image]
    older: list[Image]


@dataclass(frozen=True)
class Verdict:
    """What retention does about the due images of one MAAS resource: `delete` it, or leave it
    because `gone` (it, or the set, is not in MAAS any more) or `kept` (why it stays)."""

    action: str  # "delete", "gone", "kept"
    reason: str


def release_line(facts: dict) -> tuple[int, int, str]:
    """Given an ISO's facts, return its release line: (major, minor, vendor or "")."""
    return int(facts.get("major") or 0), int(facts.get("minor") or 0), str(facts.get("vendor") or "")


def line_label(line: tuple[int, int, str]) -> str:
    """Given a release line, return how people name it: "ESXi 7.0", "ESXi 8.0 (Dell)"."""
    major, minor, vendor = line
    return f"ESXi {major}.{minor}" + (f" ({vendor})" if vendor else "")


def newness(image: Image) -> tuple[tuple[int, ...], int, int]:
    """Given an image, return a key that sorts images of a line oldest first: version (with ESXi 9's
    fourth part), build, then job id."""
    facts = image.facts
    version = tuple(int(part) for part in re.findall(r"\d+", str(facts.get("version") or "")))
    level = facts.get("level")
    if level is not None and str(level).isdigit():
        version += (int(level),)
    return version, int(facts.get("build") or 0), image.job


def plan(images: Iterable[Image], keep: int) -> list[LinePlan]:
    """Given a target's registered images and how many to keep per line, return every line's plan,
    in line order. The jobs whose sets one MAAS resource holds (an ISO built again after its template
    changed, or by `rebuild`: same name, a new set) count as one image, as new as the newest of them."""
    lines: dict[tuple[int, int, str], dict[int | None, list[Image]]] = {}
    for image in images:
        lines.setdefault(image.line, {}).setdefault(image.resource_id, []).append(image)
    plans = []
    for line in sorted(lines):
        resources = [sorted(jobs, key=newness, reverse=True) for jobs in lines[line].values()]
        resources.sort(key=lambda jobs: newness(jobs[0]), reverse=True)
        plans.append(LinePlan(line=line, kept=[image for jobs in resources[:keep] for image in jobs],
                              older=[image for jobs in resources[keep:] for image in jobs]))
    return plans


def holds_complete(resource: dict[str, Any] | None, image: Image) -> bool:
    """Whether MAAS's resource (None: not found) is the image's and its set is complete."""
    if resource is None or resource.get("name") != image.resource:
        return False
    resource_set = (resource.get("sets") or {}).get(image.set_version)
    return bool(resource_set and resource_set.get("complete"))


def deployed_at(value: Any) -> datetime | None:
    """Given MAAS's `last_deployed` (Django's JSON: "2026-11-30T10:00:00.123Z", an offset, or no zone
    for UTC), return it as an aware UTC datetime; None when MAAS gives none. Raise ValueError when
    it cannot be read."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def deployed_recently(resource: dict[str, Any], now: datetime, window: float) -> str | None:
    """Given a resource read from MAAS, return why it counts as deployed within `window` seconds
    of `now` (a last_deployed that cannot be read counts), else None."""
    value = resource.get("last_deployed")
    try:
        moment = deployed_at(value)
    except ValueError:
        return f"MAAS reports a last deployment this daemon cannot read ({str(value)[:40]!r})"
    if moment is None or now - moment >= timedelta(seconds=window):
        return None
    return f"MAAS reports it deployed at {moment:%Y-%m-%d %H:%M} UTC, within keep_deployed_within ({_span(window)})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def judge(resource: dict[str, Any] | None, resource_id: int, due: list[Image], created: bool, now: datetime,
          window: float) -> Verdict:
    """Given a MAAS resource (None: not found), the due images whose sets it holds, whether this
    daemon's upload created it, the time and keep_deployed_within, return what to do about it."""
    names = sorted({image.resource for image in due})
    if resource is None:
        return Verdict("gone", f"resource {resource_id} ({', '.join(names)}) was already gone from MAAS")
    if resource.get("name") not in names:
        return Verdict("gone", f"resource {resource_id} is now {resource.get('name')!r} in MAAS, not "
                               f"{', '.join(names)}: the image was already gone")
    deployed = deployed_recently(resource, now, window)
    if deployed is not None:
        return Verdict("kept", deployed)
    if not created:
        return Verdict("kept", f"resource {resource_id} was not created by esxi-watcher (its name was in MAAS "
                               f"before the upload): never deleted")
    other = blocking_set(resource, {image.set_version for image in due})
    if other is not None:
        return Verdict("kept", f"resource {resource_id} also holds set {other} of an image that is kept or not "
                               f"ours, and MAAS has no API to delete one set of a resource")
    return Verdict("delete", "")


def blocking_set(resource: dict[str, Any], due_versions: set[str | None]) -> str | None:
    """Given a resource and the set versions of due images in it, return the version of a set that
    forbids deleting the resource (a complete set not due, or an upload under way: the newest set,
    incomplete and not due), else None. Older incomplete sets are abandoned uploads, usable by nobody."""
    sets = resource.get("sets") or {}
    newest = max(sets, key=_version_key, default=None)
    for version, resource_set in sets.items():
        if version in due_versions:
            continue
        if resource_set.get("complete") or version == newest:
            return version
    return None


def missing_sets(resource: dict[str, Any] | None, due: list[Image]) -> list[Image]:
    """Given a resource read from MAAS, return the due images whose set it does not hold any more."""
    if resource is None:
        return []
    sets = resource.get("sets") or {}
    return [image for image in due if image.set_version not in sets]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(number) for number in re.findall(r"\d+", version)) or (-1,)


def removal_text(image: Image, resource_id: int, line_plan: LinePlan, keep: int, target: str,
                 gone: str | None = None) -> str:
    """Given an image retention removed and why, return the text the store keeps (and `show`
    prints): "deleted resource 12 (esxi/7.0.3-19482537 set 20260101): keep 1 of ESXi 7.0 on site-a,
    newer: esxi/7.0.3-21424296"; with `gone`, why nothing had to be deleted."""
    what = f"{image.resource} set {image.set_version or '?'}"
    done = f"found gone ({gone})" if gone else f"deleted resource {resource_id} ({what})"
    newer = ", ".join(dict.fromkeys(kept.resource for kept in line_plan.kept))
    return f"{done}: keep {keep} of {line_label(line_plan.line)} on {target}, newer: {newer}"
