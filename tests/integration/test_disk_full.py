"""Disk full is a passing fault: a build that cannot fit in the state dir, or that ran out of space,
waits (queued, not counted against build.retries) with a reason, and is built once space is back.
The state dir is a small real tmpfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso


def _grow(state: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=96m", str(state)], check=True)


def _esxi(tmp_path: Path, salt: str, payload: int = 0) -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / f"{salt}.iso", salt=salt.encode(), payload_size=payload)


def test_a_build_that_cannot_fit_waits_for_space_and_runs_once_there_is_some(
        tmp_path, simulator, daemon_factory, small_state_dir):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = drop(_esxi(tmp_path, "big", payload=24 << 20), daemon.drop_dir)  # 24 MiB > 8 MiB of state dir

    def waiting():
        job = daemon.job_for(iso.name) or {}
        return job if (job.get("stage") or "").startswith("waiting for space: no space left in the state dir") \
            else None

    job = wait_for(waiting, 60, "the job to wait for space")
    assert job["state"] == "queued" and job["build_attempts"] == 0
    assert "a build needs about" in job["stage"]
    wait_for(lambda: any(s.startswith("waiting for space: no space left") for s in daemon.statuses()), 10,
             "the status line to say so")
    assert "waiting for space" in daemon.cli("status").stdout
    assert not [e for e in daemon.log_events() if e.get("event") == "job.building"]
    _grow(small_state_dir)
    registered = daemon.wait_for_state(iso.name, "registered", timeout=90)
    assert registered["build_attempts"] == 1


def test_a_build_that_ran_out_of_space_waits_and_is_built_once_there_is_space(
        tmp_path, simulator, daemon_factory, small_state_dir):
    # A build that needs 16 MiB of scratch space in its work dir (as packer-maas needs room for the
    # disk image), then runs the test template: fallocate fails for real on the 8 MiB tmpfs.
    script = tmp_path / "build-with-scratch"
    script.write_text("#!/bin/sh\nset -u\n"
                      "fallocate -l 16M scratch || exit 1\n"
                      "rm -f scratch\n"
                      "exec packer build -var \"vmware_esxi_iso_path=$1\" vmware-esxi.json\n")
    script.chmod(0o755)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__command=[str(script), "{iso}"]))
    iso = drop(_esxi(tmp_path, "scratch"), daemon.drop_dir)

    def waiting():
        job = daemon.job_for(iso.name) or {}
        return job if (job.get("stage") or "").startswith("waiting for space: the build ran out of space") \
            else None

    job = wait_for(waiting, 60, "the job to wait for space after its build ran out")
    assert job["state"] == "queued" and job["build_attempts"] == 0
    assert job["error"].startswith("the build ran out of space (No space left on device")
    assert "No space left on device" in job["error"].split("\n", 1)[1]  # the log tail follows
    _grow(small_state_dir)
    registered = daemon.wait_for_state(iso.name, "registered", timeout=90)
    assert registered["build_attempts"] == 1
