"""KVM preflight without a guest: the probe's boot sector, the cached verdict, the vendor module,
and which templates want KVM."""

from __future__ import annotations

import json
import time
from pathlib import Path

from esxi_watcher import kvm
from tests.paths import TEMPLATES


def test_probe_boot_sector_is_a_boot_sector_holding_the_marker():
    sector = kvm.probe_boot_sector()

    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")
    assert kvm.MARKER in sector


def _cache_entry(path: Path, key: dict, checked_at: float) -> None:
    path.write_text(json.dumps({"key": key, "checked_at": checked_at, "ok": True, "reason": "cached"}))


def test_cached_verdict_is_used_only_for_the_same_boot_kernel_and_device_within_its_ttl(tmp_path):
    cache = tmp_path / kvm.CACHE_FILE
    key = kvm.host_key()

    _cache_entry(cache, key, time.time() - 60)
    assert kvm._read_cache(cache, key, ttl=3600) == kvm.KvmVerdict(True, "cached")
    assert kvm._read_cache(cache, key, ttl=30) is None  # expired
    for changed in ({"boot_id": "another boot"}, {"kernel": "0.0.0"}, {"dev_kvm": not key["dev_kvm"]}):
        _cache_entry(cache, {**key, **changed}, time.time())
        assert kvm._read_cache(cache, key, ttl=3600) is None
    cache.write_text("{not json")
    assert kvm._read_cache(cache, key, ttl=3600) is None


def test_without_dev_kvm_the_reason_says_so_and_nothing_runs(tmp_path):
    verdict = kvm.kvm_can_run_guests(cache_dir=tmp_path / "state", sys_root=tmp_path)

    assert verdict.ok is False
    assert verdict.reason.startswith("KVM is not available on this host: /dev/kvm does not exist")
    assert json.loads((tmp_path / "state" / kvm.CACHE_FILE).read_text())["key"]["dev_kvm"] is False


def test_kvm_module_names_the_vendor_module_from_sysfs(tmp_path):
    assert kvm.kvm_module(tmp_path) is None
    (tmp_path / "sys/module/kvm_intel").mkdir(parents=True)
    assert kvm.kvm_module(tmp_path) == "kvm_intel"
    (tmp_path / "sys/module/kvm_pvm").mkdir(parents=True)
    assert kvm.kvm_module(tmp_path) == "kvm_pvm"


def test_template_wants_kvm_from_the_test_templates_and_the_command():
    qemu_template = TEMPLATES / "qemu" / "vmware-esxi"

    assert kvm.template_wants_kvm(qemu_template) is True  # variable default "kvm", as packer-maas
    assert kvm.template_wants_kvm(qemu_template, None) is True
    assert kvm.template_wants_kvm(qemu_template, ["packer", "build", "-var", "accelerator=tcg",
                                                  "-var", "vmware_esxi_iso_path={iso}", "x.json"]) is False
    assert kvm.template_wants_kvm(qemu_template, ["packer", "build", "-var=accelerator=kvm", "x.json"]) is True
    assert kvm.template_wants_kvm(TEMPLATES / "file-builder") is False


def _hcl_template(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vmware-esxi.pkr.hcl").write_text(text)
    return folder


def test_template_wants_kvm_reads_hcl_literals_variables_and_packers_default(tmp_path):
    literal = _hcl_template(tmp_path / "literal", 'source "qemu" "esxi" {\n  accelerator = "kvm"\n}\n')
    variable = _hcl_template(tmp_path / "variable", (
        'variable "accel" {\n  type = string\n  default = "tcg"\n}\n'
        'source "qemu" "esxi" {\n  accelerator = var.accel\n}\n'))
    unset = _hcl_template(tmp_path / "unset", 'source "qemu" "esxi" {\n  format = "raw"\n}\n')
    other = _hcl_template(tmp_path / "other", 'source "file" "esxi" {\n  target = "x"\n}\n')
    make_only = tmp_path / "make-only"
    make_only.mkdir()
    (make_only / "Makefile").write_text("all:\n\ttrue\n")

    assert kvm.template_wants_kvm(literal) is True
    assert kvm.template_wants_kvm(variable) is False
    assert kvm.template_wants_kvm(variable, ["make", "ISO={iso}"]) is False
    assert kvm.template_wants_kvm(unset) is True  # Packer's qemu builder defaults to kvm on Linux
    assert kvm.template_wants_kvm(other) is False
    assert kvm.template_wants_kvm(make_only) is False
