"""The intake worker: watches the drop dir and takes settled files in (inspect, hash, queue), off
the main loop, so that reading a big ISO never delays the status line or the watchdog.

It owns the drop-dir watcher from start-up to shutdown: only this thread asks it for files. It
sleeps until the watcher has news, a file's settle period ends, the periodic rescan is due, or the
daemon stops.
"""

from __future__ import annotations

import time

import structlog

from esxi_watcher import provenance
from esxi_watcher.config import BuildConfig
from esxi_watcher.daemon import targets
from esxi_watcher.daemon.context import Context
from esxi_watcher.daemon.recovery import finish_moves
from esxi_watcher.errors import StoreUnavailable
from esxi_watcher.intake import Intake
from esxi_watcher.store import Changes, State
from esxi_watcher.watch import DropWatcher

log = structlog.get_logger(__name__)

DROP_DIR_CHECK = 2.0  # seconds between looks at whether the drop dir was removed or recreated


class IntakeWorker:
    def __init__(self, context: Context, watcher: DropWatcher):
        self.context = context
        self.watcher = watcher
        self.doorbell = Changes()  # rung by the watcher (news in the drop dir) and by a stop
        watcher.on_change = self.doorbell.notify
        config = context.config
        self.intake = Intake(config.drop_dir, config.watch.max_iso_size, context.store, context.stop_event,
                             mover=context.mover, recipe=self._recipe)
        self._next_rescan = time.monotonic() + config.watch.rescan_interval

    def run(self) -> None:
        """The worker's loop (its thread's target)."""
        stop_event = self.context.stop_event
        while not stop_event.is_set():
            seen = self.doorbell.generation
            try:
                self.turn()
            except StoreUnavailable as error:
                log.error("store.unavailable", reason=str(error.__cause__ or error), worker="intake")
                stop_event.wait(10.0)
            except Exception:  # noqa: BLE001 - a bug must not stop the watching
                log.exception("worker.crashed", worker="intake")
                stop_event.wait(5.0)
            self.doorbell.wait(seen, self._until_next_look())

    def turn(self) -> None:
        context, watcher = self.context, self.watcher
        watcher.ensure_watching()
        if time.monotonic() >= self._next_rescan:
            watcher.request_rescan("periodic reconcile")
            finish_moves(context)
            self._next_rescan = time.monotonic() + context.config.watch.rescan_interval
        watcher.rescan_if_requested()
        known = set(context.store.identities_in_drop_dir(context.config.drop_dir))
        for path in watcher.ready(known):
            if context.stop_event.is_set():
                return
            self._take_in(path)

    def _take_in(self, path) -> None:
        try:
            job = self.intake.take_in(path)
        except StoreUnavailable:
            self.watcher.nominate(path)  # taken in again once the store can be written
            raise
        except Exception:  # noqa: BLE001 - one file must not stop the others
            log.exception("intake.crashed", iso=path.name)
            return
        if job is not None and job.state is State.QUEUED:
            targets.plan(self.context, job)

    def _recipe(self) -> tuple[BuildConfig, str]:
        """The build configuration in use now (a reload may have changed it) and its fingerprint."""
        config = self.context.config
        return config.build, provenance.fingerprint_for(config)

    def _until_next_look(self) -> float:
        # inotify cannot tell when a removed drop dir is made again (nothing watches its parent),
        # and does not always report its removal: a stat this often notices both.
        wake = min(self._next_rescan, time.monotonic() + DROP_DIR_CHECK)
        deadline = self.watcher.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        return max(0.0, wake - time.monotonic())
