"""Decide from an ISO's content whether it is a VMware ESXi installer, and which version it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class IsoFacts:
    esxi: bool
    version: str | None = None  # "8.0.2"
    major: int | None = None
    minor: int | None = None
    patch: int | None = None
    update: str | None = None  # "U2", "U3d", or None for a GA release
    build: int | None = None  # 22380479
    vendor: str | None = None  # "Dell", "HPE", ... or None for a stock VMware ISO
    profile: str | None = None  # image profile name, e.g. "ESXi-8.0U2-22380479-standard"
    reason: str | None = None  # why it is not an ESXi installer (only when esxi is False)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_iso(path) -> IsoFacts:
    raise NotImplementedError  # being written: see the ISO helper's work
