"""Read the kernel's process and mount tables under /proc: the one reader of them.

Every function takes the root of the tree (default /proc), so tests point it at a prepared tree.
Nothing here signals, starts or changes anything. A process that ends while it is being read is
not an error: the functions answer as if it had never been there (None, an empty answer).

proc(5) gives the formats: stat's comm field is in parentheses and may itself hold spaces and
parentheses; environ and cmdline are NUL-separated bytes; mountinfo escapes space, tab, newline and
backslash in its paths as three-digit octal (\\040); /proc/locks prints a lock's file as
major:minor:inode in hexadecimal, then decimal.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import structlog

log = structlog.get_logger(__name__)

PROC = Path("/proc")

_DEAD_STATES = ("Z", "X", "x")  # zombie, dead (x: the spelling of kernels before 3.13)
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


# --- processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """What esxi-watcher needs of /proc/<pid>/stat. start_time (field 22, clock ticks after boot)
    tells a process from a later one given the same pid."""

    pid: int
    state: str
    pgid: int
    start_time: int

    @property
    def alive(self) -> bool:
        """False for a zombie: it has ended and only waits to be reaped."""
        return self.state not in _DEAD_STATES


def pids(root: Path = PROC) -> list[int]:
    """Given a proc root, return the pids of its processes (threads are not listed).

    Raises OSError when the root cannot be read.
    """
    return [int(name) for name in os.listdir(root) if name.isdigit()]


def read_stat(pid: int, root: Path = PROC) -> Stat | None:
    """Given a pid, return its state, process group and start time, or None if it is gone."""
    try:
        raw = (Path(root) / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ...: the fields after comm start after its last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return Stat(pid, fields[0].decode("ascii"), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def start_time(pid: int, root: Path = PROC) -> int | None:
    """Given a pid, return when its process started (clock ticks after boot), or None if it is gone."""
    stat = read_stat(pid, root)
    return None if stat is None else stat.start_time


def group_members(pgid: int, root: Path = PROC) -> list[int]:
    """Given a process group id, return the pids of its living (not zombie) processes.

    Zombies are left out: they are already dead, and an orphaned zombie waits on whoever reaps
    orphans (PID 1 or a subreaper), not on us.
    """
    members = []
    for pid in pids(root):
        stat = read_stat(pid, root)
        if stat is not None and stat.pgid == pgid and stat.alive:
            members.append(pid)
    return members


def environment_variable(pid: int, name: str, root: Path = PROC) -> str | None:
    """Given a pid and a variable name, return the variable's value in the process's environment
    (as it was when the process started), or None if it is not set, unreadable or the pid is gone."""
    try:
        environ = (Path(root) / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = os.fsencode(name) + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return os.fsdecode(entry[len(prefix) :])
    return None


def command_line(pid: int, root: Path = PROC) -> tuple[str, ...]:
    """Given a pid, return its argv (empty for a kernel thread, a zombie or a pid that is gone).

    Arguments that are not UTF-8 keep their bytes as surrogate escapes (os.fsdecode), so they
    compare equal to paths decoded the same way.
    """
    try:
        raw = (Path(root) / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(os.fsdecode(part) for part in raw.split(b"\0") if part)


def thread_group(tid: int, root: Path = PROC) -> int:
    """Given a thread id, return the pid of the process it belongs to (tid itself if unknown)."""
    try:
        for line in (Path(root) / str(tid) / "status").read_text(errors="replace").splitlines():
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return tid


# --- open files -------------------------------------------------------------------------------


def writers(path: Path, root: Path = PROC) -> Iterator[int]:
    """Given a file, yield the pids of the processes we can see that hold it open for writing.

    A descriptor is matched by the device and inode it refers to, not by its link text, so a
    file renamed (or opened through another name) since it was opened is still found. path itself
    is not followed if it is a symlink. Lazy: stop iterating once an answer is enough.
    """
    try:
        target = os.stat(path, follow_symlinks=False)
    except OSError:
        return
    identity = (target.st_dev, target.st_ino)
    for pid in pids(root):
        process = Path(root) / str(pid)
        try:
            descriptors = os.listdir(process / "fd")
        except OSError:
            continue  # gone, or not ours to look into
        if any(_is_writer(process, fd, identity) for fd in descriptors):
            yield pid


def _is_writer(process: Path, fd: str, identity: tuple[int, int]) -> bool:
    try:
        opened = os.stat(process / "fd" / fd)
        if (opened.st_dev, opened.st_ino) != identity:
            return False
        info = (process / "fdinfo" / fd).read_text()
    except OSError:
        return False
    for line in info.splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8) & (os.O_WRONLY | os.O_RDWR) != 0
    return False


# --- mounts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo, escapes decoded."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: Path
    options: str
    fstype: str
    source: str
    super_options: str = ""

    @property
    def is_fuse(self) -> bool:
        return self.fstype in ("fuse", "fuseblk") or self.fstype.startswith(("fuse.", "fuseblk."))


def unescape(field: bytes) -> str:
    """Given a mountinfo field, return it with its octal escapes (\\040 for a space) decoded.

    Bytes that are not UTF-8 are kept as surrogate escapes (os.fsdecode), as paths are elsewhere.
    """
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda match: bytes([int(match.group(1), 8)]), field))


def parse_mountinfo(content: bytes) -> list[Mount]:
    """Given the bytes of a mountinfo file, return its mounts (optional fields end at '-')."""
    mounts = []
    for line in content.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) < 10:
            continue
        try:
            separator = fields.index(b"-", 6)
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    major_minor=fields[2].decode(),
                    root=unescape(fields[3]),
                    mount_point=Path(unescape(fields[4])),
                    options=fields[5].decode(),
                    fstype=unescape(fields[separator + 1]),
                    source=unescape(fields[separator + 2]),
                    super_options=unescape(b" ".join(fields[separator + 3 :])),
                )
            )
        except (ValueError, IndexError):
            log.warning("procfs.mountinfo.bad_line", line=line[:200].decode("utf-8", "replace"))
    return mounts


def read_mounts(root: Path = PROC) -> list[Mount]:
    """Return the mounts this process sees (root/self/mountinfo). Raises OSError if unreadable."""
    return parse_mountinfo((Path(root) / "self" / "mountinfo").read_bytes())


# --- file locks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileLock:
    """A lock held (not waited for) as /proc/locks lists it: kind is FLOCK, POSIX or OFDLCK;
    device is major:minor in hexadecimal as the kernel prints it; pid is None for an OFD lock."""

    kind: str
    pid: int | None
    device: str
    inode: int


def read_locks(root: Path = PROC) -> list[FileLock]:
    """Return the file locks held on this host, or an empty list when root/locks is unreadable."""
    try:
        text = (Path(root) / "locks").read_text(errors="replace")
    except OSError:
        return []
    locks = []
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4321 08:01:131090 0 EOF"; waiters read "1: -> FLOCK ...".
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        device, _, inode = fields[5].rpartition(":")
        if not inode.isdigit():
            continue
        pid = int(fields[4]) if fields[4].isdigit() else None
        locks.append(FileLock(fields[1], pid, device, int(inode)))
    return locks
