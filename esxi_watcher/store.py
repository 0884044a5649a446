"""The job store: one SQLite row per dropped file and one per (job, MAAS target) registration,
the single source of truth of the daemon.

Every state change is one committed transaction, so a crash at any point leaves a state the next
start can re-enter. Only this module touches SQLite.

Over 400 lines on purpose: the schema, its upgrade from older stores, the states and every query
stay in one file, so that what SQLite holds and how it is read can be checked in one place.
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
from enum import Enum
from typing import Any, Callable, Iterable, Iterator

from esxi_watcher.errors import StoreLocked, StoreNotADatabase, StoreUnavailable


class _Named(str, Enum):
    """A state spelled once: compares equal to its text, which is what SQLite and JSON hold."""

    def __str__(self) -> str:  # format() and str() give the text on every Python (3.12 changed it)
        return self.value

    def __hash__(self) -> int:  # as its text's, so that dicts and sets find it by either
        return str.__hash__(self)


class State(_Named):
    """Where a job is: its build, then the outcome of its registrations (one per MAAS target)."""

    QUEUED = "queued"
    BUILDING = "building"
    BUILT = "built"  # the image exists; at least one target is still registering it
    REGISTERED = "registered"  # every target holds the image
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class Step(_Named):
    """The step a failed job failed at: `retry` puts it back there."""

    BUILD = "build"
    REGISTER = "register"


class Target(_Named):
    """Where one job's registration on one MAAS target is."""

    PENDING = "pending"  # due at next_try; waiting for MAAS when `since` is set
    UPLOADING = "uploading"
    REGISTERED = "registered"
    FAILED = "failed"
    REMOVED = "removed"  # deleted from MAAS by retention (maas.keep); `removal` says why and what


FINAL_STATES = (State.REGISTERED, State.FAILED, State.REJECTED, State.DUPLICATE)
# States whose job still owns its ISO in the drop dir (and its work dir while building).
ACTIVE_STATES = (State.QUEUED, State.BUILDING, State.BUILT)
# States of a job whose image is built and kept (registrations can run, including on a new target).
IMAGE_STATES = (State.BUILT, State.REGISTERED, State.FAILED)
# Jobs that hold their content: the same bytes dropped again are a duplicate of them.
LIVE_STATES = (State.QUEUED, State.BUILDING, State.BUILT, State.REGISTERED, State.FAILED)
ACTIVE_TARGET_STATES = (Target.PENDING, Target.UPLOADING)
CHECK_TIMEOUT = 2.0  # seconds a daemon's check of the store waits for another process's lock
SCHEMA_VERSION = 3  # PRAGMA user_version: 0 = before registrations (one MAAS, in the jobs table),
# 1 = before provenance and retention, 2 = before created_resource and kept (the columns of _ADDED_COLUMNS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    iso           TEXT NOT NULL,            -- the file name as dropped
    iso_path      TEXT NOT NULL,            -- where the file is now (drop dir, done/, failed/, ...)
    file_identity TEXT,                     -- "dev:inode:size:mtime_ns" when taken in
    sha256        TEXT,
    size          INTEGER,
    facts         TEXT,                     -- JSON of IsoFacts
    state         TEXT NOT NULL,            -- State
    stage         TEXT,                     -- human progress inside the state
    artifact      TEXT,                     -- the built .dd.gz, kept in state_dir/artifacts/
    error         TEXT,                     -- why it failed, was rejected, or is waiting
    failed_stage  TEXT,                     -- Step, for retry
    duplicate_of  INTEGER,
    build_attempts    INTEGER NOT NULL DEFAULT 0,
    next_try      REAL NOT NULL DEFAULT 0,
    pgid          INTEGER,                  -- process group of the running build
    fingerprint   TEXT,                     -- of the build recipe: template, scripts, kickstart settings
    provenance    TEXT,                     -- JSON: what built the image (see provenance.py)
    created       REAL NOT NULL,
    updated       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, next_try);
-- One row per (job, MAAS target): the image built once, registered on each target.
CREATE TABLE IF NOT EXISTS registrations (
    job           INTEGER NOT NULL,
    target        TEXT NOT NULL,            -- the target's name in the configuration
    state         TEXT NOT NULL,            -- Target
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_try      REAL NOT NULL DEFAULT 0,
    since         REAL,                     -- first failure of the current wait for MAAS
    error         TEXT,                     -- why it waits or failed
    resource      TEXT NOT NULL,            -- MAAS name on this target, decided when the row is made
    resource_id   INTEGER,
    set_version   TEXT,
    created_resource INTEGER,               -- 1: our upload created the MAAS resource, 0: it was there
    removed       REAL,                     -- when retention deleted it from MAAS
    removal       TEXT,                     -- what was deleted and why
    kept          TEXT,                     -- why retention keeps it although maas.keep is exceeded
    created       REAL NOT NULL,
    updated       REAL NOT NULL,
    PRIMARY KEY (job, target)
);
CREATE INDEX IF NOT EXISTS registrations_due ON registrations(target, state, next_try);
"""

# Columns added since a table was first made: an older store gets them when it is opened.
_ADDED_COLUMNS = {
    "jobs": {"fingerprint": "TEXT", "provenance": "TEXT"},
    "registrations": {"removed": "REAL", "removal": "TEXT", "created_resource": "INTEGER", "kept": "TEXT"},
}
# One live job per ISO content and build recipe: the same bytes under another name, built the same
# way, become a duplicate; after the template or kickstart changed they are built again.
_INDEXES = """
DROP INDEX IF EXISTS one_job_per_content;
CREATE UNIQUE INDEX IF NOT EXISTS one_job_per_recipe ON jobs(sha256, COALESCE(fingerprint, ''))
    WHERE state NOT IN ('rejected', 'duplicate') AND sha256 IS NOT NULL;
"""

# A store made before registrations kept one MAAS's registration in its jobs table: each becomes
# the registration of the target `default` (what a single `maas:` mapping is called).
_FROM_VERSION_0 = """
INSERT OR IGNORE INTO registrations (job, target, state, attempts, error, resource, resource_id, created, updated)
    SELECT id, 'default',
           CASE state WHEN 'registered' THEN 'registered' WHEN 'failed' THEN 'failed' ELSE 'pending' END,
           register_attempts, CASE state WHEN 'failed' THEN error END, resource, resource_id, created, updated
    FROM jobs WHERE resource IS NOT NULL AND (state IN ('queued', 'building', 'built', 'uploading', 'registered')
                                              OR (state = 'failed' AND failed_stage = 'register'));
UPDATE jobs SET state = 'built' WHERE state = 'uploading';
"""


@dataclass
class Job:
    id: int
    iso: str
    iso_path: str
    state: State
    created: float
    updated: float
    file_identity: str | None = None
    sha256: str | None = None
    size: int | None = None
    facts: dict | None = None
    stage: str | None = None
    artifact: str | None = None
    error: str | None = None
    failed_stage: Step | None = None
    duplicate_of: int | None = None
    build_attempts: int = 0
    next_try: float = 0.0
    pgid: int | None = None
    fingerprint: str | None = None
    provenance: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Registration:
    """One job's image on one MAAS target."""

    job: int
    target: str
    state: Target
    resource: str
    created: float
    updated: float
    attempts: int = 0
    next_try: float = 0.0
    since: float | None = None
    error: str | None = None
    resource_id: int | None = None
    set_version: str | None = None
    created_resource: bool | None = None  # None: not known (registered before this was recorded)
    removed: float | None = None
    removal: str | None = None
    kept: str | None = None


_COLUMNS = tuple(f.name for f in fields(Job))
_REGISTRATION_COLUMNS = tuple(f.name for f in fields(Registration))


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
    """SQLite-backed jobs, safe to use from several threads of one process (and several processes).

    The threads share one connection: every statement runs and has its rows fetched while holding
    the store's lock (a statement stepped after another thread wrote on the connection may skip or
    repeat rows), and only rows, never cursors, leave it.
    """

    def __init__(self, path: Path, timeout: float = 30.0, check: bool = False):
        """Open (or create) the store; raise StoreNotADatabase, StoreLocked or StoreUnavailable.

        An existing file is first read whole through a read-only connection: a read-write one would
        delete the -wal file of a damaged store when it closes. check=True (the daemon) also makes
        sure a write can start, so that a lock held by another process shows now, not mid-job.
        """
        self.path = Path(path)
        self._lock = threading.RLock()
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
            self._create_or_upgrade()
            if check:
                self._connection.execute("BEGIN IMMEDIATE")
                self._connection.execute("ROLLBACK")
            self._connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise self._named(error) from error

    def _create_or_upgrade(self) -> None:
        connection = self._connection
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        old_columns = {row["name"] for row in connection.execute("PRAGMA table_info(jobs)").fetchall()}
        connection.execute("BEGIN IMMEDIATE")
        try:
            _run_script(connection, _SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})").fetchall()}
                for name, kind in columns.items():
                    if name not in present:
                        connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            if "register_attempts" in old_columns:
                _run_script(connection, _FROM_VERSION_0)
            _run_script(connection, _INDEXES)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

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

    # ----- the only two ways to SQLite -----

    def _read(self, sql: str, parameters: tuple | dict = ()) -> list[sqlite3.Row]:
        """Run a SELECT and return all its rows, fetched under the lock."""
        with self._lock:
            try:
                return self._connection.execute(sql, parameters).fetchall()
            except sqlite3.DatabaseError as error:  # locked, or damaged since it was opened
                raise self._named(error) from error

    def _write(self, *statements: tuple[str, tuple | dict]) -> tuple[int, int]:
        """Run these statements as one transaction; return (lastrowid, rowcount) of the last one.
        Raise sqlite3.IntegrityError as it is (the caller knows what it means)."""
        with self._lock:
            try:
                if len(statements) > 1:
                    self._connection.execute("BEGIN IMMEDIATE")
                try:
                    for sql, parameters in statements:
                        cursor = self._connection.execute(sql, parameters)
                    if len(statements) > 1:
                        self._connection.execute("COMMIT")
                except BaseException:
                    if self._connection.in_transaction:
                        self._connection.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise
            except sqlite3.OperationalError as error:
                self.write_error = str(error)
                raise self._named(error) from error
            except sqlite3.DatabaseError as error:
                raise self._named(error) from error
            self.write_error = None
            result = (cursor.lastrowid, cursor.rowcount)
        self.changes.notify()
        return result

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = {name: row[name] for name in _COLUMNS}  # a store from before may hold more columns
        for name in _JSON_COLUMNS:
            data[name] = json.loads(data[name]) if data[name] else None
        data["state"] = State(data["state"])
        data["failed_stage"] = Step(data["failed_stage"]) if data["failed_stage"] else None
        return Job(**data)

    def _jobs(self, sql: str, parameters: tuple | dict = ()) -> list[Job]:
        return [self._job(row) for row in self._read(sql, parameters)]

    # ----- jobs -----

    def add(self, **values: Any) -> Job:
        """Insert a job; raise JobConflict if a live job already holds the same sha256."""
        now = time.time()
        values = _as_json({**values, "created": now, "updated": now})
        names = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        try:
            job_id, _ = self._write((f"INSERT INTO jobs ({names}) VALUES ({marks})", values))
        except sqlite3.IntegrityError:
            existing = self.live_job_for(values["sha256"], values.get("fingerprint"))
            if existing is None:
                raise
            raise JobConflict(existing) from None
        return self.get(job_id)

    def get(self, job_id: int) -> Job | None:
        found = self._jobs("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return found[0] if found else None

    def live_job_for(self, sha256: str, fingerprint: str | None = None) -> Job | None:
        """The live job of this ISO content built with this recipe (fingerprint), if any."""
        found = self._jobs("SELECT * FROM jobs WHERE sha256 = ? AND COALESCE(fingerprint, '') = ? "
                           "AND state NOT IN (?, ?)", (sha256, fingerprint or "", State.REJECTED, State.DUPLICATE))
        return found[0] if found else None

    def failed_build_of(self, sha256: str) -> Job | None:
        """The newest job of this ISO content whose build failed (whatever its recipe), if any."""
        found = self._jobs("SELECT * FROM jobs WHERE sha256 = ? AND state = ? AND failed_stage = ? "
                           "ORDER BY id DESC LIMIT 1", (sha256, State.FAILED, Step.BUILD))
        return found[0] if found else None

    @staticmethod
    def _checked(values: dict[str, Any], columns: tuple[str, ...], states: type[_Named]) -> dict[str, Any]:
        unknown = set(values) - set(columns)
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")
        if "state" in values:
            values["state"] = states(values["state"])  # ValueError for a state that does not exist
        return _as_json({**values, "updated": time.time()})

    def update(self, job_id: int, **values: Any) -> Job:
        values = self._checked(values, _COLUMNS, State)
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        self._write((f"UPDATE jobs SET {assignments} WHERE id = :job_id", {**values, "job_id": job_id}))
        return self.get(job_id)

    def change_provenance(self, job_id: int, change: Callable[[dict], dict]) -> Job | None:
        """Replace the job's provenance by change(provenance) as one step of this process's writers
        (the builder and each registrar add their part of it); return the job, None if it is gone."""
        with self._lock:
            job = self.get(job_id)
            if job is None:
                return None
            return self.update(job_id, provenance=change(dict(job.provenance or {})))

    def update_if(self, job_id: int, state: State, **values: Any) -> bool:
        """Update the job only if it is still in this state; return whether it was."""
        values = self._checked(values, _COLUMNS, State)
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        _, changed = self._write((f"UPDATE jobs SET {assignments} WHERE id = :job_id AND state = :expected",
                                  {**values, "job_id": job_id, "expected": state}))
        return changed == 1

    def jobs(self, states: Iterable[State] | None = None) -> list[Job]:
        if states is None:
            return self._jobs("SELECT * FROM jobs ORDER BY id")
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        return self._jobs(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)

    def jobs_to_show(self, finished: int) -> tuple[list[Job], int]:
        """Every job still at work and the newest `finished` finished ones, by id; and how many older
        finished jobs were left out (the history grows; what `status` shows must not)."""
        marks = ", ".join("?" for _ in FINAL_STATES)
        jobs = self._jobs(f"SELECT * FROM jobs WHERE state NOT IN ({marks}) OR id IN (SELECT id FROM jobs "
                          f"WHERE state IN ({marks}) ORDER BY updated DESC, id DESC LIMIT ?) ORDER BY id",
                          (*FINAL_STATES, *FINAL_STATES, finished))
        total = self._read("SELECT COUNT(*) AS n FROM jobs")[0]["n"]
        return jobs, total - len(jobs)

    def jobs_with_artifact_under(self, folder: Path) -> list[Job]:
        """Jobs whose recorded image lies under this folder."""
        prefix = str(folder).rstrip("/") + "/"
        return self._jobs("SELECT * FROM jobs WHERE substr(artifact, 1, ?) = ? ORDER BY id", (len(prefix), prefix))

    def jobs_failed_at(self, step: Step) -> list[Job]:
        return self._jobs("SELECT * FROM jobs WHERE state = ? AND failed_stage = ? ORDER BY id", (State.FAILED, step))

    def jobs_that_were_building(self) -> list[Job]:
        """Jobs building, or whose build's process group is still recorded."""
        return self._jobs("SELECT * FROM jobs WHERE state = ? OR pgid IS NOT NULL ORDER BY id", (State.BUILDING,))

    def jobs_missing_a_registration(self, states: Iterable[State], targets: Iterable[str]) -> list[Job]:
        """Jobs in these states (with content) that lack a registration on one of these targets."""
        states, targets = tuple(states), tuple(targets)
        state_marks, target_marks = ", ".join("?" for _ in states), ", ".join("?" for _ in targets)
        return self._jobs(
            f"SELECT * FROM jobs WHERE state IN ({state_marks}) AND sha256 IS NOT NULL AND "
            f"(SELECT COUNT(*) FROM registrations WHERE job = jobs.id AND target IN ({target_marks})) < ? "
            "ORDER BY id", (*states, *targets, len(targets)))

    def registrations_in(self, state: Target) -> list[Registration]:
        return self._registrations("SELECT * FROM registrations WHERE state = ? ORDER BY job, rowid", (state,))

    def registrations_of(self, job_ids: Iterable[int]) -> list[Registration]:
        """The registrations of these jobs, in the order they were made."""
        job_ids = tuple(job_ids)
        if not job_ids:
            return []
        marks = ", ".join("?" for _ in job_ids)
        return self._registrations(f"SELECT * FROM registrations WHERE job IN ({marks}) ORDER BY job, rowid",
                                   job_ids)

    def next_due(self, state: State, now: float | None = None) -> Job | None:
        """Return the oldest job in this state whose next try is due."""
        now = time.time() if now is None else now
        found = self._jobs("SELECT * FROM jobs WHERE state = ? AND next_try <= ? ORDER BY next_try, id LIMIT 1",
                           (state, now))
        return found[0] if found else None

    def next_try_in(self, state: State, now: float | None = None) -> float | None:
        """Seconds until the earliest job in this state is due (0 if one is due now), None if none waits."""
        now = time.time() if now is None else now
        [row] = self._read("SELECT MIN(next_try) AS due FROM jobs WHERE state = ?", (state,))
        return None if row["due"] is None else max(0.0, row["due"] - now)

    def identities_in_drop_dir(self, drop_dir: Path) -> dict[str, Job]:
        """Map the file identity of every file a job still holds in the drop dir, whatever its state
        (a finished job's file stays there when its move failed), to its job."""
        prefix = str(drop_dir).rstrip("/") + "/"
        jobs = self._jobs(  # directly in the drop dir: the prefix, then a name without '/'
            "SELECT * FROM jobs WHERE file_identity IS NOT NULL AND substr(iso_path, 1, ?) = ? "
            "AND instr(substr(iso_path, ?), '/') = 0 ORDER BY id",
            (len(prefix), prefix, len(prefix) + 1))
        return {job.file_identity: job for job in jobs}

    def newest_job_named(self, iso_names: tuple[str, ...]) -> Job | None:
        """The newest job whose file was dropped under one of these names (compared lower-case)."""
        named = [job for job in self.jobs() if job.iso.lower() in iso_names]  # Python's lower() knows Unicode
        return named[-1] if named else None

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    def delete(self, job_id: int) -> None:
        """Forget a job and its registrations (one transaction)."""
        self._write(("DELETE FROM registrations WHERE job = ?", (job_id,)),
                    ("DELETE FROM jobs WHERE id = ?", (job_id,)))

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs())

    # ----- registrations: one per (job, MAAS target) -----

    @staticmethod
    def _registration(row: sqlite3.Row) -> Registration:
        data = {name: row[name] for name in _REGISTRATION_COLUMNS}
        data["state"] = Target(data["state"])
        if data["created_resource"] is not None:
            data["created_resource"] = bool(data["created_resource"])
        return Registration(**data)

    def _registrations(self, sql: str, parameters: tuple | dict = ()) -> list[Registration]:
        return [self._registration(row) for row in self._read(sql, parameters)]

    def add_registration(self, job_id: int, target: str, resource: str) -> bool:
        """Make the job's registration on this target (pending) unless it has one; return whether
        it was made."""
        now = time.time()
        _, made = self._write((
            "INSERT OR IGNORE INTO registrations (job, target, state, resource, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?)", (job_id, target, Target.PENDING, resource, now, now)))
        return made == 1

    def registration(self, job_id: int, target: str) -> Registration | None:
        found = self._registrations("SELECT * FROM registrations WHERE job = ? AND target = ?", (job_id, target))
        return found[0] if found else None

    def registrations(self, job_id: int | None = None) -> list[Registration]:
        """A job's registrations (every registration when job_id is None), in the order they were made."""
        if job_id is None:
            return self._registrations("SELECT * FROM registrations ORDER BY job, rowid")
        return self._registrations("SELECT * FROM registrations WHERE job = ? ORDER BY rowid", (job_id,))

    def registrations_on(self, target: str, states: Iterable[Target]) -> list[Registration]:
        """The target's registrations in these states, by job."""
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        return self._registrations(f"SELECT * FROM registrations WHERE target = ? AND state IN ({marks}) "
                                   "ORDER BY job", (target, *states))

    def update_registration(self, job_id: int, target: str, **values: Any) -> Registration:
        values = self._checked(values, _REGISTRATION_COLUMNS, Target)
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        self._write((f"UPDATE registrations SET {assignments} WHERE job = :job_id AND target = :target",
                     {**values, "job_id": job_id, "target": target}))
        return self.registration(job_id, target)

    def next_registration_due(self, target: str, now: float | None = None) -> Registration | None:
        """The target's pending registration due first whose job's image is built."""
        now = time.time() if now is None else now
        found = self._registrations(
            "SELECT r.* FROM registrations r JOIN jobs j ON j.id = r.job WHERE r.target = ? AND r.state = ? "
            "AND r.next_try <= ? AND j.state IN (?, ?, ?) AND j.artifact IS NOT NULL "
            "ORDER BY r.next_try, r.job LIMIT 1", (target, Target.PENDING, now, *IMAGE_STATES))
        return found[0] if found else None

    def next_registration_in(self, target: str, now: float | None = None) -> float | None:
        """Seconds until the target's next registration is due (0: now), None if none waits."""
        now = time.time() if now is None else now
        [row] = self._read(
            "SELECT MIN(r.next_try) AS due FROM registrations r JOIN jobs j ON j.id = r.job WHERE r.target = ? "
            "AND r.state = ? AND j.state IN (?, ?, ?) AND j.artifact IS NOT NULL",
            (target, Target.PENDING, *IMAGE_STATES))
        return None if row["due"] is None else max(0.0, row["due"] - now)

    def waiting_registrations(self, target: str) -> list[Registration]:
        """The target's registrations waiting for MAAS (a try failed and another is planned)."""
        return self._registrations("SELECT * FROM registrations WHERE target = ? AND state = ? AND since IS NOT NULL "
                                   "ORDER BY since", (target, Target.PENDING))

    def name_holder(self, target: str, resource: str, sha256: str) -> Registration | None:
        """The registration on this target of a live job of other content that holds this MAAS name
        (one whose image retention removed holds it no longer)."""
        found = self._registrations(
            "SELECT r.* FROM registrations r JOIN jobs j ON j.id = r.job WHERE r.target = ? AND r.resource = ? "
            "AND j.sha256 IS NOT ? AND j.state NOT IN (?, ?) AND r.state != ? ORDER BY r.job LIMIT 1",
            (target, resource, sha256, State.REJECTED, State.DUPLICATE, Target.REMOVED))
        return found[0] if found else None

    def newest_resource(self) -> str | None:
        """The MAAS name of the most recently registered image, if any."""
        rows = self._read("SELECT resource FROM registrations WHERE state = ? ORDER BY updated DESC LIMIT 1",
                          (Target.REGISTERED,))
        return rows[0]["resource"] if rows else None

    # ----- figures for the metrics textfile -----

    def target_figures(self) -> dict[str, dict[str, Any]]:
        """Per target: the newest registration's time (`last_registered`, None if none), the failed
        registrations now (`failed`) and the tries made (`attempts`)."""
        rows = self._read(
            "SELECT target, MAX(CASE WHEN state = ? THEN updated END) AS last_registered, "
            "SUM(state = ?) AS failed, SUM(attempts) AS attempts FROM registrations GROUP BY target",
            (Target.REGISTERED, Target.FAILED))
        return {row["target"]: {"last_registered": row["last_registered"], "failed": row["failed"] or 0,
                                "attempts": row["attempts"] or 0} for row in rows}

    def registered_images(self) -> list[tuple[str, str | None, dict | None]]:
        """(target, the job's kept image, the job's provenance) of each image registered, including those
        retention removed since (their bytes were uploaded: a counter of them must not go down)."""
        rows = self._read("SELECT r.target, j.artifact, j.provenance FROM registrations r JOIN jobs j ON j.id = r.job "
                          "WHERE r.state IN (?, ?)", (Target.REGISTERED, Target.REMOVED))
        return [(row["target"], row["artifact"], _json_dict(row["provenance"])) for row in rows]

    def newest_provenances(self, count: int = 20) -> list[dict]:
        """The provenance of the newest jobs that have one, newest first."""
        rows = self._read("SELECT provenance FROM jobs WHERE provenance IS NOT NULL ORDER BY id DESC LIMIT ?",
                          (count,))
        return [found for found in (_json_dict(row["provenance"]) for row in rows) if found is not None]


_JSON_COLUMNS = ("facts", "provenance")


def _json_dict(text: str | None) -> dict | None:
    """Given a JSON column's text, return its dict, or None (empty, damaged, not a dict)."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """Given column values, return them with the JSON columns' dicts as JSON text."""
    return {name: json.dumps(value) if name in _JSON_COLUMNS and isinstance(value, dict) else value
            for name, value in values.items()}


def _run_script(connection: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


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
