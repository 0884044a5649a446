"""The build recipe's fingerprint (what makes two builds the same) and the provenance record."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from esxi_watcher import provenance
from esxi_watcher.config import BuildConfig
from esxi_watcher.store import Job, Registration, State, Target
from esxi_watcher.show import show_dict, show_text
from tests.paths import TEMPLATES

PASSWORD = "Very-Secret-Pa55word!"


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the test template (vmware-esxi/ and its sibling scripts/), never the tree's own."""
    shutil.copytree(TEMPLATES / "file-builder", tmp_path / "packer-maas", symlinks=True)
    return tmp_path / "packer-maas"


def _config(checkout: Path, **changes) -> BuildConfig:
    config = BuildConfig(template_dir=checkout / "vmware-esxi", command=None, artifact="vmware-esxi.dd.gz",
                         console_log="serial.log", timeout=60, retries=0)
    return dataclasses.replace(config, **changes)


def _touch_later(path: Path) -> None:
    """Move a file's mtime on so that a cache keyed by stat cannot hide a change of the same size."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))


def test_the_same_recipe_gives_the_same_fingerprint(checkout):
    first = provenance.recipe_fingerprint(_config(checkout))
    assert len(first) == 64 and first == provenance.recipe_fingerprint(_config(checkout))


def test_a_changed_template_file_changes_it(checkout):
    before = provenance.recipe_fingerprint(_config(checkout))
    template = checkout / "vmware-esxi" / "vmware-esxi.json"
    template.write_text(template.read_text().replace("esxi-watcher test disk", "esxi-watcher test disk 2"))
    assert provenance.recipe_fingerprint(_config(checkout)) != before


def test_a_same_size_edit_is_seen_through_the_cache(checkout):
    template = checkout / "vmware-esxi" / "vmware-esxi.json"
    before = provenance.recipe_fingerprint(_config(checkout))
    template.write_text(template.read_text().replace("test disk", "TEST DISK"))
    _touch_later(template)
    assert provenance.recipe_fingerprint(_config(checkout)) != before


def test_a_changed_sibling_script_changes_it(checkout):
    before = provenance.recipe_fingerprint(_config(checkout))
    with open(checkout / "scripts" / "shape-disk", "a") as script:
        script.write("# changed\n")
    assert provenance.recipe_fingerprint(_config(checkout)) != before


def test_an_added_file_and_a_mode_change_change_it(checkout):
    fingerprints = {provenance.recipe_fingerprint(_config(checkout))}
    (checkout / "vmware-esxi" / "KS.CFG").write_text("rootpw password123!\n")
    fingerprints.add(provenance.recipe_fingerprint(_config(checkout)))
    (checkout / "vmware-esxi" / "KS.CFG").chmod(0o600)
    fingerprints.add(provenance.recipe_fingerprint(_config(checkout)))
    assert len(fingerprints) == 3


def test_build_leftovers_do_not_count(checkout):
    """What prepare_workdir does not copy (a build run in the checkout itself) is not the recipe."""
    before = provenance.recipe_fingerprint(_config(checkout))
    folder = checkout / "vmware-esxi"
    (folder / "output-qemu").mkdir()
    (folder / "output-qemu" / "packer-qemu").write_text("disk")
    (folder / "packer_cache").mkdir()
    (folder / "vmware-esxi.dd.gz").write_bytes(b"\x1f\x8b")
    assert provenance.recipe_fingerprint(_config(checkout)) == before


def test_symlinks_count_by_their_text_and_are_not_followed(checkout, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    link = checkout / "vmware-esxi" / "extra"
    link.symlink_to(outside)
    before = provenance.recipe_fingerprint(_config(checkout))
    outside.write_text("two, longer")
    assert provenance.recipe_fingerprint(_config(checkout)) == before
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere.txt")
    assert provenance.recipe_fingerprint(_config(checkout)) != before


def test_the_kickstart_counts_by_its_content(checkout, tmp_path):
    kickstart = tmp_path / "ks.cfg"
    kickstart.write_text("vmaccepteula\n")
    without = provenance.recipe_fingerprint(_config(checkout))
    with_it = provenance.recipe_fingerprint(_config(checkout, kickstart=kickstart))
    kickstart.write_text("vmaccepteula\nreboot\n")
    changed = provenance.recipe_fingerprint(_config(checkout, kickstart=kickstart))
    assert len({without, with_it, changed}) == 3


def test_the_root_password_counts_but_never_shows(checkout, tmp_path):
    password_file = tmp_path / "root-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    salt = b"an installation's salt"
    default = provenance.recipe_fingerprint(_config(checkout), salt=salt)
    first = provenance.recipe_fingerprint(_config(checkout, root_password_file=password_file), salt=salt)
    assert first != default
    assert first == provenance.recipe_fingerprint(_config(checkout, root_password_file=password_file), salt=salt)
    # another installation (salt) gives another fingerprint for the same password: nothing to precompute
    assert first != provenance.recipe_fingerprint(_config(checkout, root_password_file=password_file),
                                                  salt=b"another salt")
    password_file.write_text("Another-Pa55word!!\n")
    _touch_later(password_file)
    assert provenance.recipe_fingerprint(_config(checkout, root_password_file=password_file), salt=salt) != first
    import hashlib
    for fast in (hashlib.sha256(PASSWORD.encode()).hexdigest(), hashlib.md5(PASSWORD.encode()).hexdigest(),
                 hashlib.sha1(PASSWORD.encode()).hexdigest()):
        assert fast[:12] not in first
    record = provenance.kickstart_record(_config(checkout, root_password_file=password_file))
    assert record == {"file": None, "root_password": f"from {password_file}"}
    assert PASSWORD not in repr(record)


def test_what_cannot_be_read_counts_as_such_without_raising(checkout, tmp_path):
    missing = provenance.recipe_fingerprint(_config(tmp_path / "nowhere"))
    assert missing != provenance.recipe_fingerprint(_config(checkout))
    gone = provenance.recipe_fingerprint(_config(checkout, kickstart=tmp_path / "no-ks.cfg"))
    assert gone != provenance.recipe_fingerprint(_config(checkout))


def test_the_salt_is_made_once_and_kept_private(tmp_path):
    first = provenance.installation_salt(tmp_path)
    assert first == provenance.installation_salt(tmp_path) and len(first) >= 16
    assert (tmp_path / provenance.SALT_FILE).stat().st_mode & 0o777 == 0o600


def test_a_checkout_top_is_found_without_git(checkout):
    assert provenance.checkout_top(checkout / "vmware-esxi") is None
    (checkout / ".git").mkdir()
    assert provenance.checkout_top(checkout / "vmware-esxi") == checkout
    argv = provenance.git_argv(checkout / "vmware-esxi", checkout, "rev-parse", "HEAD")
    assert argv[:3] == ["git", "-c", f"safe.directory={checkout}"] and argv[-2:] == ["rev-parse", "HEAD"]


def test_merged_adds_durations_of_several_stages():
    record = provenance.merged({"durations": {"queued": 1.0}, "packer_version": "1.6.5"},
                               {"durations": {"build": 2.0}, "packer_version": "1.6.6"})
    assert record == {"durations": {"queued": 1.0, "build": 2.0}, "packer_version": "1.6.6"}


def _job(**values) -> Job:
    base = dict(id=7, iso="esxi.iso", iso_path="/drop/done/esxi.iso", state=State.REGISTERED, created=0.0,
                updated=0.0, sha256="a" * 64, size=10, fingerprint="f" * 64)
    return Job(**{**base, **values})


def test_show_prints_every_field_and_a_removal():
    record = {"iso": {"name": "esxi.iso", "sha256": "a" * 64, "size": 10},
              "esxi": {"version": "8.0.2", "major": 8, "minor": 0, "update": "U2", "build": 22380479},
              "template": {"path": "/srv/packer-maas/vmware-esxi", "git_commit": "c" * 40, "git_dirty": True,
                           "fingerprint": "f" * 64},
              "kickstart": {"file": None, "root_password": "template default"}, "packer_version": "1.6.6",
              "commands": [["packer", "build", "-var", "vmware_esxi_iso_path=/drop/a b.iso", "vmware-esxi.json"]],
              "durations": {"queued": 0.5, "build": 3.25, "build:installing": 150.0, "register:default": 1.0},
              "artifact": {"size": 99, "sha256": "d" * 64}}
    registration = Registration(job=7, target="default", state=Target.REMOVED, resource="esxi/8.0.2-22380479",
                                created=0.0, updated=0.0, resource_id=3, set_version="20261202.1",
                                removed=0.0, removal="retention: keep 2")
    text = show_text(_job(provenance=record), [registration])
    for expected in ("a" * 64, "c" * 40 + " with local changes", "f" * 64, "1.6.6",
                     "'vmware_esxi_iso_path=/drop/a b.iso'", "build took:", "3.2 s", "registering on default took:",
                     "  installing:", "2.5 min", "d" * 64, "99 bytes", "esxi/8.0.2-22380479 (id 3, set 20261202.1)",
                     "removed", "retention: keep 2", "template default", "ESXi 8.0U2 build 22380479 (version 8.0.2)"):
        assert expected in text, expected
    data = show_dict(_job(provenance=record), [registration])
    assert data["provenance"] == record and data["fingerprint"] == "f" * 64
    assert data["registrations"][0]["removal"] == "retention: keep 2" and data["registrations"][0]["state"] == "removed"


def test_show_copes_with_a_job_from_before_provenance():
    text = show_text(_job(provenance=None, fingerprint=None), [])
    assert "esxi.iso" in text and "a" * 64 in text and "None" not in text


def test_a_fifo_or_device_as_kickstart_or_password_is_named_not_read(checkout, tmp_path):
    fifo = tmp_path / "ks.fifo"
    os.mkfifo(fifo)
    fingerprint = provenance.recipe_fingerprint(_config(checkout, kickstart=fifo, root_password_file=fifo))
    assert fingerprint == provenance.recipe_fingerprint(_config(checkout, kickstart=Path("/dev/zero"),
                                                                root_password_file=Path("/dev/zero")))
    os.mkfifo(checkout / "vmware-esxi" / "a-fifo")
    assert len(provenance.recipe_fingerprint(_config(checkout))) == 64


def test_show_escapes_what_a_file_name_could_do_to_a_terminal():
    text = show_text(_job(iso="evil\x1b[2J\nname.iso", provenance={"iso": {"name": "evil\x1b[2J\nname.iso"}}), [])
    assert "\x1b" not in text and "evil\\x1b[2J\\nname.iso" in text


def test_the_same_files_elsewhere_are_the_same_recipe(checkout, tmp_path):
    """Moving or re-cloning the checkout (new paths, inodes and times) is no reason to build again."""
    moved = tmp_path / "elsewhere" / "packer-maas"
    shutil.copytree(checkout, moved, symlinks=True)
    assert provenance.recipe_fingerprint(_config(moved)) == provenance.recipe_fingerprint(_config(checkout))
