"""MAAS's rules, read from its answers: how a version stores uploaded bytes, which set is newest,
which files already hold our bytes. Pure functions of MAAS's JSON (docs/design.md has the sources)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoreRules:
    """How a MAAS version stores boot-resource files, as far as uploading is concerned."""

    version: str
    large_objects: bool  # 3.4 and older: a file whose sha256 is already stored is complete at once
    shared_files: bool  # 3.8 and newer (or unknown): one on-disk file per sha256, shared by images


@dataclass(frozen=True)
class Holder:
    """A boot-resource file that holds the bytes we are about to register."""

    resource_id: int
    name: str
    architecture: str
    set_version: str
    complete: bool


def store_rules(version: str) -> StoreRules:
    """Given MAAS's version string ("3.8.0", "3.6.4-17013-g1234abc", ...), return its storage rules.

    A version we cannot read gets the strictest rules (those of 3.8).
    """
    match = re.match(r"\s*v?(\d+)\.(\d+)", version or "")
    if match is None:
        return StoreRules(version=version, large_objects=False, shared_files=True)
    major_minor = (int(match.group(1)), int(match.group(2)))
    return StoreRules(version=version, large_objects=major_minor <= (3, 4), shared_files=major_minor >= (3, 8))


def set_version_key(version: str) -> tuple[int, ...]:
    """Given a set version (YYYYMMDD or YYYYMMDD.N), return a key that sorts sets oldest first."""
    numbers = tuple(int(number) for number in re.findall(r"\d+", version))
    return numbers if numbers else (-1,)


def resource_sets(resource: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Given a resource read from MAAS, return its (version, set) pairs, newest first."""
    sets = resource.get("sets") or {}
    return sorted(sets.items(), key=lambda item: set_version_key(item[0]), reverse=True)


def set_files(resource_set: dict[str, Any]) -> list[dict[str, Any]]:
    """Given a set read from MAAS, return its files."""
    return list((resource_set.get("files") or {}).values())


def newest_set(resource: dict[str, Any], complete_only: bool = False) -> tuple[str, dict[str, Any]] | None:
    """Given a resource, return its newest (complete, if asked) set as (version, set), or None."""
    for version, resource_set in resource_sets(resource):
        if resource_set.get("complete") or not complete_only:
            return version, resource_set
    return None


def set_holds(resource_set: dict[str, Any], sha256: str) -> bool:
    """Whether the set is one file with these bytes (what we upload: one ddgz image)."""
    files = set_files(resource_set)
    return len(files) == 1 and files[0].get("sha256") == sha256


def is_ours(resource: dict[str, Any], name: str, architecture: str) -> bool:
    """Whether the resource is the uploaded image (name, architecture)."""
    return (str(resource.get("type", "")).lower() == "uploaded" and resource.get("name") == name
            and resource.get("architecture") == architecture)


def find_holders(resources: list[dict[str, Any]], sha256: str, *, skip: tuple[int, str] | None = None,
                 include_partial_of_others: bool = False, ours: int | None = None) -> list[Holder]:
    """Given resources read with their sets, return the files that hold our bytes.

    Complete files count everywhere. With include_partial_of_others, an incomplete file of another
    resource that MAAS has started receiving counts too (MAAS 3.8 would drop its partial or unsynced
    bytes). `skip` is a (resource id, set version) to leave out.
    """
    holders = []
    for resource in resources:
        for version, resource_set in resource_sets(resource):
            if skip == (resource.get("id"), version):
                continue
            for rfile in set_files(resource_set):
                if rfile.get("sha256") != sha256:
                    continue
                started = float(rfile.get("progress") or 0) > 0
                if rfile.get("complete") or (include_partial_of_others and started and resource.get("id") != ours):
                    holders.append(Holder(resource["id"], resource.get("name", "?"), resource.get("architecture", "?"),
                                          version, bool(rfile.get("complete"))))
    return holders


def held_elsewhere_message(holder: Holder, sha256: str, version: str, our_name: str) -> str:
    """The reason given when MAAS 3.8+ already holds our bytes: who holds them, what to do."""
    what = "an older set of this image" if holder.name == our_name else "another image"
    state = "" if holder.complete else " (not yet complete)"
    return (f"MAAS {version} already holds these bytes (sha256 {sha256[:12]}...) as {what}: {holder.name} "
            f"{holder.architecture}, resource {holder.resource_id}, set {holder.set_version}{state}. MAAS 3.8+ "
            f"keeps one file per sha256, and uploading it again would delete that file and break that image. "
            f"Use the image already there, or delete it first (`maas ADMIN boot-resource delete "
            f"{holder.resource_id}`), then retry.")
