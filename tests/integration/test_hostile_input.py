"""Hostile and odd input in the drop dir: each gets a clear reason, nothing dropped is deleted, the
daemon keeps running and keeps working."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso, make_ubuntu_iso, truncate_copy

FINAL = {"registered", "rejected", "duplicate", "failed"}


@pytest.fixture
def site(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, watch__max_iso_size="64MiB")
    return daemon_factory(config)


def _esxi(tmp_path: Path, salt: str, name: str = "esxi.iso") -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / name, version="8.0U2", build=22380479, salt=salt.encode())


def _final(daemon, name: str, timeout: float = 60) -> dict:
    return daemon.wait_for_state(name, FINAL, timeout=timeout)


def test_bad_files_are_rejected_with_reasons_and_kept(tmp_path, site, simulator):
    drop_dir = site.drop_dir
    secret_target = tmp_path / "elsewhere" / "valid.iso"
    secret_target.parent.mkdir()
    make_esxi_iso(secret_target, salt=b"elsewhere")
    valid_bytes = secret_target.read_bytes()
    real_esxi = _esxi(tmp_path, "truncated")

    (drop_dir / "zero.iso").write_bytes(b"")
    (drop_dir / "random.iso").write_bytes(os.urandom(300_000))
    (drop_dir / "readme.iso").write_text("Please install ESXi 8 on the lab servers.\n")
    truncate_copy(real_esxi, drop_dir / "truncated.iso")
    shutil.copy(make_ubuntu_iso(tmp_path / "ubuntu.iso"), drop_dir / "ubuntu.iso")
    (drop_dir / "x.iso").mkdir()
    (drop_dir / "x.iso" / "inside.txt").write_text("a folder, not an ISO")
    os.symlink("/etc/shadow", drop_dir / "shadow.iso")
    os.symlink(secret_target, drop_dir / "link-to-valid.iso")
    os.mkfifo(drop_dir / "fifo.iso")
    unreadable = drop_dir / "unreadable.iso"
    shutil.copy(_esxi(tmp_path, "unreadable"), unreadable)
    unreadable.chmod(0)
    with open(drop_dir / "sparse.iso", "wb") as sparse:
        sparse.truncate(100 << 20)  # 100 MiB of holes, over the 64 MiB limit

    expected = {
        "zero.iso": "is empty",
        "random.iso": "not an ESXi installer ISO",
        "readme.iso": "not an ESXi installer ISO",
        "truncated.iso": "truncated",
        "ubuntu.iso": "no BOOT.CFG",
        "x.iso": "is a directory",
        "shadow.iso": "symbolic link",
        "link-to-valid.iso": "symbolic link",
        "fifo.iso": "not a regular file",
        "unreadable.iso": "no read permission",
        "sparse.iso": "over watch.max_iso_size",
    }
    for name, words in expected.items():
        job = _final(site, name)
        assert job["state"] == "rejected", (name, job)
        assert words in job["error"], (name, job["error"])
        assert "\n" not in job["error"]
        kept = drop_dir / "rejected" / name
        assert os.path.lexists(kept), f"{name} must be kept in rejected/"
        note = (drop_dir / "rejected" / f"{name}.reason.txt").read_text()
        assert note.splitlines()[0] == job["error"]
    assert os.readlink(drop_dir / "rejected" / "shadow.iso") == "/etc/shadow"
    assert secret_target.read_bytes() == valid_bytes  # the link's target was never moved or read
    assert (drop_dir / "rejected" / "x.iso" / "inside.txt").exists()
    assert (drop_dir / "rejected" / "sparse.iso").stat().st_size == 100 << 20
    assert [r for r in simulator.resources() if r["name"].startswith("esxi/")] == []

    # ...and the daemon still works: the FIFO did not block it.
    good = drop(_esxi(tmp_path, "after"), drop_dir, "after.iso")
    assert _final(site, good.name)["state"] == "registered"
    assert site.alive()


@pytest.mark.parametrize("name", ["with space.iso", "ünïcødé-ESXi-8.iso", "new\nline.iso", "-leading-dash.iso"])
def test_odd_names_register(tmp_path, site, name):
    source = _esxi(tmp_path, "odd")
    dropped = site.drop_dir / name
    shutil.copy(source, dropped)
    job = _final(site, name)
    assert job["state"] == "registered", job
    assert (site.drop_dir / "done" / name).read_bytes() == source.read_bytes()


def test_file_removed_while_queued(tmp_path, simulator, daemon_factory):
    # The first build hangs until its timeout, so the second ISO waits in the queue meanwhile.
    hanging = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__command=hanging,
                                         build__timeout="15s"))
    drop(_esxi(tmp_path, "first"), daemon.drop_dir, "first.iso")
    daemon.wait_for_state("first.iso", "building")
    second = drop(_esxi(tmp_path, "second"), daemon.drop_dir, "second.iso")
    daemon.wait_for_state("second.iso", "queued")
    second.unlink()
    first = _final(daemon, "first.iso")
    assert first["state"] == "failed" and "timed out" in first["error"]
    job = _final(daemon, "second.iso")
    assert job["state"] == "failed" and "removed or replaced" in job["error"]
    assert daemon.alive()


def test_file_replaced_while_queued_is_taken_as_new(tmp_path, simulator, daemon_factory):
    hanging = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]
    config = write_config(tmp_path / "site", simulator, build__command=hanging, build__timeout="60s")
    daemon = daemon_factory(config)
    drop(_esxi(tmp_path, "first"), daemon.drop_dir, "first.iso")
    daemon.wait_for_state("first.iso", "building")
    drop(_esxi(tmp_path, "old"), daemon.drop_dir, "swap.iso")
    daemon.wait_for_state("swap.iso", "queued")
    replacement = _esxi(tmp_path, "new")
    shutil.copy(replacement, daemon.drop_dir / ".swap.iso.tmp")
    os.rename(daemon.drop_dir / ".swap.iso.tmp", daemon.drop_dir / "swap.iso")
    wait_for(lambda: len([j for j in daemon.jobs() if j["iso"] == "swap.iso"]) == 2, 30,
             "the replaced file to become a job of its own")
    jobs = [j for j in daemon.jobs() if j["iso"] == "swap.iso"]
    assert jobs[0]["sha256"] != jobs[1]["sha256"]


def test_drop_dir_removed_and_recreated(tmp_path, site):
    shutil.rmtree(site.drop_dir)
    wait_for(lambda: any(event.get("event") == "watch.rearmed" and event.get("exists") is False
                         for event in site.log_events()), 30, "the daemon to see the drop dir gone")
    site.drop_dir.mkdir()
    dropped = drop(_esxi(tmp_path, "recreated"), site.drop_dir, "recreated.iso")
    assert _final(site, dropped.name)["state"] == "registered"
    assert site.alive()


def test_same_content_twice_at_once(tmp_path, site):
    source = _esxi(tmp_path, "twice")
    drop(source, site.drop_dir, "one.iso")
    drop(source, site.drop_dir, "two.iso")
    states = sorted(_final(site, name)["state"] for name in ("one.iso", "two.iso"))
    assert states == ["duplicate", "registered"]


def test_full_state_disk_waits_with_a_reason_and_recovers(tmp_path, simulator, daemon_factory):
    state = tmp_path / "site" / "state"
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)
    try:
        daemon = daemon_factory(write_config(tmp_path / "site", simulator))
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        dropped = drop(_esxi(tmp_path, "full"), daemon.drop_dir, "full.iso")
        wait_for(lambda: any("cannot write the job store" in s and "free space in" in s
                             for s in daemon.statuses()), 60, "the status to name the full state dir")
        assert dropped.exists() and daemon.alive()
        filler.unlink()
        assert _final(daemon, dropped.name)["state"] == "registered"
        wait_for(lambda: daemon.statuses()[-1].startswith("idle: 1 registered"), 10, "an idle status")
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
