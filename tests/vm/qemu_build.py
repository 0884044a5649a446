"""What the real-VM tests (and the daemon tests built on them) need besides the ISO: the qemu test
template, the command that runs it under TCG, and checks of what a build wrote or left behind."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from tests.paths import TEMPLATES

TEMPLATE_DIR = TEMPLATES / "qemu" / "vmware-esxi"
# config build.command for the test template: the daemon's usual -var, plus TCG (KVM cannot run
# guests on these machines, see esxi_watcher.kvm).
TCG_BUILD_COMMAND = ("packer", "build", "-var", "vmware_esxi_iso_path={iso}",
                     "-var", "accelerator=tcg", "vmware-esxi.json")
SERIAL_LOG = "serial.log"  # written by qemu in the template copy (qemuargs -serial file:serial.log)
BUILD_PROGRAMS = ("packer", "qemu-system-x86_64", "qemu-nbd", "nbdfuse", "nbdkit", "fusefat")


def serial_log(workdir: Path) -> Path:
    """Given a build's workdir, return where its guest's serial console is written."""
    return Path(workdir) / TEMPLATE_DIR.name / SERIAL_LOG


def first_partition(disk: bytes) -> tuple[int, int, int]:
    """Given a raw disk's first sector(s), return partition 1's (type, byte offset, byte size)."""
    if disk[510:512] != b"\x55\xaa":
        raise ValueError("no MBR boot signature")
    kind, start, count = struct.unpack_from("<4xB3xII", disk, 446)
    return kind, start * 512, count * 512


def read_partition_file(artifact: Path, name: str) -> bytes:
    """Given a vmware-esxi.dd.gz and a path inside its FAT partition 1, return that file's bytes."""
    with tempfile.TemporaryDirectory(prefix="esxi-watcher-disk-") as scratch:
        image = Path(scratch) / "disk.img"
        with gzip.open(artifact, "rb") as source, open(image, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        _, offset, _ = first_partition(image.read_bytes()[:512])
        # fusefat leaves FAT[1] = 0x8000 (fsck.fat finds nothing wrong; mtools' own check objects)
        result = subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::/{name}"],
                                capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    if result.returncode != 0:
        raise FileNotFoundError(f"{name} in partition 1: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def sector(artifact: Path, number: int) -> bytes:
    """Given a vmware-esxi.dd.gz, return one 512-byte sector of the disk."""
    with gzip.open(artifact, "rb") as source:
        source.seek(number * 512)
        return source.read(512)


def leftover_processes(*needles: str, job_id: str | None = None) -> list[str]:
    """Return live build processes (BUILD_PROGRAMS) whose command line names one of the needles or
    whose environment carries the job's ESXI_WATCHER_JOB marker, as 'pid: command' lines."""
    marker = f"ESXI_WATCHER_JOB={job_id}".encode() if job_id else None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "stat").read_text()
        except OSError:
            continue
        if not command or status[status.rfind(")") + 2] in "ZX":  # zombies are not running
            continue
        text = " ".join(part.decode(errors="replace") for part in command if part)
        if os.path.basename(command[0].decode(errors="replace")) not in BUILD_PROGRAMS:
            continue
        if (marker and marker in environment) or any(needle in text for needle in needles):
            found.append(f"{entry.name}: {text}")
    return found


def fuse_mounts() -> list[str]:
    """Return the mount points of FUSE file systems now mounted."""
    mounts = []
    with open("/proc/self/mounts", encoding="utf-8") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 2 and fields[2].startswith("fuse") and fields[2] != "fusectl":
                mounts.append(fields[1])
    return mounts
