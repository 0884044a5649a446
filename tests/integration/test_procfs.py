"""procfs: the real /proc of real processes started here, and prepared trees for the odd cases."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esxi_watcher import procfs


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def started():
    """Start real processes, each in its own session; kill what is left at the end."""
    processes: list[subprocess.Popen] = []

    def start(argv, **options) -> subprocess.Popen:
        process = subprocess.Popen(argv, start_new_session=True, **options)
        processes.append(process)
        return process

    yield start
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def dead_pid() -> int:
    """Return the pid of a process that has ended and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- processes: real ones ---------------------------------------------------------------------


def test_stat_command_line_and_environment_of_a_real_process(started, tmp_path):
    # comm comes from the name executed: parentheses and spaces in it must not shift the fields.
    odd_name = tmp_path / "x) 1 (y"
    odd_name.symlink_to(Path(sys.executable).resolve())
    script = "import sys, time; time.sleep(300)"
    environment = {"ESXI_WATCHER_JOB": "job 7", "EMPTY": "", "PATH": os.environ["PATH"]}
    process = started([odd_name, "-c", script, "an argument", b"caf\xe9"], env=environment)
    wait_for(lambda: len(procfs.command_line(process.pid)) == 5)  # exec done

    stat = procfs.read_stat(process.pid)

    assert (stat.pid, stat.pgid, stat.alive) == (process.pid, process.pid, True)
    assert stat.state in ("S", "R")
    assert procfs.start_time(process.pid) == stat.start_time
    assert stat.start_time >= procfs.start_time(os.getpid())
    assert procfs.command_line(process.pid) == (str(odd_name), "-c", script, "an argument", os.fsdecode(b"caf\xe9"))
    assert procfs.environment_variable(process.pid, "ESXI_WATCHER_JOB") == "job 7"
    assert procfs.environment_variable(process.pid, "EMPTY") == ""
    assert procfs.environment_variable(process.pid, "HOME") is None
    assert process.pid in procfs.pids()


def test_group_members_leaves_out_zombies_and_other_groups(started):
    leader = started(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    wait_for(lambda: len(procfs.group_members(leader.pid)) == 3)
    other = started(["sleep", "300"])
    members = procfs.group_members(leader.pid)
    child = max(set(members) - {leader.pid})

    os.kill(child, signal.SIGKILL)  # sh reaps it: gone; the leader killed unreaped: a zombie
    wait_for(lambda: len(procfs.group_members(leader.pid)) == 2)
    leader.send_signal(signal.SIGKILL)
    wait_for(lambda: not procfs.read_stat(leader.pid).alive)

    assert leader.pid in members and other.pid not in members
    assert procfs.read_stat(leader.pid).state == "Z"
    assert procfs.command_line(leader.pid) == ()  # a zombie has no command line
    assert len(procfs.group_members(leader.pid)) == 1
    assert procfs.group_members(other.pid) == [other.pid]


def test_a_vanished_pid_reads_as_absent(tmp_path):
    pid = dead_pid()

    assert procfs.read_stat(pid) is None and procfs.start_time(pid) is None
    assert procfs.command_line(pid) == ()
    assert procfs.environment_variable(pid, "PATH") is None
    assert procfs.thread_group(pid) == pid
    assert procfs.group_members(pid) == []
    with pytest.raises(OSError):
        procfs.pids(tmp_path / "no-proc")


# --- open files -------------------------------------------------------------------------------


WRITE_AND_WAIT = "import sys, time; f = open(sys.argv[1], sys.argv[2]); print(flush=True); time.sleep(300)"


def test_writers_are_found_by_identity_and_mode(started, tmp_path):
    written, read, renamed = tmp_path / "written.iso", tmp_path / "read.iso", tmp_path / "renamed.iso"
    read.write_bytes(b"r")
    renamed.write_bytes(b"n")
    processes = {
        "writer": started([sys.executable, "-c", WRITE_AND_WAIT, written, "wb"], stdout=subprocess.PIPE),
        "reader": started([sys.executable, "-c", WRITE_AND_WAIT, read, "rb"], stdout=subprocess.PIPE),
        "appender": started([sys.executable, "-c", WRITE_AND_WAIT, renamed, "r+b"], stdout=subprocess.PIPE),
    }
    for process in processes.values():
        process.stdout.readline()  # the file is open
    moved = tmp_path / "moved.iso"
    os.rename(renamed, moved)  # the descriptor still refers to it under its new name
    link = tmp_path / "link.iso"
    link.symlink_to(written)

    assert list(procfs.writers(written)) == [processes["writer"].pid]
    assert list(procfs.writers(read)) == []
    assert list(procfs.writers(moved)) == [processes["appender"].pid]
    assert list(procfs.writers(link)) == []  # the link itself is not open; it is not followed
    assert list(procfs.writers(tmp_path / "absent.iso")) == []
    processes["writer"].kill()
    processes["writer"].wait()
    assert list(procfs.writers(written)) == []


def test_read_mounts_sees_a_real_mount_with_escaped_characters(tmp_path):
    point = tmp_path / "with space\tand tab\\and backslash"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "src with space", str(point)], check=True)
    try:
        found = [m for m in procfs.read_mounts() if m.mount_point == point]
    finally:
        subprocess.run(["umount", str(point)], check=True)

    assert [(m.fstype, m.source, m.is_fuse) for m in found] == [("tmpfs", "src with space", False)]
    assert not any(m.mount_point == point for m in procfs.read_mounts())
    assert any(m.mount_point == Path("/") for m in procfs.read_mounts())


# --- file locks -------------------------------------------------------------------------------


def test_read_locks_finds_a_real_flock_of_another_process(started, tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    holder = started([sys.executable, "-c",
                      "import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDONLY); "
                      "fcntl.flock(d, fcntl.LOCK_EX); print(flush=True); time.sleep(300)", folder],
                     stdout=subprocess.PIPE)
    holder.stdout.readline()
    status = os.stat(folder)
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}"

    ours = [lock for lock in procfs.read_locks() if lock.inode == status.st_ino]

    assert procfs.FileLock("FLOCK", holder.pid, device, status.st_ino) in ours
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(descriptor)


