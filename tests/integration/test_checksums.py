"""Checksum files dropped beside an ISO: the ISO is verified against them (in the same single read
as its sha256) before it is built, and they go with it to its outcome folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso


def _iso(tmp_path: Path, salt: str) -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso", salt=salt.encode())


def test_a_matching_sha256_file_verifies_the_iso_and_goes_with_it(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = _iso(tmp_path, "match")
    checksum = daemon.drop_dir / f"{iso.name}.sha256"
    checksum.write_text(f"{hashlib.sha256(iso.read_bytes()).hexdigest()}  {iso.name}\n")
    drop(iso, daemon.drop_dir)
    daemon.wait_for_state(iso.name, "registered")
    wait_for(lambda: (daemon.drop_dir / "done" / checksum.name).exists(), 10, "the checksum file in done/")
    assert not checksum.exists() and (daemon.drop_dir / "done" / iso.name).exists()
    assert len(daemon.jobs()) == 1
    verified = [e for e in daemon.log_events() if e.get("event") == "checksum.verified"]
    assert [(e["checksum"], e["algorithm"]) for e in verified] == [(checksum.name, "sha256")]


def test_a_mismatching_md5_file_rejects_the_iso_with_both_sums(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = _iso(tmp_path, "mismatch")
    stem = iso.name[:-len(".iso")]
    wrong = "0123456789abcdef" * 2
    (daemon.drop_dir / f"{stem}.MD5").write_text(f"{wrong} *{iso.name}\n")
    drop(iso, daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "rejected")
    actual = hashlib.md5(iso.read_bytes()).hexdigest()
    assert job["error"] == (f"checksum mismatch: {stem}.MD5 says md5 {wrong}, the ISO's md5 is {actual} "
                            f"(a damaged or different download)")
    rejected = daemon.drop_dir / "rejected"
    wait_for(lambda: (rejected / f"{stem}.MD5").exists(), 10, "the checksum file in rejected/")
    assert (rejected / iso.name).exists() and (rejected / f"{iso.name}.reason.txt").exists()
    assert not [r for r in simulator.resources() if r["name"].startswith("esxi/")]


def test_a_checksum_file_copied_after_the_iso_joins_its_job(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = _iso(tmp_path, "after")
    drop(iso, daemon.drop_dir)
    daemon.wait_for_state(iso.name, "registered")
    source = tmp_path / "src" / "after" / f"{iso.name}.sha256"
    source.write_text(f"{hashlib.sha256(iso.read_bytes()).hexdigest()}\n")
    drop(source, daemon.drop_dir)
    wait_for(lambda: (daemon.drop_dir / "done" / source.name).exists(), 30, "the checksum file beside its ISO")
    assert [j["state"] for j in daemon.jobs()] == ["registered"]
    verified = [e for e in daemon.log_events() if e.get("event") == "checksum.verified"]
    assert verified and verified[0]["checksum"] == source.name


def test_a_checksum_file_alone_waits_for_its_iso(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = _iso(tmp_path, "later")
    checksum = daemon.drop_dir / f"{iso.name}.sha1"
    checksum.write_text(f"{hashlib.sha1(iso.read_bytes()).hexdigest()}  {iso.name}\n")
    wait_for(lambda: [e for e in daemon.log_events() if e.get("event") == "checksum.waiting_for_iso"], 20,
             "the checksum file to wait")
    assert daemon.jobs() == [] and checksum.exists()
    drop(iso, daemon.drop_dir)
    daemon.wait_for_state(iso.name, "registered")
    wait_for(lambda: (daemon.drop_dir / "done" / checksum.name).exists(), 10, "the checksum file in done/")
    assert [e["algorithm"] for e in daemon.log_events() if e.get("event") == "checksum.verified"] == ["sha1"]
