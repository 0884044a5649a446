"""The job store: one live job per content, state changes that survive reopening, registrations per
MAAS target, a store from before registrations taken over, and one store shared by many threads."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import pytest

from esxi_watcher.store import JobConflict, JobStore, State, Step, Target


def test_one_live_job_per_content(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    first = store.add(state=State.QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="ab" * 32)
    with pytest.raises(JobConflict) as conflict:
        store.add(state=State.QUEUED, iso="b.iso", iso_path="/d/b.iso", sha256="ab" * 32)
    assert conflict.value.existing.id == first.id
    duplicate = store.add(state=State.DUPLICATE, iso="b.iso", iso_path="/d/b.iso", sha256="ab" * 32,
                          duplicate_of=first.id)
    rejected = store.add(state=State.REJECTED, iso="c.iso", iso_path="/d/c.iso", error="not ESXi")
    assert [job.state for job in store.jobs()] == [State.QUEUED, State.DUPLICATE, State.REJECTED]
    assert duplicate.duplicate_of == first.id and rejected.sha256 is None


def test_state_survives_reopening_and_due_order(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = store.add(state=State.QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="1" * 64,
                    facts={"version": "8.0.2"})
    later = store.add(state=State.QUEUED, iso="b.iso", iso_path="/d/b.iso", sha256="2" * 64)
    store.update(job.id, next_try=10**12)
    assert store.next_due(State.QUEUED).id == later.id
    store.update(later.id, state=State.BUILT, artifact="/w/x.dd.gz")
    store.close()
    reopened = JobStore(path)
    assert reopened.get(job.id).facts == {"version": "8.0.2"}
    assert reopened.get(later.id).state is State.BUILT
    assert reopened.counts() == {"queued": 1, "built": 1}
    with pytest.raises(ValueError):
        reopened.update(job.id, state="exploded")


def test_every_write_wakes_whoever_waits_for_changes(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    seen = store.changes.generation
    store.jobs()  # a read is no news
    assert store.changes.wait(seen, timeout=0.01) == seen
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(store.changes.wait(seen, timeout=10)))
    waiter.start()
    started = time.monotonic()
    job = store.add(state=State.QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="3" * 64)
    waiter.join(timeout=10)
    assert woke and woke[0] != seen and time.monotonic() - started < 5
    store.update(job.id, next_try=time.time() + 100)
    assert 90 < store.next_try_in(State.QUEUED) <= 100 and store.next_try_in(State.BUILT) is None


def test_registrations_are_per_target_and_due_only_once_the_image_is_built(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.add(state=State.QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="4" * 64)
    assert store.add_registration(job.id, "site-a", "esxi/8.0.2-1")
    assert store.add_registration(job.id, "site-b", "esxi/8.0.2-1")
    assert not store.add_registration(job.id, "site-a", "esxi/other")  # made once; its name stays
    assert [(r.target, r.state, r.resource) for r in store.registrations(job.id)] == [
        ("site-a", Target.PENDING, "esxi/8.0.2-1"), ("site-b", Target.PENDING, "esxi/8.0.2-1")]
    assert store.next_registration_due("site-a") is None  # nothing to upload yet
    store.update(job.id, state=State.BUILT, artifact="/state/artifacts/1.dd.gz")
    assert store.next_registration_due("site-a").job == job.id
    store.update_registration(job.id, "site-b", next_try=time.time() + 60, since=time.time(), error="refused")
    assert store.next_registration_due("site-b") is None and 50 < store.next_registration_in("site-b") <= 60
    assert [r.target for r in store.waiting_registrations("site-b")] == ["site-b"]
    other = store.add(state=State.QUEUED, iso="b.iso", iso_path="/d/b.iso", sha256="5" * 64)
    assert store.name_holder("site-a", "esxi/8.0.2-1", other.sha256).job == job.id
    assert store.name_holder("site-c", "esxi/8.0.2-1", other.sha256) is None
    assert store.name_holder("site-a", "esxi/8.0.2-1", job.sha256) is None  # the same bytes: no holder
    store.delete(job.id)
    assert store.registrations() == []


def test_a_store_from_before_registrations_is_taken_over_as_the_default_target(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, iso TEXT NOT NULL, iso_path TEXT NOT NULL,
            file_identity TEXT, sha256 TEXT, size INTEGER, facts TEXT, state TEXT NOT NULL, stage TEXT,
            resource TEXT, resource_id INTEGER, artifact TEXT, error TEXT, failed_stage TEXT,
            duplicate_of INTEGER, build_attempts INTEGER NOT NULL DEFAULT 0,
            register_attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, pgid INTEGER,
            created REAL NOT NULL, updated REAL NOT NULL);
        INSERT INTO jobs (iso, iso_path, sha256, state, resource, resource_id, created, updated)
            VALUES ('a.iso', '/d/done/a.iso', 'a', 'registered', 'esxi/8.0.2-1', 7, 1, 1);
        INSERT INTO jobs (iso, iso_path, sha256, state, resource, artifact, register_attempts, created, updated)
            VALUES ('b.iso', '/d/b.iso', 'b', 'uploading', 'esxi/8.0.2-2', '/w/b.dd.gz', 2, 1, 1);
        INSERT INTO jobs (iso, iso_path, sha256, state, resource, error, failed_stage, created, updated)
            VALUES ('c.iso', '/d/failed/c.iso', 'c', 'failed', 'esxi/8.0.2-3', 'MAAS rejected the API key',
                    'register', 1, 1);
        INSERT INTO jobs (iso, iso_path, state, error, created, updated)
            VALUES ('d.iso', '/d/rejected/d.iso', 'rejected', 'not ESXi', 1, 1);
    """)
    old.close()
    store = JobStore(path)
    assert [job.state for job in store.jobs()] == [State.REGISTERED, State.BUILT, State.FAILED, State.REJECTED]
    assert store.get(3).failed_stage is Step.REGISTER
    assert [(r.job, r.target, r.state, r.resource, r.resource_id, r.attempts, r.error)
            for r in store.registrations()] == [
        (1, "default", Target.REGISTERED, "esxi/8.0.2-1", 7, 0, None),
        (2, "default", Target.PENDING, "esxi/8.0.2-2", None, 2, None),
        (3, "default", Target.FAILED, "esxi/8.0.2-3", None, 0, "MAAS rejected the API key")]
    store.close()
    assert len(JobStore(path).registrations()) == 3  # taken over once


def test_many_threads_share_one_store_and_always_read_whole_consistent_rows(tmp_path):
    """Reads and writes from many threads on the one connection: no error, no row counted twice or
    missed (before the store fetched rows under its lock, counts() missed rows that moved)."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    total = 1500
    for number in range(total):
        store.add(state=State.QUEUED, iso=f"{number}.iso", iso_path=f"/d/{number}.iso", sha256=f"{number:064d}")
    problems: list[str] = []
    stop = threading.Event()

    def write() -> None:
        chooser = random.Random()
        try:
            while not stop.is_set():
                store.update(chooser.randint(1, total), state=chooser.choice([State.QUEUED, State.BUILT]),
                             next_try=chooser.random())
        except Exception as error:  # noqa: BLE001 - any error is the finding
            problems.append(f"writer: {error!r}")

    def read() -> None:
        try:
            for _ in range(40):
                counts = store.counts()
                if sum(counts.values()) != total:
                    problems.append(f"counts {counts} add up to {sum(counts.values())}, not {total}")
                ids = [job.id for job in store.jobs()]
                if len(ids) != total or len(set(ids)) != total:
                    problems.append(f"jobs() gave {len(ids)} rows, {len(set(ids))} distinct")
        except Exception as error:  # noqa: BLE001
            problems.append(f"reader: {error!r}")

    writers = [threading.Thread(target=write) for _ in range(4)]
    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in writers + readers:
        thread.start()
    for thread in readers:
        thread.join()
    stop.set()
    for thread in writers:
        thread.join()
    assert problems == []


def test_jobs_to_show_keeps_jobs_at_work_and_the_newest_finished(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    finished = [store.add(state=State.REJECTED, iso=f"{n}.iso", iso_path=f"/d/{n}.iso", error="x") for n in range(8)]
    at_work = store.add(state=State.QUEUED, iso="q.iso", iso_path="/d/q.iso", sha256="3" * 64)
    store.update(finished[1].id, error="touched last")  # the newest finished by its last change
    shown, older = store.jobs_to_show(finished=3)
    assert [job.id for job in shown] == sorted([finished[1].id, finished[6].id, finished[7].id, at_work.id])
    assert older == 5
    assert store.jobs_to_show(finished=100) == (store.jobs(), 0)


def test_a_version_1_store_gets_the_provenance_and_retention_columns(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = store.add(iso="a.iso", iso_path="/drop/a.iso", state=State.REGISTERED, sha256="ab" * 32)
    store.close()
    connection = sqlite3.connect(path)  # the store as version 1 left it: no new columns, old index
    connection.executescript(
        "DROP INDEX one_job_per_recipe; ALTER TABLE jobs DROP COLUMN fingerprint; "
        "ALTER TABLE jobs DROP COLUMN provenance; ALTER TABLE registrations DROP COLUMN removed; "
        "ALTER TABLE registrations DROP COLUMN removal; CREATE UNIQUE INDEX one_job_per_content ON jobs(sha256) "
        "WHERE state NOT IN ('rejected', 'duplicate') AND sha256 IS NOT NULL; PRAGMA user_version = 1;")
    connection.close()

    store = JobStore(path)
    assert store.get(job.id).fingerprint is None
    rebuilt = store.add(iso="a.iso", iso_path="/drop/a.iso", state=State.QUEUED, sha256="ab" * 32,
                        fingerprint="f1", provenance={"template": {"commit": "abc"}})
    assert store.get(rebuilt.id).provenance == {"template": {"commit": "abc"}}
    with pytest.raises(JobConflict) as conflict:
        store.add(iso="b.iso", iso_path="/drop/b.iso", state=State.QUEUED, sha256="ab" * 32, fingerprint="f1")
    assert conflict.value.existing.id == rebuilt.id
    indexes = {row[0] for row in store._read("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "one_job_per_recipe" in indexes and "one_job_per_content" not in indexes
