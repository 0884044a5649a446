"""Moving the drop dir as the README's operator section says (stop, move, edit drop_dir, start): the
state dir keeps every job; an interrupted build follows its ISO into the new folder and is built
once under its own job; `retry` finds a failed job's ISO in the new failed/; a built job still
registering registers, and its ISO, read again in the new folder, is a duplicate moved to done/."""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso

FAILING = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "fail=the kickstart is wrong",
           "vmware-esxi.json"]
HANGING = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]


def _esxi(tmp_path: Path, salt: str) -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / f"{salt}.iso", salt=salt.encode())


def test_jobs_follow_their_isos_to_a_moved_drop_dir(tmp_path, simulator, daemon_factory):
    site = tmp_path / "site"
    config = write_config(site, simulator, build__command=FAILING)
    daemon = daemon_factory(config)
    failed_iso = drop(_esxi(tmp_path, "failed"), daemon.drop_dir)
    failed = daemon.wait_for_state(failed_iso.name, "failed")
    daemon.stop()

    write_config(site, simulator, build__command=HANGING)
    daemon = daemon_factory(config)
    queued_iso = drop(_esxi(tmp_path, "queued"), daemon.drop_dir)
    building = daemon.wait_for_state(queued_iso.name, "building")
    daemon.stop()  # the interrupted build is queued again for the next start
    assert daemon.job_for(queued_iso.name)["state"] == "queued"

    moved = tmp_path / "elsewhere" / "esxi-drop"
    moved.parent.mkdir()
    os.rename(daemon.drop_dir, moved)
    write_config(site, simulator, drop_dir=str(moved))  # the template fixed, drop_dir edited
    restarted = daemon_factory(config)

    done = restarted.wait_for_state(queued_iso.name, "registered", timeout=120)
    assert done["id"] == building["id"]
    assert (moved / "done" / queued_iso.name).exists()
    assert [job["iso"] for job in restarted.jobs()].count(queued_iso.name) == 1

    retried = restarted.cli("retry", str(failed["id"]))
    assert retried.returncode == 0, retried.stderr
    again = restarted.wait_for_state(failed_iso.name, "registered", timeout=120)
    assert again["id"] == failed["id"]
    assert (moved / "done" / failed_iso.name).exists()
    assert not (moved / "failed" / failed_iso.name).exists()
    assert {job["state"] for job in restarted.jobs()} == {"registered"}


def test_a_built_job_still_registering_registers_and_its_iso_lands_in_done(tmp_path, simulator, daemon_factory):
    site = tmp_path / "site"
    config = write_config(site, simulator, maas__url="http://127.0.0.1:9/MAAS/")  # MAAS away
    daemon = daemon_factory(config)
    iso = drop(_esxi(tmp_path, "built"), daemon.drop_dir)
    built = daemon.wait_for_state(iso.name, "built")
    daemon.wait_for_registration(iso.name, "default", "pending")
    daemon.stop()

    moved = tmp_path / "elsewhere" / "esxi-drop"
    moved.parent.mkdir()
    os.rename(daemon.drop_dir, moved)
    write_config(site, simulator, drop_dir=str(moved))  # MAAS back, drop_dir edited
    restarted = daemon_factory(config)

    def settled():
        jobs = {job["id"]: job for job in restarted.jobs()}
        states = sorted(job["state"] for job in jobs.values())
        return jobs if states == ["duplicate", "registered"] and (moved / "done" / iso.name).exists() else None

    jobs = wait_for(settled, 120, "the job registered and its ISO, read again, a duplicate in done/")
    assert jobs[built["id"]]["state"] == "registered"
    [duplicate] = [job for job in jobs.values() if job["id"] != built["id"]]
    assert duplicate["state"] == "duplicate" and duplicate["iso"] == iso.name
    assert (moved / "done" / iso.name).exists() and not (moved / iso.name).exists()
