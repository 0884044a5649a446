"""One daemon per state dir and per drop dir.

The daemon holds an exclusive flock on an open descriptor of each folder. There is no lock file
that someone could delete, and the kernel drops the lock when the process ends, however it ends:
a kill -9 never leaves a stale lock. A second daemon finds the holder's pid in /proc/locks.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from esxi_watcher import procfs
from esxi_watcher.errors import AlreadyRunning


class InstanceLock:
    """The flocks of one daemon; they last until release() or the end of the process."""

    def __init__(self) -> None:
        self._descriptors: list[int] = []

    def claim(self, key: str, folder: Path, proc_root: Path = procfs.PROC) -> None:
        """Lock this folder for this process, or raise AlreadyRunning naming who holds it."""
        # O_CLOEXEC (os.open's default): build processes must not inherit, and so keep, the lock.
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.fstat(descriptor), proc_root)
            os.close(descriptor)
            raise AlreadyRunning(key, folder, holder) from None
        self._descriptors.append(descriptor)

    def release(self) -> None:
        while self._descriptors:
            os.close(self._descriptors.pop())


def claim_folders(folders: list[tuple[str, Path]], proc_root: Path = procfs.PROC) -> InstanceLock:
    """Lock every (config key, folder) for this process; on a conflict release them all and raise."""
    lock = InstanceLock()
    try:
        for key, folder in folders:
            lock.claim(key, folder, proc_root)
    except BaseException:
        lock.release()
        raise
    return lock


def describe_holder(folder_stat: os.stat_result, proc_root: Path = procfs.PROC) -> str:
    """Given a locked folder's stat, return 'pid N (command line)' of the process holding its flock."""
    pid = lock_holder(folder_stat, proc_root)
    if pid is None:
        return "a process this one cannot see holds its lock"
    return f"pid {pid} ({command_line(pid, proc_root)})"


def lock_holder(folder_stat: os.stat_result, proc_root: Path = procfs.PROC) -> int | None:
    """Return the pid holding an flock on the file with this stat, from /proc/locks, or None."""
    device = f"{os.major(folder_stat.st_dev):02x}:{os.minor(folder_stat.st_dev):02x}"
    flocks = [lock for lock in procfs.read_locks(proc_root)
              if lock.kind == "FLOCK" and lock.pid is not None and lock.inode == folder_stat.st_ino]
    for lock in flocks:
        if lock.device == device:
            return lock.pid
    # Some file systems (btrfs subvolumes, overlays) show a device number stat() does not.
    return flocks[0].pid if len(flocks) == 1 else None


def command_line(pid: int, proc_root: Path = procfs.PROC) -> str:
    """Given a pid, return its command line as one line of text for a message."""
    arguments = procfs.command_line(pid, proc_root)
    text = " ".join(os.fsencode(argument).decode(errors="replace") for argument in arguments)
    return text or "command line unreadable"
