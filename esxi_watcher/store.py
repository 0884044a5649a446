"""The job store: one SQLite row per dropped file, the single source of truth of the daemon.

Every state change is one committed transaction, so a crash at any point leaves a state the next
start can re-enter. Only this module touches SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from esxi_watcher.errors import StoreUnavailable

QUEUED = "queued"
BUILDING = "building"
BUILT = "built"
UPLOADING = "uploading"
REGISTERED = "registered"
FAILED = "failed"
REJECTED = "rejected"
DUPLICATE = "duplicate"

STATES = (QUEUED, BUILDING, BUILT, UPLOADING, REGISTERED, FAILED, REJECTED, DUPLICATE)
FINAL_STATES = (REGISTERED, FAILED, REJECTED, DUPLICATE)
# States whose job still owns its ISO in the drop dir (and its work dir, from building on).
ACTIVE_STATES = (QUEUED, BUILDING, BUILT, UPLOADING)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    iso           TEXT NOT NULL,            -- the file name as dropped
    iso_path      TEXT NOT NULL,            -- where the file is now (drop dir, done/, failed/, ...)
    file_identity TEXT,                     -- "dev:inode:size:mtime_ns" when taken in
    sha256        TEXT,
    size          INTEGER,
    facts         TEXT,                     -- JSON of IsoFacts
    state         TEXT NOT NULL,
    stage         TEXT,                     -- human progress inside the state
    resource      TEXT,                     -- MAAS name, e.g. esxi/8.0.2-22380479
    resource_id   INTEGER,
    artifact      TEXT,                     -- path of the built .dd.gz
    error         TEXT,                     -- why it failed, was rejected, or is waiting
    failed_stage  TEXT,                     -- build or register, for retry
    duplicate_of  INTEGER,
    build_attempts    INTEGER NOT NULL DEFAULT 0,
    register_attempts INTEGER NOT NULL DEFAULT 0,
    next_try      REAL NOT NULL DEFAULT 0,
    pgid          INTEGER,                  -- process group of the running build
    created       REAL NOT NULL,
    updated       REAL NOT NULL
);
-- One live job per ISO content: the same bytes under another name become a duplicate.
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, next_try);
CREATE UNIQUE INDEX IF NOT EXISTS one_job_per_content ON jobs(sha256)
    WHERE state NOT IN ('rejected', 'duplicate') AND sha256 IS NOT NULL;
"""


@dataclass
class Job:
    id: int
    iso: str
    iso_path: str
    state: str
    created: float
    updated: float
    file_identity: str | None = None
    sha256: str | None = None
    size: int | None = None
    facts: dict | None = None
    stage: str | None = None
    resource: str | None = None
    resource_id: int | None = None
    artifact: str | None = None
    error: str | None = None
    failed_stage: str | None = None
    duplicate_of: int | None = None
    build_attempts: int = 0
    register_attempts: int = 0
    next_try: float = 0.0
    pgid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = tuple(f.name for f in fields(Job))


class JobConflict(Exception):
    """Another live job already holds this ISO content."""

    def __init__(self, existing: Job):
        self.existing = existing
        super().__init__(f"same content as job {existing.id}")


class Changes:
    """A counter of changes that threads can sleep on instead of polling: every write to the store
    bumps it, and so can anyone else with news for the daemon's loops (a new file, a stop)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.generation = 0

    def notify(self) -> None:
        with self._condition:
            self.generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float | None) -> int:
        """Sleep until the generation differs from `seen` (or the timeout); return the generation."""
        with self._condition:
            self._condition.wait_for(lambda: self.generation != seen, timeout)
            return self.generation


class JobStore:
    """SQLite-backed jobs, safe to use from several threads of one process (and several processes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.write_error: str | None = None  # why the last write failed, until one succeeds
        self._connection = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                           isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.executescript(_SCHEMA)

    @property
    def changes(self) -> Changes:
        """What this process's writers announce; made on first use (dict.setdefault is atomic)."""
        return self.__dict__.setdefault("_changes", Changes())

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _execute(self, sql: str, parameters: tuple | dict = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                cursor = self._connection.execute(sql, parameters)
            except sqlite3.OperationalError as error:
                if not sql.startswith("SELECT"):
                    self.write_error = str(error)
                raise StoreUnavailable(f"job store {self.path}: {error}") from error
            if not sql.startswith("SELECT"):
                self.write_error = None
        if not sql.startswith("SELECT"):
            self.changes.notify()
        return cursor

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["facts"] = json.loads(data["facts"]) if data["facts"] else None
        return Job(**data)

    def add(self, **values: Any) -> Job:
        """Insert a job; raise JobConflict if a live job already holds the same sha256."""
        now = time.time()
        values = {**values, "created": now, "updated": now}
        if isinstance(values.get("facts"), dict):
            values["facts"] = json.dumps(values["facts"])
        names = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        try:
            cursor = self._execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", values)
        except sqlite3.IntegrityError:
            existing = self.live_job_for(values["sha256"])
            if existing is None:
                raise
            raise JobConflict(existing) from None
        return self.get(cursor.lastrowid)

    def get(self, job_id: int) -> Job | None:
        row = self._execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def live_job_for(self, sha256: str) -> Job | None:
        row = self._execute(
            "SELECT * FROM jobs WHERE sha256 = ? AND state NOT IN ('rejected', 'duplicate')",
            (sha256,)).fetchone()
        return self._job(row) if row else None

    def update(self, job_id: int, **values: Any) -> Job:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        if "state" in values and values["state"] not in STATES:
            raise ValueError(f"unknown state {values['state']!r}")
        if isinstance(values.get("facts"), dict):
            values["facts"] = json.dumps(values["facts"])
        values["updated"] = time.time()
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        self._execute(f"UPDATE jobs SET {assignments} WHERE id = :job_id", {**values, "job_id": job_id})
        return self.get(job_id)

    def jobs(self, states: tuple[str, ...] | None = None) -> list[Job]:
        if states is None:
            rows = self._execute("SELECT * FROM jobs ORDER BY id").fetchall()
        else:
            marks = ", ".join("?" for _ in states)
            rows = self._execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id",
                                 tuple(states)).fetchall()
        return [self._job(row) for row in rows]

    def next_due(self, state: str, now: float | None = None) -> Job | None:
        """Return the oldest job in this state whose next try is due."""
        now = time.time() if now is None else now
        row = self._execute(
            "SELECT * FROM jobs WHERE state = ? AND next_try <= ? ORDER BY next_try, id LIMIT 1",
            (state, now)).fetchone()
        return self._job(row) if row else None

    def next_try_in(self, state: str, now: float | None = None) -> float | None:
        """Seconds until the earliest job in this state is due (0 if one is due now), None if none waits."""
        now = time.time() if now is None else now
        row = self._execute("SELECT MIN(next_try) AS due FROM jobs WHERE state = ?", (state,)).fetchone()
        return None if row is None or row["due"] is None else max(0.0, row["due"] - now)

    def identities_in_drop_dir(self) -> dict[str, Job]:
        """Map the file identity of every ISO a job still holds at its dropped place to its job."""
        return {job.file_identity: job for job in self.jobs(ACTIVE_STATES) if job.file_identity}

    def newest_resource(self) -> str | None:
        """The MAAS name of the most recently registered image, if any."""
        row = self._execute("SELECT resource FROM jobs WHERE state = 'registered' "
                            "ORDER BY updated DESC LIMIT 1").fetchone()
        return row["resource"] if row else None

    def counts(self) -> dict[str, int]:
        rows = self._execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {row["state"]: row["n"] for row in rows}

    def delete(self, job_id: int) -> None:
        self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs())
