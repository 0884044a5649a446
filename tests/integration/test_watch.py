"""The drop-dir watcher with real inotify and real writers (cp, rsync-style rename, a slow writer)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esxi_watcher.watch import DropWatcher

SETTLE = 0.6


@pytest.fixture
def watcher(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    watching = DropWatcher(drop, settle=SETTLE)
    watching.start()
    watching.rescan_if_requested()
    yield watching
    watching.stop()


def collect(watcher: DropWatcher, seconds: float, known=frozenset()) -> list[tuple[float, Path]]:
    """Poll ready() like the daemon does; return (time, path) of every hand-out."""
    found = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        watcher.ensure_watching()
        watcher.rescan_if_requested()
        for path in watcher.ready(known):
            found.append((time.monotonic(), path))
        time.sleep(0.1)
    return found


def test_slow_writer_is_not_handed_out_before_it_closes(watcher, tmp_path):
    target = watcher.drop_dir / "slow.iso"
    # Writes 6 pieces, 1.1 s apart (each pause is longer than the settle period), then closes.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "f = open(sys.argv[1], 'wb')\n"
        "for i in range(6):\n"
        "    f.write(b'x' * 65536); f.flush(); time.sleep(1.1)\n"
        "f.close()\n"), str(target)])
    handed_out_while_writing = []
    found = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not found:
        still_writing = writer.poll() is None
        ready = watcher.ready()
        if still_writing:
            handed_out_while_writing += ready
        found += ready
        time.sleep(0.1)
    writer.wait(timeout=30)
    assert handed_out_while_writing == []
    assert found == [target]
    assert target.stat().st_size == 6 * 65536


def test_cp_is_handed_out_once_after_settling(watcher, tmp_path):
    source = tmp_path / "source.iso"
    source.write_bytes(os.urandom(3 << 20))
    subprocess.run(["cp", str(source), str(watcher.drop_dir / "copied.iso")], check=True)
    found = collect(watcher, 3)
    assert [path.name for _, path in found] == ["copied.iso"]


def test_rsync_style_temp_then_rename(watcher, tmp_path):
    temp = watcher.drop_dir / ".esxi.iso.aB3xZ9"
    temp.write_bytes(b"y" * 100000)
    early = collect(watcher, 1.5)
    assert early == []  # a dot-file is never a candidate
    os.rename(temp, watcher.drop_dir / "esxi.iso")
    found = collect(watcher, 2.5)
    assert [path.name for _, path in found] == ["esxi.iso"]


def test_files_present_at_start_are_picked_up(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "early.iso").write_bytes(b"z" * 1000)
    watching = DropWatcher(drop, settle=SETTLE)
    watching.start()
    try:
        found = collect(watching, 2.5)
    finally:
        watching.stop()
    assert [path.name for _, path in found] == ["early.iso"]


def test_known_files_and_outcome_dirs_are_skipped(watcher):
    (watcher.drop_dir / "done").mkdir()
    (watcher.drop_dir / "notes").mkdir()
    known = watcher.drop_dir / "known.iso"
    known.write_bytes(b"k")
    from esxi_watcher.watch import file_identity

    found = collect(watcher, 2.5, known={file_identity(os.lstat(known))})
    assert found == []


def test_symlink_dir_and_fifo_are_handed_out_without_being_opened(watcher, tmp_path):
    os.symlink("/etc/shadow", watcher.drop_dir / "link.iso")
    (watcher.drop_dir / "folder.iso").mkdir()
    os.mkfifo(watcher.drop_dir / "pipe.iso")
    found = collect(watcher, 2.5)
    assert sorted(path.name for _, path in found) == ["folder.iso", "link.iso", "pipe.iso"]


def test_drop_dir_removed_and_recreated_is_watched_again(watcher, tmp_path):
    shutil.rmtree(watcher.drop_dir)
    watcher.ensure_watching()
    watcher.drop_dir.mkdir()
    watcher.ensure_watching()
    (watcher.drop_dir / "after.iso").write_bytes(b"a" * 10)
    found = collect(watcher, 2.5)
    assert [path.name for _, path in found] == ["after.iso"]


def test_inotify_queue_overflow_is_healed_by_a_full_rescan(tmp_path):
    limit = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = limit.read_text()
    drop = tmp_path / "drop"
    drop.mkdir()
    limit.write_text("16\n")  # read when the inotify instance is made: only this watcher gets it
    try:
        watching = DropWatcher(drop, settle=SETTLE)
        watching.start()
    finally:
        limit.write_text(saved)
    try:
        watching.rescan_if_requested()
        names = {f"flood-{number}.iso" for number in range(400)}
        for name in names:
            (drop / name).write_bytes(b"x")
        found = collect(watching, 4)
    finally:
        watching.stop()
    assert {path.name for _, path in found} == names
    assert sum(watching.rescans.values()) >= 2  # start-up, then the healing one(s)


def test_settle_runs_from_the_files_own_change_time_and_wakes_the_loop(watcher, tmp_path):
    """watchdog delivers events up to 0.5 s late behind a move out of the drop dir (the daemon moves
    files to done/): the file must still be handed out one settle period after it was written."""
    woken = []
    watcher.on_change = lambda: woken.append(time.monotonic())
    (watcher.drop_dir / "done").mkdir()
    leaving = watcher.drop_dir / "leaving.iso"
    leaving.write_bytes(b"l")
    collect(watcher, SETTLE + 0.3)
    os.rename(leaving, watcher.drop_dir / "done" / "leaving.iso")
    target = watcher.drop_dir / "new.iso"
    target.write_bytes(b"n" * 1000)
    written = time.monotonic()
    deadline = None
    while time.monotonic() < written + 5:
        deadline = deadline or watcher.next_deadline()
        if watcher.ready():
            break
        time.sleep(0.01)
    handed_out = time.monotonic() - written
    assert SETTLE - 0.05 <= handed_out < SETTLE + 0.3
    assert woken and deadline is not None
    assert watcher.next_deadline() is None  # nothing left to look at: the loop may sleep
