"""A real Packer qemu build (TCG) of the test template shaped like packer-maas vmware-esxi, booting
the fake ESXi installer ISO (tests/vm): through esxi_watcher.build.run_build, as the daemon runs it."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from esxi_watcher.build import run_build
from esxi_watcher.errors import BuildFailed
from esxi_watcher.iso import inspect_iso
from esxi_watcher.progress import STAGES, BuildProgress, SerialTail, serial_tail
from tests.vm.installer_iso import INSTALLED_FILE, KICKSTART_PATH, build_installer_iso
from tests.vm.qemu_build import (
    TCG_BUILD_COMMAND, TEMPLATE_DIR, first_partition, fuse_mounts, leftover_processes,
    read_partition_file, sector, serial_log,
)

HANG_TIMEOUT = 50  # the installer reaches its endless step ~11 s after packer starts (TCG: slower under load)


class WatchedBuild:
    """Runs run_build on the qemu template, feeding a BuildProgress from Packer's lines and from the
    guest's serial console (polled in a thread, as a daemon would); records every stage seen."""

    def __init__(self, tmp_path: Path, variant: str) -> None:
        self.job_id = f"vmtest-{variant}-{uuid.uuid4().hex[:8]}"
        self.iso = build_installer_iso(tmp_path / "drop" / f"VMware-VMvisor-Installer-8.0U2-{variant}.iso",
                                       variant=variant)
        self.workdir = tmp_path / "work"
        self.log_path = tmp_path / "logs" / f"{self.job_id}.log"
        self.progress = BuildProgress()
        self.stages = [self.progress.stage]
        self.serial_lines: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._serial = SerialTail(serial_log(self.workdir))

    def run(self, timeout: float) -> Path:
        poller = threading.Thread(target=self._poll_serial, daemon=True)
        poller.start()
        try:
            return run_build(job_id=self.job_id, template_dir=TEMPLATE_DIR, command=TCG_BUILD_COMMAND,
                             artifact_name="vmware-esxi.dd.gz", iso=self.iso, workdir=self.workdir,
                             log_path=self.log_path, timeout=timeout, on_line=self._packer_line)
        finally:
            self._done.set()
            poller.join()

    def _packer_line(self, line: str) -> None:
        with self._lock:
            self._read_serial()  # what the console said came before this line
            self.progress.feed_packer(line)
            self._note_stage()

    def _poll_serial(self) -> None:
        while True:
            finished = self._done.wait(0.2)
            with self._lock:
                self._read_serial()
            if finished:
                return

    def _read_serial(self) -> None:
        for line in self._serial.read_lines():
            self.serial_lines.append(line)
            self.progress.feed_serial(line)
            self._note_stage()

    def _note_stage(self) -> None:
        if self.progress.stage != self.stages[-1]:
            self.stages.append(self.progress.stage)


def assert_nothing_left(build: WatchedBuild, mounts_before: list[str]) -> None:
    assert leftover_processes(str(build.workdir), str(build.iso), job_id=build.job_id) == []
    assert [mount for mount in fuse_mounts() if mount not in mounts_before] == []


def test_the_fake_installer_iso_passes_esxi_inspection(tmp_path):
    iso = build_installer_iso(tmp_path / "installer.iso", variant="ok", build=22380479)

    facts = inspect_iso(iso)

    assert (facts.esxi, facts.version, facts.update, facts.build) == (True, "8.0.2", "U2", 22380479)


def test_real_qemu_build_installs_the_disk_and_the_post_processor_writes_partition_1(tmp_path):
    mounts_before = fuse_mounts()
    build = WatchedBuild(tmp_path, "ok")

    started = time.monotonic()
    artifact = build.run(timeout=240)
    elapsed = time.monotonic() - started
    print(f"\nreal-VM build (packer + qemu TCG + fuse-nbd + compress): {elapsed:.1f} s")

    assert artifact == build.workdir / "vmware-esxi" / "vmware-esxi.dd.gz"
    kind, offset, size = first_partition(sector(artifact, 0))
    assert (kind, offset, size) == (0x0E, 1 << 20, 16 << 20)
    # written by the installer in the guest, from the ISO's payload
    assert read_partition_file(artifact, INSTALLED_FILE).startswith(b"installed by the esxi-watcher")
    # copied by the shell-local post-processor through qemu-nbd + nbdfuse + fusefat
    assert read_partition_file(artifact, "curtin/curtin-hooks") == \
        (TEMPLATE_DIR / "curtin" / "curtin-hooks").read_bytes()
    # the typed boot_command reached the installer's kernel command line
    assert sector(artifact, 1).rstrip(b"\0") == f"ks={KICKSTART_PATH}\n".encode()
    assert build.stages == list(STAGES), build.stages
    assert "installer: done, powering off" in build.serial_lines
    assert build.progress.installer_error is None
    assert_nothing_left(build, mounts_before)


def test_a_hanging_installer_is_killed_at_the_timeout_and_leaves_nothing(tmp_path):
    mounts_before = fuse_mounts()
    build = WatchedBuild(tmp_path, "hang")

    started = time.monotonic()
    with pytest.raises(BuildFailed) as caught:
        build.run(timeout=HANG_TIMEOUT)
    elapsed = time.monotonic() - started

    reason = str(caught.value)
    assert reason.startswith(f"build timed out after {HANG_TIMEOUT}s and was killed during packer build")
    assert "Waiting for shutdown" in reason
    assert caught.value.transient is False
    assert HANG_TIMEOUT <= elapsed < HANG_TIMEOUT + 30
    assert build.stages == ["starting", "iso loaded", "boot command typed", "installing"]
    assert serial_tail(serial_log(build.workdir), count=1) == ["installer: installing, this never ends"]
    assert build.progress.installer_error is None
    assert_nothing_left(build, mounts_before)


def test_an_installer_error_is_read_from_the_console_and_the_build_killed(tmp_path):
    mounts_before = fuse_mounts()
    build = WatchedBuild(tmp_path, "error")

    with pytest.raises(BuildFailed) as caught:
        build.run(timeout=HANG_TIMEOUT)

    assert "build timed out" in str(caught.value)
    assert build.progress.installer_error == (
        "An error has occurred while parsing the installation script: "
        f'error:{KICKSTART_PATH}:line 3: "install" requires --firstdisk or --disk.')
    assert build.progress.stage == "installing"
    assert_nothing_left(build, mounts_before)
