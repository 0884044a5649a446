"""Before any work: the folder locks, the folders, and a job store that can be used.

One daemon per state dir and per drop dir: both are locked while it runs. A store file that is
not a database is moved aside and a new store started (ISOs still in the drop dir are taken in
again); a store another process locks is waited for, telling systemd so.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import structlog

from esxi_watcher import instance, sdnotify, store as job_store
from esxi_watcher.config import Config
from esxi_watcher.errors import StoreNotADatabase, StoreUnavailable
from esxi_watcher.store import JobStore

log = structlog.get_logger(__name__)

STORE_LOCKED_RECHECK = 2.0


def claim_folders(config: Config) -> instance.InstanceLock:
    """Lock the state dir and the drop dir; raise AlreadyRunning when another daemon holds either."""
    for folder in (config.state_dir, config.drop_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return instance.claim_folders([("state_dir", config.state_dir), ("drop_dir", config.drop_dir)])


def prepare_dirs(config: Config) -> None:
    for folder in (config.state_dir, config.work_root, config.logs_dir, config.artifacts_dir, config.drop_dir):
        folder.mkdir(parents=True, exist_ok=True)


class StoreOpening:
    """Opens the job store, waiting while another process locks it; says what it had to do."""

    def __init__(self, config: Config, stop_event: threading.Event, between_tries: Callable[[], None]):
        self.config = config
        self.stop_event = stop_event
        self.between_tries = between_tries  # the caller's chores while it waits (watchdog, signals)
        self.notice: str | None = None  # a broken store moved aside: said until the next restart

    def open(self) -> JobStore | None:
        """The store, or None when asked to stop while waiting for it. READY is sent while it waits,
        so that systemd's start timeout does not kill the wait."""
        waiting_since = None
        while not self.stop_event.is_set():
            try:
                opened = JobStore(self.config.db_path, check=True)
            except StoreNotADatabase as error:
                self._move_broken_store(error)
            except StoreUnavailable as error:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    log.error("store.waiting", reason=str(error))
                sdnotify.notify(READY="1", STATUS=f"waiting: {error}: retrying every {int(STORE_LOCKED_RECHECK)} s")
                self.between_tries()
                self.stop_event.wait(STORE_LOCKED_RECHECK)
                self.between_tries()
            else:
                if waiting_since is not None:
                    log.info("store.available", waited=round(time.monotonic() - waiting_since))
                return opened
        return None

    def _move_broken_store(self, error: StoreNotADatabase) -> None:
        moved = job_store.move_aside(self.config.db_path)
        self.notice = (f"the job store was not a database ({error.reason}): moved aside to {moved.name}, "
                       f"started a new one; ISOs still in the drop dir are taken in again")
        log.error("store.moved_aside", store=str(self.config.db_path), moved_to=str(moved), reason=error.reason)
