"""The build room without running a build: command choice, work copies of the template, artifact
checks, transient failures."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
from pathlib import Path

import pytest

from esxi_watcher.build import (build_commands, check_artifact, format_duration, is_transient,
                                prepare_workdir, remove_workdir)
from esxi_watcher.errors import BuildFailed


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
