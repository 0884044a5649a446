"""The daemon, by stage: `loop` (threads, main loop, signals, systemd), `startup` (folder locks,
the store), `recovery` (half-done steps after a crash), `intake_worker` (watch and take ISOs in),
`build_step`, `register_step` (one target's registrations), `retention_step` (its `maas.keep` passes,
on the same thread), `targets` (a job's registrations and
its outcome), `banners`, `activity` (the status line's slots), `context` (what every step uses)."""

from __future__ import annotations

from esxi_watcher.daemon.loop import Daemon

__all__ = ["Daemon"]
