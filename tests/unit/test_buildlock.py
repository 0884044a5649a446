"""The host's build lock: a second build waits, naming whose build it waits for."""

from __future__ import annotations

import os
import threading

from esxi_watcher.buildlock import BuildLock


def test_a_second_build_waits_for_the_first_and_gets_the_lock_once_it_ends(tmp_path):
    path = tmp_path / "build.lock"
    first, second = BuildLock(path), BuildLock(path)
    assert first.acquire(threading.Event())
    notes: list[str] = []
    stop = threading.Event()
    stop.set()  # gives up at its first wait
    assert not second.acquire(stop, on_wait=notes.append, poll=0.01)
    assert notes == [f"waiting for the build of esxi-watcher pid {os.getpid()} to finish"]
    first.release()
    assert second.acquire(threading.Event(), on_wait=notes.append)
    assert len(notes) == 1
    second.release()


def test_a_lock_file_that_cannot_be_opened_says_which_and_why(tmp_path):
    import pytest

    from esxi_watcher.errors import BuildLockUnavailable

    with pytest.raises(BuildLockUnavailable, match=r"cannot open the build lock .*/nowhere/build.lock: No such file"):
        BuildLock(tmp_path / "nowhere" / "build.lock").acquire(threading.Event())
