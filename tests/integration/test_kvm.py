"""KVM preflight: the probe guest really runs (under TCG), KVM's verdict here, its cache, and which
templates want KVM."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from esxi_watcher import kvm


def _probe_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "esxi-watcher-kvm-" in command:
            found.append(f"{entry.name}: {command}")
    return found


def test_probe_guest_prints_its_marker_under_tcg():
    ran, detail = kvm.run_probe_guest("tcg", timeout=20)

    assert (ran, detail) == (True, "printed its marker")


def test_kvm_cannot_run_guests_here_and_the_verdict_is_cached(tmp_path):
    started = time.monotonic()
    verdict = kvm.kvm_can_run_guests(cache_dir=tmp_path, timeout=10)
    first_call = time.monotonic() - started

    owner = kvm.kvm_module()
    assert owner == "kvm_pvm"  # these machines: /dev/kvm is a PVM host's (see TESTING.md)
    assert verdict == kvm.KvmVerdict(
        False, "KVM cannot run guests on this host: a test guest under -accel kvm printed nothing "
               "in 10 s (/dev/kvm belongs to kvm_pvm)")
    assert 10 <= first_call < 30
    assert _probe_processes() == []  # the hung qemu was killed with its group

    entry = json.loads((tmp_path / kvm.CACHE_FILE).read_text())
    assert entry["key"] == kvm.host_key()
    assert entry["key"]["kernel"] == os.uname().release and entry["key"]["dev_kvm"] is True
    started = time.monotonic()
    assert kvm.kvm_can_run_guests(cache_dir=tmp_path, timeout=10) == verdict
    assert time.monotonic() - started < 5  # from the cache: a probe would take the full 10 s


