"""What every step of the daemon works with: the store, the configuration, the stop signal."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from esxi_watcher import outcomes
from esxi_watcher.config import DEFAULT_CONFIG_PATH, Config
from esxi_watcher.store import JobStore


def instance_of(config: Config) -> str:
    """Given a configuration, return what marks this daemon's builds: unique per state dir, so that
    crash recovery only ever touches builds of this daemon (ESXI_WATCHER_JOB=<instance>-<job>)."""
    return hashlib.sha256(str(config.state_dir).encode()).hexdigest()[:8]


@dataclass
class Context:
    store: JobStore
    # Replaced as a whole by the main loop on SIGHUP (its only writer); a step reads it once per job.
    config: Config
    stop_event: threading.Event
    config_path: Path | None = None
    mover: outcomes.Mover = field(init=False)
    instance: str = field(init=False)
    # Held while a job's outcome is decided from its registrations and its ISO moved.
    outcome_lock: threading.Lock = field(default_factory=threading.Lock)
    # When each target's next retention pass is due (time.time()); a target not in it: now.
    retention_next: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mover = outcomes.Mover(self.config.drop_dir)
        self.instance = instance_of(self.config)

    @property
    def where(self) -> str:
        """The configuration file, for messages that send the admin there."""
        return str(self.config_path or DEFAULT_CONFIG_PATH)

    def marker(self, job_id: int) -> str:
        return f"{self.instance}-{job_id}"

    def workdir(self, job_id: int) -> Path:
        return self.config.work_root / self.marker(job_id)

    def made_workdir(self, name: str) -> bool:
        """Whether a name in work/ is one this daemon gives its work dirs (`<instance>-<job>`)."""
        instance, dash, job = name.partition("-")
        return instance == self.instance and bool(dash) and job.isascii() and job.isdigit()

    def artifact_path(self, job_id: int) -> Path:
        return self.config.artifacts_dir / f"{job_id}.dd.gz"
