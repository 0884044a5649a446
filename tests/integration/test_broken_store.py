"""A broken or locked job store is not a restart loop: a damaged file is moved aside and the drop
dir taken in again; a locked one is waited for; the commands explain either in one line."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.harness import drop, wait_for, write_config
from tests.integration.test_faults import _iso, assert_registered_once


def _state_dir(config: Path) -> Path:
    state = Path(yaml.safe_load(config.read_text())["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    return state


def _real_store(path: Path, jobs: int) -> None:
    from esxi_watcher.store import JobStore

    store = JobStore(path)
    for number in range(jobs):
        store.add(iso=f"old-{number}.iso", iso_path=f"/nowhere/old-{number}.iso", state="rejected",
                  error="not an ESXi installer ISO: " + "x" * 200)
    store.close()


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(100))


def _truncated_to_half(path: Path) -> None:
    _real_store(path, jobs=300)
    size = path.stat().st_size
    os.truncate(path, size // 2)


class _Holder:
    """Another process holding an exclusive SQLite lock on the store (python's sqlite3, BEGIN EXCLUSIVE)."""

    def __init__(self, path: Path):
        code = ("import sqlite3, sys, time\n"
                "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "db.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n")
        self.process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=10)


@pytest.fixture
def holders():
    started: list[_Holder] = []

    def hold(path: Path) -> _Holder:
        started.append(_Holder(path))
        return started[-1]

    yield hold
    for holder in started:
        holder.release()


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("damage", [_garbage, _truncated_to_half], ids=["garbage", "truncated"])
def test_a_damaged_store_is_moved_aside_and_the_drop_dir_taken_in_again(tmp_path, simulator, daemon_factory,
                                                                         damage):
    config = write_config(tmp_path / "site", simulator)
    db = _state_dir(config) / "jobs.sqlite3"
    damage(db)
    Path(f"{db}-wal").write_bytes(b"wal of the damaged store")
    damaged = db.read_bytes()
    drop_dir = tmp_path / "site" / "drop"
    drop_dir.mkdir()
    iso = drop(_iso(tmp_path, "waiting"), drop_dir)  # dropped while the daemon was down

    daemon = daemon_factory(config)
    [moved] = wait_for(lambda: list(db.parent.glob("jobs.sqlite3.broken-*[0-9]")), 30,
                       "the damaged store to be moved aside")
    wait_for(lambda: "READY=1" in daemon.notifications, 30, "the daemon to be ready")
    assert_registered_once(simulator, daemon, iso)
    assert moved.name[len("jobs.sqlite3.broken-"):].replace("T", "").isdigit()
    assert moved.read_bytes() == damaged
    assert Path(f"{moved}-wal").read_bytes() == b"wal of the damaged store"
    [event] = [e for e in daemon.log_events() if e.get("event") == "store.moved_aside"]
    assert event["level"] == "error" and event["moved_to"] == str(moved)
    wait_for(lambda: f"moved aside to {moved.name}" in daemon.statuses()[-1], 10,
             "the status line to say the store was moved aside")
    wait_for(lambda: [n for n in simulator.notifications() if n["ident"] == "esxi-watcher-store"], 10,
             "a banner for MAAS's admins")
    [banner] = [n for n in simulator.notifications() if n["ident"] == "esxi-watcher-store"]
    assert banner["category"] == "error" and moved.name in banner["message"]
    assert daemon.cli("status").returncode == 0  # the new store works for the commands too


@pytest.mark.parametrize("damage", [_garbage, _truncated_to_half], ids=["garbage", "truncated"])
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["logs", "1"], ["retry", "1"],
                                     ["forget", "1"]])
def test_the_commands_explain_a_damaged_store_in_one_line(tmp_path, damage, command):
    config = write_config(tmp_path / "site")
    db = _state_dir(config) / "jobs.sqlite3"
    damage(db)
    result = subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), *command],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith(f"esxi-watcher: the job store {db} is not a database (")
    assert line.endswith("): the daemon moves it aside when it starts")
    assert list(db.parent.glob("*broken*")) == []  # the commands never move it themselves


def test_a_locked_store_is_waited_for_and_work_goes_on_once_it_is_free(tmp_path, simulator, daemon_factory,
                                                                       holders):
    config = write_config(tmp_path / "site", simulator)
    db = _state_dir(config) / "jobs.sqlite3"
    _real_store(db, jobs=1)
    holder = holders(db)
    daemon = daemon_factory(config)
    waiting = f"waiting: the job store {db} is locked by another process"
    wait_for(lambda: any(s.startswith(waiting) for s in daemon.statuses()), 30, "the status to say it waits")
    iso = drop(_iso(tmp_path, "locked"), daemon.drop_dir)
    assert "READY=1" in daemon.notifications  # systemd's start timeout does not kill the wait
    time.sleep(3)
    assert daemon.alive()
    assert [e["level"] for e in daemon.log_events() if e.get("event") == "store.waiting"] == ["error"]
    assert not list(db.parent.glob("*broken*"))

    forget = daemon.cli("forget", "1")
    assert forget.returncode == 1
    assert _one_line(forget) == f"esxi-watcher: the job store {db} is locked by another process: try again"

    holder.release()
    assert_registered_once(simulator, daemon, iso)
    assert daemon.job_for("old-0.iso")["state"] == "rejected"  # the same store, not a new one


def test_status_explains_a_locked_store_in_one_line(tmp_path, holders):
    config = write_config(tmp_path / "site")
    db = _state_dir(config) / "jobs.sqlite3"
    with sqlite3.connect(db) as plain:  # a rollback-journal file: a writer's lock keeps readers out
        plain.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    plain.close()
    holders(db)
    result = subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), "status"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert _one_line(result) == f"esxi-watcher: the job store {db} is locked by another process: try again"


def test_sigterm_while_waiting_for_a_locked_store_stops_at_once(tmp_path, simulator, daemon_factory, holders):
    config = write_config(tmp_path / "site", simulator)
    db = _state_dir(config) / "jobs.sqlite3"
    _real_store(db, jobs=1)
    holders(db)
    daemon = daemon_factory(config)
    wait_for(lambda: any("is locked by another process" in s for s in daemon.statuses()), 30,
             "the status to say it waits")
    assert daemon.stop(signal.SIGTERM) < 10
    assert daemon.process.returncode == 0
