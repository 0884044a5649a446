"""The build room: work copies of the template, command choice, real Packer builds, artifacts."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from esxi_watcher.build import (
    build_commands, check_artifact, format_duration, is_transient, prepare_workdir,
    remove_workdir, run_build,
)
from esxi_watcher.errors import BuildFailed, BuildStopped
from esxi_watcher.procfs import group_members

TEST_TEMPLATE = Path(__file__).parent / "templates" / "file-builder" / "vmware-esxi"
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


# build_commands: pure ------------------------------------------------------------------------

def folder_with(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "vmware-esxi"
    folder.mkdir()
    for name in names:
        (folder / name).write_text("")
    return folder


def test_configured_command_gets_iso_and_workdir_filled_in(tmp_path):
    folder = folder_with(tmp_path, "Makefile")
    command = ("make", "ISO={iso}", "TIMEOUT=2h", "OUT={workdir}/out", "{iso}")

    commands = build_commands(folder, Path("/drop/a.iso"), command, Path("/state/work/7"))

    assert commands == [["make", "ISO=/drop/a.iso", "TIMEOUT=2h", "OUT=/state/work/7/out",
                         "/drop/a.iso"]]


def test_makefile_wins_over_packer_templates(tmp_path):
    folder = folder_with(tmp_path, "Makefile", "vmware-esxi.pkr.hcl", "vmware-esxi.json")

    assert build_commands(folder, Path("/drop/a.iso"), None, tmp_path) == [["make", "ISO=/drop/a.iso"]]


def test_hcl_template_gets_packer_init_and_build(tmp_path):
    folder = folder_with(tmp_path, "vmware-esxi.pkr.hcl", "KS.CFG")

    assert build_commands(folder, Path("/drop/a.iso"), None, tmp_path) == [
        ["packer", "init", "."],
        ["packer", "build", "-var", "vmware_esxi_iso_path=/drop/a.iso", "vmware-esxi.pkr.hcl"],
    ]


def test_several_hcl_files_are_built_as_one_folder(tmp_path):
    folder = folder_with(tmp_path, "vmware-esxi.pkr.hcl", "variables.pkr.hcl")

    assert build_commands(folder, Path("/drop/a.iso"), None, tmp_path)[1][-1] == "."


def test_json_template_gets_packer_build(tmp_path):
    folder = folder_with(tmp_path, "vmware-esxi.json")

    assert build_commands(folder, Path("/drop/a.iso"), None, tmp_path) == [
        ["packer", "build", "-var", "vmware_esxi_iso_path=/drop/a.iso", "vmware-esxi.json"]]


def test_vmware_esxi_json_is_chosen_among_several_json_files(tmp_path):
    folder = folder_with(tmp_path, "vmware-esxi.json", "settings.json")

    assert build_commands(folder, Path("/drop/a.iso"), None, tmp_path)[0][-1] == "vmware-esxi.json"


def test_several_other_json_files_are_ambiguous(tmp_path):
    folder = folder_with(tmp_path, "a.json", "b.json")

    with pytest.raises(BuildFailed, match="several Packer JSON templates .*set build.command"):
        build_commands(folder, Path("/drop/a.iso"), None, tmp_path)


def test_a_folder_with_nothing_to_build_is_a_named_error(tmp_path):
    folder = folder_with(tmp_path, "README.md")

    with pytest.raises(BuildFailed, match="no Makefile, \\*.pkr.hcl or \\*.json") as caught:
        build_commands(folder, Path("/drop/a.iso"), None, tmp_path)
    assert caught.value.transient is False


def test_a_relative_iso_path_is_made_absolute(tmp_path, monkeypatch):
    folder = folder_with(tmp_path, "Makefile")
    monkeypatch.chdir(tmp_path)

    assert build_commands(folder, Path("a.iso"), None, tmp_path) == [["make", f"ISO={tmp_path}/a.iso"]]


# prepare_workdir ----------------------------------------------------------------------------

@pytest.fixture
def checkout(tmp_path) -> Path:
    """A packer-maas-like checkout: vmware-esxi/ with links and build leftovers, scripts/ beside."""
    root = tmp_path / "packer-maas"
    template, scripts, outside = root / "vmware-esxi", root / "scripts", tmp_path / "outside"
    for folder in (template / "http", template / "output-qemu", template / "packer_cache", scripts,
                   outside / "secrets"):
        folder.mkdir(parents=True)
    (template / "vmware-esxi.pkr.hcl").write_text("source {}\n")
    (template / "http" / "vmware-esxi-ks.cfg").write_text("rootpw password123!\n")
    (template / "output-qemu" / "packer-qemu").write_text("old disk")
    (template / "packer_cache" / "big.iso").write_text("cached")
    (template / "vmware-esxi.dd.gz").write_text("old artifact")
    (scripts / "fuse-nbd").write_text("#!/bin/sh\n")
    (scripts / "fuse-nbd").chmod(0o755)
    (outside / "ks.cfg").write_text("admin's kickstart\n")
    (outside / "secrets" / "key").write_text("do not copy")
    (template / "KS.CFG").symlink_to("http/vmware-esxi-ks.cfg")
    (template / "setup-nbd").symlink_to("../scripts/fuse-nbd")
    (template / "custom-ks.cfg").symlink_to(outside / "ks.cfg")
    (template / "escaping").symlink_to("../../outside/ks.cfg")
    (template / "linked-folder").symlink_to(outside / "secrets")
    return template


def test_prepare_copies_the_template_and_its_sibling_scripts(checkout, tmp_path):
    workdir = tmp_path / "work" / "job-1"

    copy = prepare_workdir(checkout, workdir)

    assert copy == workdir / "vmware-esxi"
    assert (copy / "vmware-esxi.pkr.hcl").read_text() == "source {}\n"
    assert (copy / "http" / "vmware-esxi-ks.cfg").read_text() == "rootpw password123!\n"
    assert (workdir / "scripts" / "fuse-nbd").stat().st_mode & stat.S_IXUSR
    assert (copy / "../scripts/fuse-nbd").read_text() == "#!/bin/sh\n"


def test_prepare_leaves_out_the_checkouts_build_leftovers(checkout, tmp_path):
    copy = prepare_workdir(checkout, tmp_path / "work")

    assert not (copy / "output-qemu").exists()
    assert not (copy / "vmware-esxi.dd.gz").exists()
    assert not (copy / "packer_cache").exists()
    assert (checkout / "output-qemu" / "packer-qemu").exists()  # the checkout is untouched


def test_prepare_keeps_links_inside_relative_and_never_follows_links_out(checkout, tmp_path):
    outside = tmp_path / "outside"

    copy = prepare_workdir(checkout, tmp_path / "work")

    assert os.readlink(copy / "KS.CFG") == "http/vmware-esxi-ks.cfg"
    assert os.readlink(copy / "setup-nbd") == "../scripts/fuse-nbd"
    assert (copy / "setup-nbd").resolve() == (tmp_path / "work" / "scripts" / "fuse-nbd")
    # Links out of the template stay links to the same place; nothing behind them is copied.
    assert os.readlink(copy / "custom-ks.cfg") == str(outside / "ks.cfg")
    assert os.readlink(copy / "escaping") == str(outside / "ks.cfg")
    assert os.readlink(copy / "linked-folder") == str(outside / "secrets")
    copied_files = [path for path in (tmp_path / "work").rglob("*") if not path.is_symlink()]
    assert not any(path.name in ("key", "ks.cfg") for path in copied_files)


def test_prepare_follows_a_linked_template_folder_to_its_real_sibling_scripts(checkout, tmp_path):
    link = tmp_path / "configured-template"
    link.symlink_to(checkout)

    copy = prepare_workdir(link, tmp_path / "work")

    assert copy.name == "vmware-esxi"
    assert (tmp_path / "work" / "scripts" / "fuse-nbd").is_file()


def test_prepare_replaces_an_earlier_copy(checkout, tmp_path):
    copy = prepare_workdir(checkout, tmp_path / "work")
    (copy / "output-qemu").mkdir()
    (copy / "vmware-esxi.dd.gz").write_text("half")

    again = prepare_workdir(checkout, tmp_path / "work")

    assert again == copy
    assert sorted(path.name for path in again.iterdir()) == [
        "KS.CFG", "custom-ks.cfg", "escaping", "http", "linked-folder", "setup-nbd",
        "vmware-esxi.pkr.hcl"]


def test_prepare_without_a_scripts_folder(tmp_path):
    template = tmp_path / "checkout" / "vmware-esxi"
    template.mkdir(parents=True)
    (template / "vmware-esxi.json").write_text("{}")

    copy = prepare_workdir(template, tmp_path / "work")

    assert sorted(path.name for path in (tmp_path / "work").iterdir()) == ["vmware-esxi"]
    assert (copy / "vmware-esxi.json").read_text() == "{}"


def test_prepare_of_a_missing_template_folder_is_a_build_failure(tmp_path):
    with pytest.raises(BuildFailed, match="template folder .*/nowhere cannot be read"):
        prepare_workdir(tmp_path / "nowhere", tmp_path / "work")


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


# transient decisions and durations: pure ----------------------------------------------------

@pytest.mark.parametrize("line, transient", [
    ("qemu-nbd: Failed to set NBD socket", True),
    ("mount: /dev/nbd4p1: can't read superblock", True),
    ("Failed to get plugin: dial tcp: lookup github.com: i/o timeout", True),
    ("Build 'qemu' errored: Output directory exists: output-qemu", False),
    ("Build 'qemu' errored: Failed to shutdown", False),
    ("No space left on device", False),
])
def test_transient_failures(line, transient):
    assert is_transient(["==> qemu: starting", line]) is transient


@pytest.mark.parametrize("seconds, text", [(7200, "2h"), (5400, "1h30m"), (3, "3s"), (0.5, "0.5s"),
                                           (3725, "1h2m5s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# check_artifact ------------------------------------------------------------------------------

@pytest.fixture
def artifact(tmp_path) -> Path:
    path = tmp_path / "vmware-esxi.dd.gz"
    path.write_bytes(gzip.compress(os.urandom(300_000) + bytes(3_000_000)))
    return path


def test_check_artifact_accepts_a_complete_gzip(artifact):
    check_artifact(artifact)


def test_check_artifact_accepts_gzip_written_by_the_gzip_tool(tmp_path):
    raw = tmp_path / "disk"
    raw.write_bytes(os.urandom(100_000))
    subprocess.run(["gzip", "-k", str(raw)], check=True)

    check_artifact(tmp_path / "disk.gz")


def test_check_artifact_refuses_a_truncated_gzip(artifact):
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])

    with pytest.raises(BuildFailed, match="is truncated"):
        check_artifact(artifact)


def test_check_artifact_refuses_a_gzip_missing_its_trailer(artifact):
    artifact.write_bytes(artifact.read_bytes()[:-4])

    with pytest.raises(BuildFailed, match="is truncated"):
        check_artifact(artifact)


def test_check_artifact_refuses_a_wrong_crc(artifact):
    data = bytearray(artifact.read_bytes())
    data[-8] ^= 0xFF  # first byte of the CRC32 in the trailer
    artifact.write_bytes(bytes(data))

    with pytest.raises(BuildFailed, match="is damaged: CRC check failed"):
        check_artifact(artifact)


@pytest.mark.parametrize("content", [b"", b"raw disk image, not compressed", b"\x1f"])
def test_check_artifact_refuses_what_is_not_gzip(tmp_path, content):
    path = tmp_path / "vmware-esxi.dd.gz"
    path.write_bytes(content)

    with pytest.raises(BuildFailed, match="is not a gzip file"):
        check_artifact(path)


def test_check_artifact_refuses_a_missing_file(tmp_path):
    with pytest.raises(BuildFailed, match="was not written"):
        check_artifact(tmp_path / "vmware-esxi.dd.gz")


# remove_workdir ------------------------------------------------------------------------------

def test_remove_workdir_removes_everything_without_following_links(tmp_path, checkout):
    workdir = tmp_path / "work"
    prepare_workdir(checkout, workdir)
    (workdir / "vmware-esxi" / "output-qemu").mkdir()
    (workdir / "vmware-esxi" / "output-qemu" / "packer-qemu").write_bytes(b"disk")

    assert remove_workdir(workdir) == []

    assert not workdir.exists()
    assert (tmp_path / "outside" / "secrets" / "key").read_text() == "do not copy"
    assert (tmp_path / "outside" / "ks.cfg").exists()
    assert remove_workdir(workdir) == []  # already gone is fine


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


# the artifact's sha256 --------------------------------------------------------------------------

def test_check_artifact_returns_the_sha256_of_the_file_it_read_once(artifact):
    assert check_artifact(artifact) == hashlib.sha256(artifact.read_bytes()).hexdigest()


def test_the_upload_takes_the_sha256_the_check_recorded(artifact):
    from esxi_watcher.build import SHA256_SUFFIX, artifact_sha256

    digest = check_artifact(artifact)
    record = artifact.parent / (artifact.name + SHA256_SUFFIX)
    assert record.read_text().split()[0] == digest
    record.write_text(record.read_text().replace(digest, "f" * 64))  # proves it is read, not recomputed
    assert artifact_sha256(artifact) == "f" * 64


def test_an_artifact_changed_after_its_check_is_hashed_again(artifact):
    from esxi_watcher.build import artifact_sha256

    check_artifact(artifact)
    artifact.write_bytes(gzip.compress(b"another disk"))
    assert artifact_sha256(artifact) == hashlib.sha256(artifact.read_bytes()).hexdigest()
