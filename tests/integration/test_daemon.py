"""The whole pipeline in one real daemon process: real inotify, real packer, real HTTP to the simulator."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal

import pytest

from tests.harness import drop, no_processes_of, wait_for, write_config
from tests.isogen import make_esxi_iso, make_ubuntu_iso

BUILD = 22380479


@pytest.fixture
def esxi_iso(tmp_path):
    (tmp_path / "src").mkdir()
    return make_esxi_iso(tmp_path / "src" / f"VMware-VMvisor-Installer-8.0U2-{BUILD}.x86_64.iso",
                         version="8.0U2", build=BUILD, payload_size=1 << 20)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_dropped_iso_becomes_a_verified_boot_resource(tmp_path, simulator, daemon_factory, esxi_iso):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    dropped = drop(esxi_iso, daemon.drop_dir)
    job = daemon.wait_for_state(dropped.name, "registered", timeout=60)

    name = f"esxi/8.0.2-{BUILD}"
    assert job["resource"] == name
    [resource] = [r for r in simulator.resources() if r["name"] == name]
    [newest_set] = resource["sets"].values()
    [image] = newest_set["files"].values()
    assert image["filetype"] == "root-dd.gz" and image["complete"]  # what MAAS stores for ddgz
    held = simulator.file_bytes(name)
    assert image["sha256"] == _sha256(held)
    # The bytes MAAS holds are the artifact built from this very ISO.
    disk = gzip.decompress(held)
    assert f"iso_sha256={_sha256(esxi_iso.read_bytes())}".encode() in disk
    done = daemon.drop_dir / "done" / dropped.name
    assert done.read_bytes() == esxi_iso.read_bytes()
    assert not dropped.exists()
    wait_for(lambda: list((daemon.state_dir / "work").iterdir()) == [], 10, "the work dir to go once registered")
    registered = [e for e in daemon.log_events() if e.get("event") == "register.done"]
    assert registered and registered[0]["sha256"] == image["sha256"]

    status = daemon.cli("status", "--json")
    assert status.returncode == 0 and f'"resource": "{name}"' in status.stdout


def test_same_iso_twice_builds_once(tmp_path, simulator, daemon_factory, esxi_iso):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    drop(esxi_iso, daemon.drop_dir, "first.iso")
    daemon.wait_for_state("first.iso", "registered")
    drop(esxi_iso, daemon.drop_dir, "second copy.iso")
    duplicate = daemon.wait_for_state("second copy.iso", "duplicate")
    assert "first.iso" in duplicate["error"]
    assert (daemon.drop_dir / "done" / "second copy.iso").exists()
    assert (daemon.drop_dir / "done" / "second copy.iso.reason.txt").exists()
    builds = [e for e in daemon.log_events() if e.get("event") == "job.building"]
    assert len(builds) == 1
    assert len([r for r in simulator.resources() if r["name"].startswith("esxi/")]) == 1


def test_bad_input_is_rejected_with_a_reason(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    ubuntu = make_ubuntu_iso(tmp_path / "ubuntu-24.04-live-server-amd64.iso")
    drop(ubuntu, daemon.drop_dir, "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")
    notes = tmp_path / "notes.iso"
    notes.write_text("this is a text file, not an ISO\n")
    drop(notes, daemon.drop_dir)
    for name in ("VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso", "notes.iso"):
        job = daemon.wait_for_state(name, "rejected")
        moved = daemon.drop_dir / "rejected" / name
        assert moved.exists(), f"{name} must be kept in rejected/"
        reason = (daemon.drop_dir / "rejected" / f"{name}.reason.txt").read_text()
        assert reason.splitlines()[0] == job["error"]
        assert job["error"].startswith("not an ESXi installer ISO: ")
        assert "\n" not in job["error"]
    assert (daemon.drop_dir / "rejected" / "notes.iso").read_text() == notes.read_text()
    assert [r for r in simulator.resources() if r["name"].startswith("esxi/")] == []
    assert daemon.alive()


def test_failing_build_ends_failed_with_the_log_tail(tmp_path, simulator, daemon_factory, esxi_iso):
    command = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "fail=disk is on fire",
               "vmware-esxi.json"]
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__command=command))
    dropped = drop(esxi_iso, daemon.drop_dir)
    job = daemon.wait_for_state(dropped.name, "failed", timeout=60)
    assert "disk is on fire" in job["error"]
    assert (daemon.drop_dir / "failed" / dropped.name).exists()
    assert "disk is on fire" in (daemon.drop_dir / "failed" / f"{dropped.name}.reason.txt").read_text()
    logs = daemon.cli("logs", str(job["id"]))
    assert logs.returncode == 0 and "disk is on fire" in logs.stdout
    assert daemon.alive()


def test_sigterm_mid_build_stops_fast_and_loses_nothing(tmp_path, simulator, daemon_factory, esxi_iso):
    hanging = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]
    config = write_config(tmp_path / "site", simulator, build__command=hanging)
    daemon = daemon_factory(config)
    dropped = drop(esxi_iso, daemon.drop_dir)
    job = daemon.wait_for_state(dropped.name, "building")
    wait_for(lambda: no_processes_of(daemon.marker(job["id"])), 30, "the build's processes to start")
    build_log = daemon.state_dir / "logs" / f"{job['id']}.log"
    wait_for(lambda: "shape-disk: hanging" in build_log.read_text(errors="replace"), 30,
             "the build to reach its hanging step")
    took = daemon.stop(signal.SIGTERM)
    assert took < 10, f"the daemon took {took:.1f} s to stop"
    assert daemon.process.returncode == 0
    assert no_processes_of(daemon.marker(job["id"])) == []
    assert daemon.job_for(dropped.name)["state"] == "queued"
    assert dropped.exists()

    write_config(tmp_path / "site", simulator)  # the same site, now with a build that finishes
    restarted = daemon_factory(config)
    restarted.wait_for_state(dropped.name, "registered", timeout=60)
    assert (restarted.drop_dir / "done" / dropped.name).exists()


def test_runs_without_api_key_and_registers_once_it_appears(tmp_path, simulator, daemon_factory, esxi_iso):
    config = write_config(tmp_path / "site", simulator)
    key_file = tmp_path / "site" / "maas-api-key"
    key = key_file.read_text()
    key_file.unlink()
    daemon = daemon_factory(config)
    dropped = drop(esxi_iso, daemon.drop_dir)
    job = daemon.wait_for_state(dropped.name, "built")
    wait_for(lambda: "no MAAS API key" in (daemon.job_for(dropped.name)["stage"] or ""), 20,
             "the job to say it waits for the key")
    key_file.write_text(key)
    os.chmod(key_file, 0o600)
    daemon.wait_for_state(dropped.name, "registered", timeout=120)  # the key is looked for every 30 s
    assert job["id"] == daemon.job_for(dropped.name)["id"]
    assert key.strip() not in daemon.log_path.read_text()


def test_status_tells_the_admin_what_to_set_up(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, build__template_dir=str(tmp_path / "no-checkout"))
    (tmp_path / "site" / "maas-api-key").unlink()
    daemon = daemon_factory(config)
    wait_for(lambda: any(line == "READY=1" for line in daemon.notifications), 20, "READY=1")
    status = wait_for(lambda: daemon.statuses(), 10, "a status")[-1]
    assert status == (f"idle: 0 registered, 0 queued; no packer-maas template at {tmp_path / 'no-checkout'}: "
                      f"see {config}; no MAAS API key for default: see {config}")
