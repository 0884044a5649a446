"""The job store: one SQLite row per dropped file, the single source of truth of the daemon.

Every state change is one committed transaction, so a crash at any point leaves a state the next
start can re-enter. Only this module touches SQLite.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from esxi_watcher.errors import StoreLocked, StoreNotADatabase, StoreUnavailable

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
CHECK_TIMEOUT = 2.0  # seconds a daemon's check of the store waits for another process's lock

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

    def __init__(self, path: Path, timeout: float = 30.0, check: bool = False):
        """Open (or create) the store; raise StoreNotADatabase, StoreLocked or StoreUnavailable.

        An existing file is first read whole through a read-only connection: a read-write one would
        delete the -wal file of a damaged store when it closes. check=True (the daemon) also makes
        sure a write can start, so that a lock held by another process shows now, not mid-job.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self.write_error: str | None = None  # why the last write failed, until one succeeds
        # The daemon waits for a locked store in its own loop (saying so), not inside SQLite.
        opening_timeout = min(timeout, CHECK_TIMEOUT) if check else timeout
        if self.path.exists():
            self._probe(opening_timeout)
        try:
            self._connection = sqlite3.connect(str(self.path), timeout=opening_timeout,
                                               check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as error:  # "unable to open database file"
            raise self._named(error) from error
        try:
            self._connection.row_factory = sqlite3.Row
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
            if check:
                self._connection.execute("BEGIN IMMEDIATE")
                self._connection.execute("ROLLBACK")
            self._connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise self._named(error) from error

    def _probe(self, timeout: float) -> None:
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        try:
            reader = sqlite3.connect(uri, uri=True, timeout=timeout)
        except sqlite3.DatabaseError as error:
            raise self._named(error) from error
        try:
            verdict = reader.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise self._named(error) from error
        finally:
            reader.close()
        if verdict != "ok":
            raise StoreNotADatabase(self.path, f"database disk image is malformed: {verdict}")

    def _named(self, error: sqlite3.DatabaseError) -> Exception:
        """Given an SQLite error, return the store error that tells the operator what it means."""
        if isinstance(error, sqlite3.OperationalError):
            if "locked" in str(error) or "busy" in str(error):
                return StoreLocked(self.path)
            return StoreUnavailable(f"job store {self.path}: {error}")
        return StoreNotADatabase(self.path, str(error))

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
                raise self._named(error) from error
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as error:  # damaged since it was opened
                raise self._named(error) from error
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

    def identities_in_drop_dir(self, drop_dir: Path) -> dict[str, Job]:
        """Map the file identity of every file a job still holds in the drop dir, whatever its state
        (a finished job's file stays there when its move failed), to its job."""
        prefix = str(drop_dir).rstrip("/") + "/"
        rows = self._execute(  # directly in the drop dir: the prefix, then a name without '/'
            "SELECT * FROM jobs WHERE file_identity IS NOT NULL AND substr(iso_path, 1, ?) = ? "
            "AND instr(substr(iso_path, ?), '/') = 0 ORDER BY id",
            (len(prefix), prefix, len(prefix) + 1)).fetchall()
        return {job.file_identity: job for job in map(self._job, rows)}

    def name_holder(self, resource: str, sha256: str) -> Job | None:
        """The live job (not rejected or duplicate) of other content that holds this MAAS name."""
        row = self._execute(
            "SELECT * FROM jobs WHERE resource = ? AND sha256 IS NOT ? "
            "AND state NOT IN ('rejected', 'duplicate') ORDER BY id LIMIT 1", (resource, sha256)).fetchone()
        return self._job(row) if row else None

    def newest_job_named(self, iso_names: tuple[str, ...]) -> Job | None:
        """The newest job whose file was dropped under one of these names (compared lower-case)."""
        named = [job for job in self.jobs() if job.iso.lower() in iso_names]  # Python's lower() knows Unicode
        return named[-1] if named else None

    def update_if(self, job_id: int, state: str, **values: Any) -> bool:
        """Update the job only if it is still in this state; return whether it was."""
        if "state" in values and values["state"] not in STATES:
            raise ValueError(f"unknown state {values['state']!r}")
        values["updated"] = time.time()
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        cursor = self._execute(f"UPDATE jobs SET {assignments} WHERE id = :job_id AND state = :expected",
                               {**values, "job_id": job_id, "expected": state})
        return cursor.rowcount == 1

    def next_try_in(self, state: str, now: float | None = None) -> float | None:
        """Seconds until the earliest job in this state is due (0 if one is due now), None if none waits."""
        now = time.time() if now is None else now
        row = self._execute("SELECT MIN(next_try) AS due FROM jobs WHERE state = ?", (state,)).fetchone()
        return None if row is None or row["due"] is None else max(0.0, row["due"] - now)

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


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename a broken store and its -wal/-shm files to <name>.broken-<YYYYmmddTHHMMSS>[-wal|-shm];
    return the new path of the store file."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.broken-{stamp}")
    number = 1
    while any(os.path.lexists(f"{target}{suffix}") for suffix in ("", "-wal", "-shm")):
        number += 1
        target = path.with_name(f"{path.name}.broken-{stamp}.{number}")
    for suffix in ("-wal", "-shm", ""):  # the store file last: while it is there, so are its companions
        if os.path.lexists(f"{path}{suffix}"):
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
    return target
