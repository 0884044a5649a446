"""The unit's sandbox lets through what packer-maas's vmware-esxi builds do, and no more.

Runs the tools of the three template generations (qemu under TCG, qemu-nbd, nbdkit + nbdfuse +
fusefat, mtools, mount) as transient units carrying exactly the [Service] sandbox lines of
systemd/esxi-watcher.service, in a booted Debian 12 container with /dev/fuse and /dev/kvm bound
in. Needs root.
"""

from __future__ import annotations

import struct
import time

import pytest

from tests.system.build_debs import REPO
from tests.system.container import Container, cached_root, install_debs, packages_for

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


@pytest.fixture(scope="module")
def sandbox(debs, ci_log):
    with ci_log():
        container = Container.boot(cached_root(packages_for(debs)),
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
