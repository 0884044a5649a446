"""procfs on prepared trees (odd stat lines, descriptors, locks, mountinfo) and on this process's
own threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from esxi_watcher import procfs


# A mountinfo with optional fields, escaped space/tab/newline/backslash, non-UTF-8 bytes and an
# empty source field; tests/unit/test_host.py selects from it too.
MOUNTINFO = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"40 22 43:1 / /tmp/tmp.AbC rw,relatime shared:5 master:2 - vfat /dev/nbd4p1 rw,fmask=0022\n"
    b"41 22 43:6 / /srv/esxi\\040images/my\\011tab\\134back rw - vfat /dev/nbd4p6 rw\n"
    b"42 22 0:39 / /tmp/packer-maas-Xy12/p1 rw,nosuid,nodev - fuse /dev/fuse rw,user_id=0\n"
    b"43 22 0:40 / /tmp/packer-maas-Xy12/boot rw - fuse.fusefat fusefat rw,user_id=0\n"
    b"44 43 0:41 / /tmp/packer-maas-Xy12/boot/inner rw - fuse.nbdfuse nbdfuse rw\n"
    b"45 22 0:42 / /var/lib/esxi-watcher/work/job1/mnt\\012line rw - tmpfs tmpfs rw\n"
    b"46 22 0:43 / /var/lib/esxi-watcher/work/job1-other rw - fuse.sshfs host:/x rw\n"
    b"47 22 0:44 / /tmp/caf\xc3\xa9\\040\xff rw - tmpfs  rw\n"
    b"48 22 43:32 / /mnt/other rw - ext4 /dev/nbd2 rw\n"
    b"49 22 0:45 / /tmp/packer-maas-Xy12 rw - tmpfs tmpfs rw\n"
)


def stat_line(pid: int, comm: bytes, state: str, pgid: int, start_time: int) -> bytes:
    """A /proc/<pid>/stat line as the kernel writes it (52 fields)."""
    after = [state, "1", str(pgid), str(pgid)] + ["0"] * 15 + [str(start_time)] + ["0"] * 30
    return b"%d (%s) %s\n" % (pid, comm, " ".join(after).encode())


def prepared_proc(root: Path, processes: dict[int, dict[str, bytes]]) -> Path:
    """Write root/<pid>/<file> for {pid: {file: content}}; return root."""
    for pid, files in processes.items():
        (root / str(pid)).mkdir(parents=True)
        for name, content in files.items():
            (root / str(pid) / name).write_bytes(content)
    return root


def test_thread_group_of_a_thread_is_its_process():
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (ready.set(), stop.wait()))
    thread.start()
    ready.wait()
    try:
        assert thread.native_id != os.getpid()
        assert procfs.thread_group(thread.native_id) == os.getpid()
    finally:
        stop.set()
        thread.join()
    assert procfs.thread_group(os.getpid()) == os.getpid()


# --- processes: prepared trees ----------------------------------------------------------------


def test_prepared_tree_with_odd_comm_short_stat_and_missing_files(tmp_path):
    root = prepared_proc(tmp_path / "proc", {
        10: {"stat": stat_line(10, b"a) Z 1 (b", "S", 10, 5000),
             "environ": b"A=1\0ESXI_WATCHER_JOB=j=1\0B\0",
             "cmdline": b"qemu-nbd\0--socket\0\0/tmp/x y\0"},
        11: {"stat": stat_line(11, b"zombie", "Z", 10, 5001)},
        12: {"stat": stat_line(12, b"old", "x", 10, 5002)},
        13: {"stat": b"13 (cut short) S 1\n"},
        14: {},  # vanished between the listing and the read
    })

    assert set(procfs.pids(root)) == {10, 11, 12, 13, 14}
    assert procfs.read_stat(10, root) == procfs.Stat(10, "S", 10, 5000)
    assert [procfs.read_stat(pid, root).alive for pid in (10, 11, 12)] == [True, False, False]
    assert procfs.read_stat(13, root) is None and procfs.read_stat(14, root) is None
    assert procfs.group_members(10, root) == [10]
    assert procfs.environment_variable(10, "ESXI_WATCHER_JOB", root) == "j=1"
    assert procfs.environment_variable(10, "B", root) is None
    assert procfs.command_line(10, root) == ("qemu-nbd", "--socket", "/tmp/x y")
    assert procfs.command_line(11, root) == ()


def test_writers_in_a_prepared_tree_read_the_flags_of_the_matching_descriptor(tmp_path):
    target = tmp_path / "drop.iso"
    target.write_bytes(b"x")
    other = tmp_path / "other"
    other.write_bytes(b"y")
    root = tmp_path / "proc"
    # flags in octal as fdinfo prints them: O_RDWR, O_RDONLY|O_CLOEXEC, O_WRONLY; none at all.
    for pid, fds in {20: {"0": (other, "0100002"), "1": (target, "02100000")},
                     21: {"3": (target, "0100001")},
                     22: {"3": (target, None)}}.items():
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "fdinfo").mkdir()
        for fd, (opened, flags) in fds.items():
            (root / str(pid) / "fd" / fd).symlink_to(opened)
            info = "pos:\t0\n" + (f"flags:\t{flags}\n" if flags else "")
            (root / str(pid) / "fdinfo" / fd).write_text(info)
    (root / "23").mkdir()  # no fd folder (gone, or not ours)

    assert list(procfs.writers(target, root)) == [21]
    assert list(procfs.writers(other, root)) == [20]


# --- mounts -----------------------------------------------------------------------------------


def test_mountinfo_escapes_and_optional_fields_are_parsed():
    mounts = {mount.mount_id: mount for mount in procfs.parse_mountinfo(MOUNTINFO)}

    assert len(mounts) == 11
    assert mounts[40].mount_point == Path("/tmp/tmp.AbC")
    assert (mounts[40].fstype, mounts[40].source, mounts[40].major_minor) == ("vfat", "/dev/nbd4p1", "43:1")
    assert mounts[41].mount_point == Path("/srv/esxi images/my\ttab\\back")
    assert mounts[45].mount_point == Path("/var/lib/esxi-watcher/work/job1/mnt\nline")
    assert mounts[47].mount_point == Path(os.fsdecode(b"/tmp/caf\xc3\xa9 \xff"))
    assert mounts[47].source == ""  # an empty source field is kept, not merged with the next
    assert [mounts[n].is_fuse for n in (42, 43, 44, 45, 46)] == [True, True, True, False, True]
    assert mounts[40].options == "rw,relatime" and mounts[40].super_options == "rw,fmask=0022"
    assert (mounts[44].parent_id, mounts[44].root) == (43, "/")
    assert procfs.unescape(b"a\\040b\\\\c\\12") == "a b\\\\c\\12"  # only three-digit escapes


def test_a_bad_mountinfo_line_is_logged_and_skipped():
    content = b"x 22 8:1 / /a rw - ext4 /dev/sda1 rw\n50 22 8:1 / /b rw no-separator here at all\n" + MOUNTINFO

    with capture_logs() as logs:
        mounts = procfs.parse_mountinfo(content)

    assert len(mounts) == 11
    assert [entry["event"] for entry in logs] == ["procfs.mountinfo.bad_line"] * 2


def test_read_mounts_reads_a_prepared_tree_and_raises_when_it_cannot(tmp_path):
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "mountinfo").write_bytes(MOUNTINFO)

    assert [m.mount_id for m in procfs.read_mounts(tmp_path / "proc")] == [22, *range(40, 50)]
    with pytest.raises(OSError):
        procfs.read_mounts(tmp_path / "nowhere")


def test_read_locks_skips_waiters_and_keeps_ofd_locks_without_a_pid(tmp_path):
    (tmp_path / "locks").write_text(
        "1: FLOCK  ADVISORY  WRITE 4321 08:01:131090 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 4400 08:01:131090 0 EOF\n"
        "2: OFDLCK ADVISORY  READ  -1 00:2e:77 0 EOF\n"
        "3: POSIX  ADVISORY  WRITE 99 fd:00:12 0 EOF\n"
        "4: garbage\n"
    )

    assert procfs.read_locks(tmp_path) == [
        procfs.FileLock("FLOCK", 4321, "08:01", 131090),
        procfs.FileLock("OFDLCK", None, "00:2e", 77),
        procfs.FileLock("POSIX", 99, "fd:00", 12),
    ]
    assert procfs.read_locks(tmp_path / "absent") == []
