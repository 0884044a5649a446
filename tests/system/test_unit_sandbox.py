"""The unit's sandbox lets through what packer-maas's vmware-esxi builds do, and no more.

Runs the tools of the three template generations (qemu under TCG, qemu-nbd, nbdkit + nbdfuse +
fusefat, mtools, mount) as transient units carrying exactly the [Service] sandbox lines of
systemd/esxi-watcher.service, in a booted Debian 12, 13 and unstable container (one module run per
release) with /dev/fuse and /dev/kvm bound in. Last, the installed service itself builds a bootable fake ESXi installer with the qemu test
template (Packer's qemu builder under TCG, then fuse-nbd and fusefat) and registers it. Needs root.
"""

from __future__ import annotations

import shutil
import struct
import time

import pytest
import yaml

from tests.maas_simulator import MaasSimulator
from tests.system.build_debs import REPO
from tests.system.container import SUITES, Container, cached_root, install_debs, packages_for
from tests.vm.installer_iso import build_installer_iso
from tests.vm.qemu_build import read_partition_file

UNIT = REPO / "systemd/esxi-watcher.service"
# [Service] lines about the process, not the sandbox: systemd-run sets its own.
NOT_SANDBOX = {"Type", "ExecStart", "NotifyAccess", "WatchdogSec", "TimeoutStartSec",
               "TimeoutStopSec", "Restart", "RestartSec", "StandardOutput", "StandardError",
               "SyslogIdentifier", "KillMode"}


def sandbox_properties() -> list[str]:
    """Return the unit's [Service] sandbox settings as systemd-run -p arguments."""
    arguments, section = [], None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            if line.split("=", 1)[0] not in NOT_SANDBOX:
                arguments += ["-p", line]
    return arguments


@pytest.fixture(scope="module", params=SUITES)
def sandbox(request, debs, ci_log):
    with ci_log():
        container = Container.boot(cached_root(packages_for(debs), request.param),
                                   devices=["/dev/fuse", "/dev/kvm"])
    try:
        with ci_log():
            install_debs(container, debs)
            container.run(["systemctl", "stop", "esxi-watcher"])
        properties = sandbox_properties()

        def run(script: str, title: str):
            with ci_log():
                return container.show(["systemd-run", "--wait", "--pipe", "--collect", "--quiet",
                                      *properties, "sh", "-c", script], title)

        run.container = container
        run.ci_log = ci_log
        yield run
    finally:
        with ci_log():
            container.stop()


def test_qemu_runs_a_guest_under_tcg(sandbox):
    started = time.monotonic()
    output = sandbox("timeout 5 qemu-system-x86_64 -accel tcg -display none -nodefaults "
                     "-m 128 -no-reboot; echo exit=$?", "qemu under TCG for 5 s")
    # Killed by timeout after running 5 s: W^X memory and the system call filter let TCG run.
    assert "exit=124" in output and time.monotonic() - started >= 5
    assert "Bad system call" not in output


def test_file_system_limits(sandbox):
    output = sandbox(
        "touch /etc/esxi-watcher/x 2>/dev/null || echo etc=read-only; "
        "touch /var/lib/esxi-drop/x && rm /var/lib/esxi-drop/x && echo drop=writable; "
        "touch /var/lib/esxi-watcher/x && rm /var/lib/esxi-watcher/x && echo state=writable; "
        "touch /tmp/x && echo tmp=writable; "
        "test -z \"$(ls -A /root)\" && echo root=hidden; "
        "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && umount /tmp/m && echo mount=ok; "
        "echo HOME=$HOME",
        "file system limits")
    for expected in ("etc=read-only", "drop=writable", "state=writable", "tmp=writable",
                     "root=hidden", "mount=ok", "HOME=/var/lib/esxi-watcher"):
        assert expected in output


def test_packer_maas_fuse_nbd_chain(sandbox):
    """qemu-nbd --socket, nbdfuse with nbdkit's partition filter and fusefat, as fuse-nbd does."""
    image = sandbox.container.path("/var/lib/esxi-watcher/disk.raw")
    with open(image, "wb") as disk:
        disk.truncate(64 << 20)
        disk.seek(446)  # one FAT16 (LBA) partition from sector 2048 to the end
        disk.write(struct.pack("<BBBBBBBBII", 0, 0, 0, 0, 0x0C, 0, 0, 0, 2048, (64 << 11) - 2048))
        disk.seek(510)
        disk.write(b"\x55\xaa")
    output = sandbox(
        "set -e; cd /var/lib/esxi-watcher; "
        "qemu-nbd --socket=/tmp/q.sock --format=raw --shared=10 disk.raw & "
        "for i in 1 2 3 4 5 6 7 8 9 10; do test -S /tmp/q.sock && break; sleep 0.5; done; "
        "mkdir -p /tmp/p1 /tmp/boot; "
        "nbdfuse /tmp/p1 --command nbdkit -s nbd socket=/tmp/q.sock --filter=partition "
        "partition=1 & "
        "for i in 1 2 3 4 5 6 7 8 9 10; do test -f /tmp/p1/nbd && break; sleep 0.5; done; "
        "mkfs.vfat /tmp/p1/nbd >/dev/null; "
        "fusefat /tmp/p1/nbd /tmp/boot -o rw+ -s; "
        "echo curtin-hooks-written-through-fuse > /tmp/boot/hooks.txt; sync -f /tmp/boot; "
        "sed 's/^/read back: /' /tmp/boot/hooks.txt; "
        "fusermount -z -u /tmp/boot; sleep 1; fusermount -z -u /tmp/p1; sleep 1; "
        "kill %1 2>/dev/null || true",
        "packer-maas fuse-nbd chain under the sandbox")
    assert "read back: curtin-hooks-written-through-fuse" in output
    # The bytes went through fusefat, nbdfuse, nbdkit and qemu-nbd into the disk image.
    assert b"curtin-hooks-written-through-fuse" in image.read_bytes()


def test_service_builds_with_qemu_and_fuse(sandbox, tmp_path):
    """The installed, sandboxed service runs a real qemu build (TCG) through packer-maas's
    fuse-nbd post-processing and registers the disk whose partition 1 holds the curtin hooks."""
    container = sandbox.container
    started = time.monotonic()
    shutil.copytree(REPO / "tests/templates/qemu", container.path("/opt/packer-maas-qemu"),
                    dirs_exist_ok=True)
    installer = build_installer_iso(tmp_path / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")
    with MaasSimulator(tmp_path / "maas", mode="3.8").start() as simulator:
        key_file = container.path("/etc/esxi-watcher/maas-api-key")
        key_file.write_text(simulator.api_key + "\n")
        key_file.chmod(0o600)
        config = {
            "build": {"template_dir": "/opt/packer-maas-qemu/vmware-esxi", "timeout": "10m",
                      "command": ["packer", "build", "-var", "vmware_esxi_iso_path={iso}",
                                  "-var", "accelerator=tcg", "vmware-esxi.json"]},
            "maas": {"url": simulator.url},
            "watch": {"settle": "1s"},
        }
        container.path("/etc/esxi-watcher/config.yaml").write_text(yaml.safe_dump(config))
        container.run(["systemctl", "restart", "esxi-watcher"], timeout=120)
        shutil.copy(installer, container.path(f"/var/lib/esxi-drop/{installer.name}"))
        deadline = time.monotonic() + 300
        while not any(resource.get("name") == "esxi/8.0.2-22380479"
                      for resource in simulator.resources()):
            assert time.monotonic() < deadline, container.run(
                ["journalctl", "-u", "esxi-watcher", "--no-pager", "-n", "40"]).stdout
            time.sleep(1)
        served = tmp_path / "served.dd.gz"
        served.write_bytes(simulator.file_bytes("esxi/8.0.2-22380479"))
    with sandbox.ci_log():
        container.show(["systemctl", "status", "--no-pager", "-l", "esxi-watcher"],
                       "systemctl status esxi-watcher (after a qemu build)")
        print(f"qemu build through the service: {time.monotonic() - started:.1f} s")
    hooks = (REPO / "tests/templates/qemu/vmware-esxi/curtin/curtin-hooks").read_bytes()
    assert read_partition_file(served, "curtin/curtin-hooks") == hooks
    assert unit_restarts(container) == "0"
    container.run(["systemctl", "stop", "esxi-watcher"], timeout=150)


def unit_restarts(container: Container) -> str:
    return container.run(["systemctl", "show", "-p", "NRestarts", "--value",
                          "esxi-watcher"]).stdout.strip()
