"""One build at a time on the host: the daemon's build step and `esxi-watcher build` take the same
flock (build.lock_file) before they start Packer.

A build needs the host's KVM, memory and nbd devices (packer-maas's older template hard-codes
/dev/nbd4 and an 8 GiB VM), so a second build waits, saying whose build it waits for. The kernel
drops the lock when its holder ends, however it ends: a kill -9 never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Callable

from esxi_watcher.errors import BuildLockUnavailable
from esxi_watcher.instance import lock_holder

POLL = 1.0  # how often a waiting build tries the lock again


class BuildLock:
    """The host's build lock, held from acquire() until release() or the end of the process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._descriptor: int | None = None

    def acquire(self, stop_event: threading.Event, on_wait: Callable[[str], None] = lambda note: None,
                poll: float = POLL) -> bool:
        """Take the lock, waiting while another build holds it (on_wait gets why, once per holder).
        Return False when stop_event was set meanwhile."""
        descriptor = self._open()
        told = None
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                note = waiting_note(lock_holder(os.fstat(descriptor)))
                if note != told:
                    on_wait(note)
                    told = note
                if stop_event.wait(poll):
                    os.close(descriptor)
                    return False
                continue
            self._descriptor = descriptor
            return True

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def _open(self) -> int:
        try:
            # O_CLOEXEC: build processes must not inherit, and so keep, the lock.
            return os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise BuildLockUnavailable(f"cannot open the build lock {self.path}: {error.strerror} "
                                       f"(see build.lock_file)") from None


def waiting_note(holder: int | None) -> str:
    """Given the pid holding the build lock (None: unknown), return what a waiting build says."""
    who = f"esxi-watcher pid {holder}" if holder is not None else "another esxi-watcher"
    return f"waiting for the build of {who} to finish"
