"""A failed build is no reason to refuse the ISO again: dropped again (or moved back from failed/), it
is built again; `retry` finds the ISO wherever it went, by identity; a move the store could not
record is found and recorded."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso

FAILING = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "fail=the kickstart is wrong",
           "vmware-esxi.json"]


def _esxi(tmp_path: Path, salt: str) -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / f"{salt}.iso", salt=salt.encode())


def _failed_build(tmp_path, simulator, daemon_factory, salt: str):
    """A site whose build fails; return (config, the stopped daemon, the failed job)."""
    site = tmp_path / "site"
    config = write_config(site, simulator, build__command=FAILING)
    daemon = daemon_factory(config)
    iso = drop(_esxi(tmp_path, salt), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed")
    assert "the kickstart is wrong" in job["error"]
    assert (daemon.drop_dir / "failed" / iso.name).exists()
    daemon.stop()
    write_config(site, simulator)  # the admin fixed the template
    return config, daemon, job


def _builds(daemon) -> int:
    return len([e for e in daemon.log_events() if e.get("event") == "job.building"])


def test_an_iso_moved_back_from_failed_is_built_again(tmp_path, simulator, daemon_factory):
    config, daemon, job = _failed_build(tmp_path, simulator, daemon_factory, "back")
    restarted = daemon_factory(config)
    builds_before = _builds(restarted)
    os.rename(restarted.drop_dir / "failed" / job["iso"], restarted.drop_dir / job["iso"])
    again = restarted.wait_for_state(job["iso"], "registered")
    assert again["id"] == job["id"] and len(restarted.jobs()) == 1
    assert _builds(restarted) == builds_before + 1
    assert (restarted.drop_dir / "done" / job["iso"]).exists()
    assert not (restarted.drop_dir / "failed" / f"{job['iso']}.reason.txt").exists()
    assert not (restarted.drop_dir / "done" / f"{job['iso']}.reason.txt").exists()


def test_the_same_content_dropped_again_after_a_failed_build_is_built_again(tmp_path, simulator,
                                                                            daemon_factory):
    config, daemon, job = _failed_build(tmp_path, simulator, daemon_factory, "copy")
    restarted = daemon_factory(config)
    drop(restarted.drop_dir / "failed" / job["iso"], restarted.drop_dir, "second download.iso")
    again = restarted.wait_for_state("second download.iso", "registered")
    assert again["id"] == job["id"] and again["build_attempts"] == 1
    assert [j["state"] for j in restarted.jobs()] == ["registered"]


@pytest.mark.parametrize("where", ["failed/renamed by hand.iso", "renamed by hand.iso"])
def test_retry_finds_the_iso_wherever_it_was_moved(tmp_path, simulator, daemon_factory, where):
    config, daemon, job = _failed_build(tmp_path, simulator, daemon_factory, "moved")
    os.rename(daemon.drop_dir / "failed" / job["iso"], daemon.drop_dir / where)
    result = daemon.cli("retry", str(job["id"]))
    assert result.returncode == 0, result.stderr
    assert "queued again" in result.stdout
    restarted = daemon_factory(config)
    restarted.wait_for_state(job["iso"], "registered")
    in_done = restarted.drop_dir / "done" / "renamed by hand.iso"
    # The job is registered first, then its ISO is moved and the move recorded.
    wait_for(lambda: Path(restarted.job_for(job["iso"])["iso_path"]) == in_done, 20, "the ISO's move to done/")
    assert in_done.is_file()
    assert len(restarted.jobs()) == 1


def _as_if_the_store_missed_the_move(daemon, job) -> Path:
    """The state a full state dir leaves: the ISO renamed into failed/, the store not updated."""
    stale = daemon.drop_dir / job["iso"]
    with sqlite3.connect(daemon.state_dir / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET iso_path = ? WHERE id = ?", (str(stale), job["id"]))
    assert not stale.exists()
    return stale


def test_retry_after_a_move_the_store_could_not_record(tmp_path, simulator, daemon_factory):
    config, daemon, job = _failed_build(tmp_path, simulator, daemon_factory, "unrecorded")
    _as_if_the_store_missed_the_move(daemon, job)
    result = daemon.cli("retry", str(job["id"]))
    assert result.returncode == 0, result.stderr
    restarted = daemon_factory(config)
    assert restarted.wait_for_state(job["iso"], "registered")["id"] == job["id"]


def test_a_restart_records_a_move_the_store_could_not_record(tmp_path, simulator, daemon_factory):
    config, daemon, job = _failed_build(tmp_path, simulator, daemon_factory, "recorded")
    _as_if_the_store_missed_the_move(daemon, job)
    restarted = daemon_factory(config)
    in_failed = restarted.drop_dir / "failed" / job["iso"]
    wait_for(lambda: restarted.job_for(job["iso"])["iso_path"] == str(in_failed), 20,
             "the store to say where the ISO is")
    assert restarted.job_for(job["iso"])["state"] == "failed"
