"""One daemon per state dir and per drop dir, folders that cannot eat each other, and recovery that
deletes only the work dirs the daemon made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.harness import ROOT, DaemonProcess, drop, wait_for, write_config
from tests.integration.test_faults import _iso, assert_registered_once


def _ready(daemon) -> None:
    wait_for(lambda: "READY=1" in daemon.notifications, 30, "the daemon to tell systemd it is ready")


def _run(config: Path, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    """`esxi-watcher run` in the foreground; a daemon that starts when it should not times out."""
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), "run"],
                                capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`esxi-watcher run` with {config} kept running") from None
    return result, time.monotonic() - started


def _refused_beside(first, config: Path, key: str) -> str:
    result, seconds = _run(config)
    assert result.returncode != 0
    assert result.stdout == ""  # not one log line: it did nothing
    [line] = result.stderr.splitlines()
    assert f"another esxi-watcher already works on {key} " in line
    assert f"pid {first.process.pid} (" in line and f"--config {first.config_path} run" in line
    assert seconds < 10
    return line


# ----- one daemon per folder ------------------------------------------------------------------

def test_a_second_daemon_on_the_same_config_refuses_and_the_first_goes_on(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    first = daemon_factory(config)
    _ready(first)
    _refused_beside(first, config, "state_dir")
    iso = drop(_iso(tmp_path, "alone"), first.drop_dir)
    assert_registered_once(simulator, first, iso)
    status = first.cli("status")  # commands that read or queue need no lock
    assert status.returncode == 0 and iso.name in status.stdout
    assert first.alive()
    assert len([r for r in simulator.requests if r["method"] == "POST" and "boot-resources" in r["path"]]) == 1


def test_a_second_daemon_sharing_only_the_drop_dir_refuses(tmp_path, simulator, daemon_factory):
    first = daemon_factory(write_config(tmp_path / "one", simulator))
    _ready(first)
    other = write_config(tmp_path / "two", simulator, drop_dir=str(first.drop_dir))
    line = _refused_beside(first, other, "drop_dir")
    assert str(first.drop_dir) in line
    assert not (tmp_path / "two" / "state" / "jobs.sqlite3").exists()


def test_a_second_daemon_sharing_only_the_state_dir_refuses(tmp_path, simulator, daemon_factory):
    first = daemon_factory(write_config(tmp_path / "one", simulator))
    _ready(first)
    other = write_config(tmp_path / "two", simulator, state_dir=str(first.state_dir))
    _refused_beside(first, other, "state_dir")
    assert first.alive()


def test_after_kill9_of_the_daemon_a_new_one_starts(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    first = daemon_factory(config)
    _ready(first)
    first.stop(signal.SIGKILL)
    second = daemon_factory(config)
    _ready(second)
    iso = drop(_iso(tmp_path, "after"), second.drop_dir)
    assert_registered_once(simulator, second, iso)


# ----- folders that cannot eat each other ------------------------------------------------------

def _site(tmp_path: Path, drop_dir: str, state_dir: str) -> Path:
    return write_config(tmp_path / "site", None, drop_dir=drop_dir, state_dir=state_dir)


@pytest.mark.parametrize("drop_dir, state_dir, key, says", [
    ("{t}/same", "{t}/same/", "drop_dir", "is the same folder as 'state_dir'"),
    ("{t}/state/work", "{t}/state", "drop_dir", "is inside 'state_dir'"),
    ("{t}/state/drop", "{t}/state", "drop_dir", "is inside 'state_dir'"),
    ("{t}/drop", "{t}/drop/state", "state_dir", "is inside 'drop_dir'"),
    ("{t}/state/x/../work", "{t}/state", "drop_dir", "is inside 'state_dir'"),
    ("{t}/other/../same", "{t}/same", "drop_dir", "is the same folder as 'state_dir'"),
    ("{t}/link/work", "{t}/real", "drop_dir", "is inside 'state_dir'"),  # link -> real
])
def test_overlapping_folders_are_refused(tmp_path, drop_dir, state_dir, key, says):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    drop_dir, state_dir = drop_dir.format(t=tmp_path), state_dir.format(t=tmp_path)
    config = _site(tmp_path, drop_dir, state_dir)
    result, _ = _run(config)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"esxi-watcher: {config}: At '{key}': ")
    assert says in line


def test_an_iso_in_a_drop_dir_under_work_survives_the_refused_start(tmp_path):
    state = tmp_path / "state"
    (state / "work").mkdir(parents=True)
    iso = state / "work" / "esxi.iso"
    iso.write_bytes(b"ISO bytes")
    result, _ = _run(_site(tmp_path, str(state / "work"), str(state)))
    assert result.returncode == 2
    assert iso.read_bytes() == b"ISO bytes"


# ----- recovery deletes only what the daemon made ----------------------------------------------

def test_recovery_leaves_what_it_did_not_make_in_work_and_removes_its_dead_work_dir(
        tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    state = Path(yaml.safe_load(config.read_text())["state_dir"])
    work = state / "work"
    (work / "admin-notes").mkdir(parents=True)
    (work / "admin-notes" / "keep.txt").write_text("mine")
    (work / "README").write_text("also mine")
    (work / "1").mkdir()  # a job number alone is not a name the daemon gives
    os.symlink("/etc", work / "etc-link")
    ours = work / DaemonProcess(config).marker(7)  # job 7 does not exist: a dead work dir of ours
    (ours / "vmware-esxi").mkdir(parents=True)
    (ours / "vmware-esxi" / "output").write_text("half a build")
    daemon = daemon_factory(config)
    _ready(daemon)
    assert not ours.exists()
    assert (work / "admin-notes" / "keep.txt").read_text() == "mine"
    assert (work / "README").read_text() == "also mine"
    assert (work / "1").is_dir() and (work / "etc-link").is_symlink()
    noted = sorted(Path(e["entry"]).name for e in daemon.log_events() if e.get("event") == "recover.workdir_not_ours")
    assert noted == ["1", "README", "admin-notes", "etc-link"]
