"""What each worker is doing now, for systemd's status line: one slot per worker.

A worker shows its work through a lease on its own slot. Ending the lease clears the slot and
disowns it: whatever a helper thread of that work still says afterwards (a build's console poll,
a late progress callback) is dropped, so the status line can never say "building" once the
build step is over.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class Activity:
    """The slots of every worker, read together by the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._texts: dict[str, str] = {}  # slot name -> what it shows, in the order slots were made
        self._leases: dict[str, int] = {}  # slot name -> number of the lease that may write it

    def slot(self, name: str) -> Slot:
        with self._lock:
            self._leases.setdefault(name, 0)
            self._texts.setdefault(name, "")  # its place in the line
        return Slot(self, name)

    def texts(self) -> list[str]:
        """What the slots show now, in the order the slots were made."""
        with self._lock:
            return [text for text in self._texts.values() if text]

    def _write(self, name: str, lease: int, text: str | None) -> None:
        with self._lock:
            if self._leases.get(name) != lease:
                return  # the lease ended: its work is over
            self._texts[name] = text or ""

    def _begin(self, name: str) -> int:
        with self._lock:
            self._leases[name] = self._leases.get(name, 0) + 1
            self._texts[name] = ""
            return self._leases[name]

    def _end(self, name: str, lease: int) -> None:
        with self._lock:
            if self._leases.get(name) == lease:
                self._leases[name] = lease + 1
                self._texts[name] = ""

    def remove(self, name: str) -> None:
        """Forget a slot whose worker is gone (a target removed from the configuration)."""
        with self._lock:
            self._leases.pop(name, None)
            self._texts.pop(name, None)


class Slot:
    """One worker's place in the status line."""

    def __init__(self, activity: Activity, name: str) -> None:
        self._activity = activity
        self.name = name

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """Show what one piece of work does while it runs; the slot is empty once it ends."""
        number = self._activity._begin(self.name)
        try:
            yield Lease(self._activity, self.name, number)
        finally:
            self._activity._end(self.name, number)

    def show(self, text: str | None) -> None:
        """Show a standing note (e.g. a wait) between pieces of work; None clears it. Any lease
        still open on the slot ends."""
        number = self._activity._begin(self.name)
        self._activity._write(self.name, number, text)


class Lease:
    """The right to write a slot, until the work it was taken for ends."""

    def __init__(self, activity: Activity, name: str, number: int) -> None:
        self._activity = activity
        self._name = name
        self._number = number

    def show(self, text: str | None) -> None:
        self._activity._write(self._name, self._number, text)
