"""The job store: one live job per content, state changes that survive reopening."""

from __future__ import annotations

import pytest

from esxi_watcher.store import BUILT, DUPLICATE, QUEUED, REJECTED, JobConflict, JobStore


def test_one_live_job_per_content(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    first = store.add(state=QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="ab" * 32)
    with pytest.raises(JobConflict) as conflict:
        store.add(state=QUEUED, iso="b.iso", iso_path="/d/b.iso", sha256="ab" * 32)
    assert conflict.value.existing.id == first.id
    duplicate = store.add(state=DUPLICATE, iso="b.iso", iso_path="/d/b.iso", sha256="ab" * 32,
                          duplicate_of=first.id)
    rejected = store.add(state=REJECTED, iso="c.iso", iso_path="/d/c.iso", error="not ESXi")
    assert [job.state for job in store.jobs()] == [QUEUED, DUPLICATE, REJECTED]
    assert duplicate.duplicate_of == first.id and rejected.sha256 is None


def test_state_survives_reopening_and_due_order(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    job = store.add(state=QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="1" * 64,
                    facts={"version": "8.0.2"})
    later = store.add(state=QUEUED, iso="b.iso", iso_path="/d/b.iso", sha256="2" * 64)
    store.update(job.id, next_try=10**12)
    assert store.next_due(QUEUED).id == later.id
    store.update(later.id, state=BUILT, artifact="/w/x.dd.gz")
    store.close()
    reopened = JobStore(path)
    assert reopened.get(job.id).facts == {"version": "8.0.2"}
    assert reopened.get(later.id).state == BUILT
    assert reopened.counts() == {QUEUED: 1, BUILT: 1}
    with pytest.raises(ValueError):
        reopened.update(job.id, state="exploded")


def test_every_write_wakes_whoever_waits_for_changes(tmp_path):
    import threading
    import time

    store = JobStore(tmp_path / "jobs.sqlite3")
    seen = store.changes.generation
    store.jobs()  # a read is no news
    assert store.changes.wait(seen, timeout=0.01) == seen
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(store.changes.wait(seen, timeout=10)))
    waiter.start()
    started = time.monotonic()
    job = store.add(state=QUEUED, iso="a.iso", iso_path="/d/a.iso", sha256="3" * 64)
    waiter.join(timeout=10)
    assert woke and woke[0] != seen and time.monotonic() - started < 5
    store.update(job.id, next_try=time.time() + 100)
    assert 90 < store.next_try_in(QUEUED) <= 100 and store.next_try_in(BUILT) is None
