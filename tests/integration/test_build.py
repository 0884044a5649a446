"""The build room: work copies of the template, command choice, real Packer builds, artifacts."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from esxi_watcher.build import check_artifact, remove_workdir, run_build
from esxi_watcher.errors import BuildFailed, BuildStopped
from esxi_watcher.procfs import group_members
from tests.paths import TEMPLATES

TEST_TEMPLATE = TEMPLATES / "file-builder" / "vmware-esxi"
PACKER_BUILD = ("packer", "build", "-var", "vmware_esxi_iso_path={iso}")


def processes_marked(job_id: str) -> list[int]:
    """Given a job id, return the pids whose environment carries its ESXI_WATCHER_JOB marker."""
    marker = f"ESXI_WATCHER_JOB={job_id}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes() + b"\0"
            state = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in b"\0" + environment and state[state.rfind(")") + 2] not in "ZX":
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def iso(tmp_path) -> Path:
    path = tmp_path / "drop" / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso"
    path.parent.mkdir()
    path.write_bytes(os.urandom(4096))
    return path


def build(tmp_path: Path, iso: Path, job_id: str | None = None, **options) -> Path:
    options.setdefault("command", None)
    options.setdefault("artifact_name", "vmware-esxi.dd.gz")
    options.setdefault("timeout", 60)
    options.setdefault("template_dir", TEST_TEMPLATE)
    return run_build(job_id=job_id or uuid.uuid4().hex, iso=iso, workdir=tmp_path / "work",
                     log_path=tmp_path / "logs" / "job.log", **options)


# run_build with the real packer ------------------------------------------------------------------

def test_real_build_writes_a_complete_gzip_that_depends_on_the_iso(tmp_path, iso):
    lines: list[str] = []
    started: list[int] = []

    artifact = build(tmp_path, iso, on_line=lines.append, on_start=started.append)

    assert artifact == tmp_path / "work" / "vmware-esxi" / "vmware-esxi.dd.gz"
    check_artifact(artifact)
    disk = gzip.decompress(artifact.read_bytes())
    assert disk.startswith(b"esxi-watcher test disk\n")
    assert f"iso={iso}\n".encode() in disk
    assert f"iso_sha256={hashlib.sha256(iso.read_bytes()).hexdigest()}\n".encode() in disk
    assert any("compressed artifacts in: vmware-esxi.dd.gz" in line for line in lines)
    assert len(started) == 1
    assert "packer build -var vmware_esxi_iso_path=" in (tmp_path / "logs" / "job.log").read_text()
    assert not (TEST_TEMPLATE / "output-qemu").exists()
    assert not (TEST_TEMPLATE / "vmware-esxi.dd.gz").exists()


def test_different_isos_give_different_artifacts(tmp_path, iso):
    other = iso.with_name("other.iso")
    other.write_bytes(os.urandom(4096))

    first = gzip.decompress(build(tmp_path / "a", iso).read_bytes())
    second = gzip.decompress(build(tmp_path / "b", other).read_bytes())

    assert first != second


def test_a_failing_build_reports_the_last_lines_of_its_log(tmp_path, iso):
    command = PACKER_BUILD + ("-var", "fail=the disk image is gone", "vmware-esxi.json")

    with pytest.raises(BuildFailed) as caught:
        build(tmp_path, iso, command=command)

    reason = str(caught.value)
    assert reason.startswith("packer build exited 1; last lines of ")
    assert "shape-disk: cannot open the disk: the disk image is gone" in reason
    assert reason.splitlines()[-1] == "==> Builds finished but no artifacts were created."
    assert caught.value.transient is False
    assert type(caught.value) is BuildFailed


def test_an_nbd_failure_is_transient(tmp_path, iso):
    command = PACKER_BUILD + ("-var", "fail=qemu-nbd: Failed to set NBD socket", "vmware-esxi.json")

    with pytest.raises(BuildFailed) as caught:
        build(tmp_path, iso, command=command)

    assert caught.value.transient is True


def test_a_hanging_build_is_killed_at_the_timeout_with_its_whole_group(tmp_path, iso):
    job_id = uuid.uuid4().hex
    started: list[int] = []
    command = PACKER_BUILD + ("-var", "hang=1", "vmware-esxi.json")

    before = time.monotonic()
    with pytest.raises(BuildFailed) as caught:
        build(tmp_path, iso, job_id, command=command, timeout=3, on_start=started.append)
    elapsed = time.monotonic() - before

    reason = str(caught.value)
    assert reason.startswith("build timed out after 3s and was killed during packer build")
    assert "shape-disk: hanging" in reason
    assert caught.value.transient is False
    assert 3 <= elapsed < 15
    assert group_members(started[0]) == []
    assert processes_marked(job_id) == []


def test_the_marker_is_in_the_environment_of_the_builds_processes(tmp_path, iso):
    job_id = uuid.uuid4().hex
    seen_while_running: list[list[int]] = []
    stop = threading.Event()

    def watch(line: str) -> None:
        if "shape-disk: hanging" in line:
            seen_while_running.append(processes_marked(job_id))
            stop.set()

    command = PACKER_BUILD + ("-var", "hang=1", "vmware-esxi.json")
    with pytest.raises(BuildStopped) as caught:
        build(tmp_path, iso, job_id, command=command, on_line=watch, stop_event=stop)

    # packer, its plugins, the shell-local shell, the script and its two sleeps
    assert len(seen_while_running[0]) >= 5
    assert caught.value.transient is True
    assert "was stopped" in str(caught.value)
    assert processes_marked(job_id) == []


def test_a_build_that_writes_no_artifact_fails(tmp_path, iso):
    with pytest.raises(BuildFailed) as caught:
        build(tmp_path, iso, artifact_name="elsewhere.dd.gz")

    reason = str(caught.value)
    assert reason.startswith("the build exited 0 but artifact ")
    assert "elsewhere.dd.gz was not written" in reason
    assert "compressed artifacts in: vmware-esxi.dd.gz" in reason
    assert caught.value.transient is False


def test_a_missing_build_program_is_a_build_failure(tmp_path, iso):
    with pytest.raises(BuildFailed, match="cannot run no-such-builder: .*is it installed"):
        build(tmp_path, iso, command=("no-such-builder", "{iso}"))


def test_a_vanished_iso_is_a_build_failure(tmp_path):
    with pytest.raises(BuildFailed, match="the ISO .*gone.iso is gone"):
        build(tmp_path, tmp_path / "gone.iso")


def test_check_artifact_accepts_gzip_written_by_the_gzip_tool(tmp_path):
    raw = tmp_path / "disk"
    raw.write_bytes(os.urandom(100_000))
    subprocess.run(["gzip", "-k", str(raw)], check=True)

    check_artifact(tmp_path / "disk.gz")


def test_remove_workdir_reports_a_mount_inside_and_leaves_it_alone(tmp_path):
    workdir = tmp_path / "work"
    mount_point = workdir / "tmp" / "packer maas"  # spaces are escaped in mountinfo
    mount_point.mkdir(parents=True)
    (workdir / "other").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)], check=True)
    try:
        (mount_point / "inside").write_text("someone else's")

        left = remove_workdir(workdir)

        assert left == [mount_point]
        assert (mount_point / "inside").read_text() == "someone else's"
        assert not (workdir / "other").exists()
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert remove_workdir(workdir) == []
    assert not workdir.exists()


def test_remove_workdir_reports_what_it_cannot_remove(tmp_path):
    workdir = tmp_path / "work"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "sub" / "locked").write_text("x")
    subprocess.run(["chattr", "+i", str(workdir / "sub" / "locked")], check=True)
    try:
        left = remove_workdir(workdir)
    finally:
        subprocess.run(["chattr", "-i", str(workdir / "sub" / "locked")], check=True)

    assert left == [workdir / "sub" / "locked"]
    assert workdir.exists()
    shutil.rmtree(workdir)


