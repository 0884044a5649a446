"""The machine a build runs on: the drop and state dirs, KVM, FUSE, memory and disk space."""

from __future__ import annotations

import grp
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator

from esxi_watcher import template_needs as needs
from esxi_watcher.config import Config
from esxi_watcher.doctor.verdict import FAIL, PASS, WARN, Check
from esxi_watcher.intake import human_size

# The Debian package's group for the drop dir and the mode postinst gives it (setgid, group-writable).
DROP_GROUP = "esxi-drop"
DROP_MODE = 0o2775
TYPICAL_ISO_SIZE = 700 << 20  # an ESXi 8/9 installer ISO, when none waits in the drop dir


def folders(config: Config) -> Iterator[Check]:
    """Given the config, yield whether the drop and state dirs exist and are writable, and who may drop ISOs."""
    for label, folder in (("drop dir", config.drop_dir), ("state dir", config.state_dir)):
        if not folder.is_dir():
            yield Check(label, FAIL, f"{folder} does not exist", f"mkdir -p {folder} (the package's postinst "
                                                                  f"makes the default ones)")
        elif not os.access(folder, os.W_OK):
            yield Check(label, FAIL, f"{folder} is not writable by this user", f"run doctor as the service "
                                                                               f"does (root), or chown {folder}")
        else:
            yield Check(label, PASS, f"{folder} is writable")
    if config.drop_dir.is_dir():
        yield _drop_dir_access(config.drop_dir)


def _drop_dir_access(folder: Path) -> Check:
    """Whether admins other than root can drop ISOs: the folder's group and mode."""
    info = folder.stat()
    mode = stat.S_IMODE(info.st_mode)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    shown = f"{folder} is {group}-group, mode {mode:04o}"
    fix = f"chgrp {DROP_GROUP} {folder} && chmod {DROP_MODE:04o} {folder}; add admins with `adduser NAME {DROP_GROUP}`"
    if not _group_exists(DROP_GROUP):
        fix = f"addgroup --system {DROP_GROUP} && " + fix
    if mode & stat.S_IWOTH:
        return Check("drop dir access", WARN, f"{shown}: anyone on the host may drop files", fix)
    if group != DROP_GROUP or not mode & stat.S_IWGRP:
        return Check("drop dir access", WARN, f"{shown}: only its owner can drop ISOs", fix)
    if not mode & stat.S_ISGID:
        return Check("drop dir access", WARN, f"{shown}: new files do not keep the group (no setgid)",
                     f"chmod g+s {folder}")
    return Check("drop dir access", PASS, f"{shown}: members of {group} can drop ISOs")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def kvm(config: Config) -> Iterator[Check]:
    """Given the config, yield whether a guest runs under KVM when the template asks for it."""
    from esxi_watcher import kvm

    if not kvm.template_wants_kvm(config.build.template_dir, config.build.command):
        yield Check("KVM", PASS, "the template does not ask for it")
        return
    verdict = kvm.kvm_can_run_guests(cache_dir=config.state_dir)
    if verdict.ok:
        yield Check("KVM", PASS, "/dev/kvm runs guests")
    else:
        yield Check("KVM", FAIL, verdict.reason, "enable virtualisation (VT-x/AMD-V) in the firmware or "
                                                  "the hypervisor, modprobe kvm_intel or kvm_amd")


def fuse(config: Config) -> Iterator[Check]:
    """2023+ templates mount the built disk through FUSE (scripts/fuse-nbd: nbdfuse, fusefat)."""
    wanted = needs.mentions(config.build.template_dir, "fuse-nbd")
    try:
        descriptor = os.open("/dev/fuse", os.O_RDWR)
    except OSError as error:
        if wanted:
            yield Check("FUSE", FAIL, f"/dev/fuse cannot be opened: {error.strerror}",
                        "modprobe fuse; in a container, pass /dev/fuse in")
        else:
            yield Check("FUSE", PASS, f"/dev/fuse cannot be opened ({error.strerror}); the template does not use it")
        return
    os.close(descriptor)
    yield Check("FUSE", PASS, "/dev/fuse opens" + ("" if wanted else " (the template does not use it)"))


def _meminfo() -> dict[str, int]:
    """Given /proc/meminfo, return its fields in bytes (MemTotal, MemAvailable, ...)."""
    fields = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return fields


def memory(config: Config) -> Iterator[Check]:
    """Given the config, yield whether the host has the memory the template gives its VM."""
    if needs.generation(config.build.template_dir) == "none":
        return
    mib, source = needs.vm_memory_mib(config.build.template_dir)
    wanted = mib << 20
    info = _meminfo()
    total, available = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    shown = f"the VM takes {human_size(wanted)} ({source}); {human_size(available)} available of {human_size(total)}"
    if wanted > total:
        yield Check("memory", FAIL, shown, "a host with more memory, or lower the template's memory "
                                           "(ESXi's installer needs 8 GiB)")
    elif wanted > available:
        yield Check("memory", WARN, shown, "stop what takes the memory before a build, or add memory")
    else:
        yield Check("memory", PASS, shown)


def disk(config: Config) -> Iterator[Check]:
    """Room in state_dir for one build: a copy of the ISO's worth, the VM's disk, and the artifact."""
    from esxi_watcher import build

    if not config.state_dir.is_dir():
        return
    iso_size, iso_source = _largest_waiting_iso(config.drop_dir)
    disk = build.template_disk_size(config.build.template_dir)
    artifact = iso_size  # a compressed fresh ESXi install is about its ISO's size
    needed = iso_size + disk + artifact
    free = shutil.disk_usage(config.state_dir).free
    shown = (f"{human_size(free)} free in {config.state_dir}; a build needs about {human_size(needed)} "
             f"({iso_source} {human_size(iso_size)} + the template's disk {human_size(disk)} + the image)")
    if free < needed:
        yield Check("disk", FAIL, shown, f"free space in {config.state_dir} (`esxi-watcher forget JOB` drops "
                                          f"kept images) or move state_dir to a larger file system")
    else:
        yield Check("disk", PASS, shown)


def _largest_waiting_iso(drop_dir: Path) -> tuple[int, str]:
    """The size of the largest ISO waiting in the drop dir (no symlinks followed), or a typical one."""
    largest = 0
    try:
        with os.scandir(drop_dir) as entries:
            for entry in entries:
                if entry.name.lower().endswith(".iso") and entry.is_file(follow_symlinks=False):
                    largest = max(largest, entry.stat(follow_symlinks=False).st_size)
    except OSError:
        pass
    return (largest, "the largest ISO waiting") if largest else (TYPICAL_ISO_SIZE, "a typical ESXi ISO")
