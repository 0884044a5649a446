"""The daemon driving a real VM build: the qemu test template (TCG) boots the fake ESXi installer ISO,
the post-processor opens the disk with qemu-nbd + nbdfuse + fusefat, the image goes to MAAS."""

from __future__ import annotations

import gzip
import signal
from pathlib import Path

from tests.harness import drop, no_processes_of, wait_for, write_config
from tests.vm.installer_iso import build_installer_iso
from tests.vm.qemu_build import TCG_BUILD_COMMAND, TEMPLATE_DIR, fuse_mounts, read_partition_file

NAME = "esxi/8.0.2-22380479"
HOOKS = (TEMPLATE_DIR / "curtin" / "curtin-hooks").read_bytes()


def _site(tmp_path: Path, simulator, **overrides):
    settings = {"build__template_dir": str(TEMPLATE_DIR), "build__command": list(TCG_BUILD_COMMAND),
                "build__timeout": "5m", **overrides}
    return write_config(tmp_path / "site", simulator, **settings)


def _nothing_left(daemon, job_id: int, mounts_before: set[str]) -> None:
    marker = daemon.marker(job_id)
    wait_for(lambda: no_processes_of(marker) == [], 20, "the build's processes to be gone")
    assert set(fuse_mounts()) - mounts_before == set()


def test_dropped_installer_iso_is_installed_in_a_vm_and_registered(tmp_path, simulator, daemon_factory):
    iso = build_installer_iso(tmp_path / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")
    daemon = daemon_factory(_site(tmp_path, simulator))
    drop(iso, daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "registered", timeout=240)
    assert job["resource"] == NAME
    artifact = tmp_path / "registered.dd.gz"
    artifact.write_bytes(simulator.file_bytes(NAME))
    assert read_partition_file(artifact, "curtin/curtin-hooks") == HOOKS
    with gzip.open(artifact) as disk:  # the installer wrote what the typed boot command said
        assert b"ks=cdrom:/KS.CFG" in disk.read(4096)
    stages = [e["stage"] for e in daemon.log_events() if e.get("event") == "job.stage"]
    assert "installing" in stages and "compressing" in stages


def test_hanging_installer_fails_at_the_timeout_with_the_console_and_leaves_nothing(
        tmp_path, simulator, daemon_factory):
    mounts_before = set(fuse_mounts())
    iso = build_installer_iso(tmp_path / "hang.iso", variant="hang")
    daemon = daemon_factory(_site(tmp_path, simulator, build__timeout="40s"))
    drop(iso, daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed", timeout=120)
    assert "timed out after 40s" in job["error"]
    assert "serial console, last lines:" in job["error"] and "installer: writing disk" in job["error"]
    assert (daemon.drop_dir / "failed" / iso.name).exists()
    _nothing_left(daemon, job["id"], mounts_before)
    wait_for(lambda: list((daemon.state_dir / "work").iterdir()) == [], 20, "the work dir to go")


def test_installer_error_is_the_first_thing_the_reason_says(tmp_path, simulator, daemon_factory):
    iso = build_installer_iso(tmp_path / "error.iso", variant="error")
    daemon = daemon_factory(_site(tmp_path, simulator, build__timeout="40s"))
    drop(iso, daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed", timeout=120)
    assert job["error"].startswith("installer error: An error has occurred")


def test_kill9_mid_install_is_cleaned_on_restart_and_completes(tmp_path, simulator, daemon_factory):
    mounts_before = set(fuse_mounts())
    iso = build_installer_iso(tmp_path / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")
    config = _site(tmp_path, simulator)
    daemon = daemon_factory(config)
    drop(iso, daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "building")
    # The stage as `status` shows it: "<minutes> min, <stage>".
    wait_for(lambda: ((daemon.job_for(iso.name) or {}).get("stage") or "").endswith(("boot command typed", "installing")),
             120, "the VM to boot")
    daemon.stop(signal.SIGKILL)
    assert no_processes_of(daemon.marker(job["id"])), "qemu outlives the killed daemon"
    restarted = daemon_factory(config)
    restarted.wait_for_state(iso.name, "registered", timeout=240)
    artifact = tmp_path / "registered.dd.gz"
    artifact.write_bytes(simulator.file_bytes(NAME))
    assert read_partition_file(artifact, "curtin/curtin-hooks") == HOOKS
    _nothing_left(restarted, job["id"], mounts_before)


def test_kvm_template_waits_with_a_reason_instead_of_hanging(tmp_path, simulator, daemon_factory):
    iso = build_installer_iso(tmp_path / "kvm.iso")
    # The template's own default accelerator is kvm: the daemon's usual command, no TCG override.
    daemon = daemon_factory(_site(tmp_path, simulator, build__command=None))
    drop(iso, daemon.drop_dir)
    wait_for(lambda: "KVM cannot run guests on this host" in ((daemon.job_for(iso.name) or {}).get("error") or ""),
             60, "the job to say KVM cannot run guests")
    job = daemon.job_for(iso.name)
    assert job["state"] == "queued" and job["stage"] == "waiting for KVM"
    # STATUS= is sent once per main-loop tick, so it may follow the store by a moment.
    wait_for(lambda: any("KVM cannot run guests" in status for status in daemon.statuses()),
             10, "the status line to say KVM cannot run guests")
    assert no_processes_of(daemon.marker(job["id"])) == []  # no build was started
