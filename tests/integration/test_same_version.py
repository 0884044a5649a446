"""Same version, other bytes: a re-mastered ISO of a registered version gets a MAAS name of its own,
tagged with its sha256, instead of silently becoming what the next deployment installs."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from tests.harness import drop, write_config
from tests.isogen import make_esxi_iso
from tests.unit.test_same_version import NAME


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_remastered_iso_of_a_registered_version_gets_its_own_name(tmp_path, simulator, daemon_factory):
    (tmp_path / "src").mkdir()
    stock = make_esxi_iso(tmp_path / "src" / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")
    custom = make_esxi_iso(tmp_path / "src" / "lab-custom-8.0U2.iso", salt=b"our own kickstart")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))

    drop(stock, daemon.drop_dir)
    first = daemon.wait_for_state(stock.name, "registered")
    assert first["resource"] == NAME
    before = [r for r in simulator.resources() if r["name"] == NAME][0]
    held_before = simulator.file_bytes(NAME)

    drop(custom, daemon.drop_dir)
    second = daemon.wait_for_state(custom.name, "registered")
    tagged = f"{NAME}-{_sha256(custom)[:8]}"
    assert second["resource"] == tagged

    after = [r for r in simulator.resources() if r["name"] == NAME][0]
    assert list(after["sets"]) == list(before["sets"]) and len(after["sets"]) == 1
    assert simulator.file_bytes(NAME) == held_before
    [other] = [r for r in simulator.resources() if r["name"] == tagged]
    assert other["title"].endswith(f"[{_sha256(custom)[:8]}]")
    assert f"iso_sha256={_sha256(custom)}".encode() in gzip.decompress(simulator.file_bytes(tagged))

    done = [e for e in daemon.log_events() if e.get("event") == "register.done"]
    assert [(e["iso"], e["resource"]) for e in done] == [(stock.name, NAME), (custom.name, tagged)]
    table = daemon.cli("status").stdout.splitlines()
    assert any(stock.name in line and line.rstrip().endswith(NAME) for line in table)
    assert any(custom.name in line and line.rstrip().endswith(tagged) for line in table)


def test_the_same_bytes_again_keep_the_plain_name(tmp_path, simulator, daemon_factory):
    (tmp_path / "src").mkdir()
    stock = make_esxi_iso(tmp_path / "src" / "stock.iso")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    drop(stock, daemon.drop_dir)
    assert daemon.wait_for_state(stock.name, "registered")["resource"] == NAME
    drop(stock, daemon.drop_dir, "stock again.iso")
    assert daemon.wait_for_state("stock again.iso", "duplicate")
    assert [r["name"] for r in simulator.resources() if r["name"].startswith("esxi/")] == [NAME]
