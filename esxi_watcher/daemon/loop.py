"""The daemon: its threads, the main loop, signals and what systemd is told.

Threads: the main loop (signals, supervision, status line, watchdog), the intake worker (watch the
drop dir, read and queue ISOs), the builder (one build at a time) and one registrar per MAAS target
(so that one target away or slow never holds another back). All state lives in the job store;
workers sleep until a write to it (or their own news) wakes them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import structlog

from esxi_watcher import maas, sdnotify
from esxi_watcher.config import DEFAULT_CONFIG_PATH, Config
from esxi_watcher.daemon import banners, targets
from esxi_watcher.daemon.activity import Activity
from esxi_watcher.daemon.build_step import build_next
from esxi_watcher.daemon.context import Context
from esxi_watcher.daemon.intake_worker import IntakeWorker
from esxi_watcher.daemon.recovery import recover
from esxi_watcher.daemon.register_step import register_next
from esxi_watcher.daemon.signals import SignalInbox, log_notices, reload_config
from esxi_watcher.daemon.startup import StoreOpening, claim_folders, prepare_dirs
from esxi_watcher.errors import EsxiWatcherError, MissingApiKey, StoreUnavailable
from esxi_watcher.metrics import MetricsWriter
from esxi_watcher.status import status_line

log = structlog.get_logger(__name__)

TICK = 0.5  # how often the status line is refreshed while a worker shows progress
# Idle, workers sleep until a write to the store wakes them; they also look at the store this
# often, for writes by other processes (`esxi-watcher retry`).
WORKER_RECHECK = 5.0
STORE_RECHECK = 10.0  # a worker that cannot use the store tries again this often
SETUP_RECHECK = 15.0


class Daemon:
    def __init__(self, config: Config, config_path: Path | None = None):
        self.config = config  # until the store is open; then context.config is the one in use
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.context: Context | None = None
        self.activity = Activity()
        self.setup_problems: list[str] = []
        self._workers: dict[str, tuple[threading.Thread, Callable[[], threading.Thread]]] = {}
        self._registrar_stops: dict[str, threading.Event] = {}
        self._ping_every = sdnotify.watchdog_interval()
        self._last_ping = 0.0
        self.signals = SignalInbox(stop=self.stop, wake=self._wake)
        self._store_notice: str | None = None

    # ----- life cycle -----

    def run(self) -> int:
        """Run until SIGTERM/SIGINT/SIGQUIT; return the exit code. Raise AlreadyRunning, before
        touching the store or the host, when another daemon works on the same state or drop dir."""
        self.signals.install()
        folder_lock = claim_folders(self.config)
        try:
            prepare_dirs(self.config)
            opening = StoreOpening(self.config, self.stop_event, between_tries=self._chores_while_waiting)
            store = opening.open()
            if store is None:  # stopped while waiting for the store
                return 0
            self._store_notice = opening.notice
            self.context = Context(store=store, config=self.config, stop_event=self.stop_event,
                                   config_path=self.config_path)
            return self._run_with_store()
        finally:
            folder_lock.release()

    def _run_with_store(self) -> int:
        from esxi_watcher.watch import DropWatcher

        context = self.context
        log_notices(context.config)
        recover(context)
        watcher = DropWatcher(context.config.drop_dir, context.config.watch.settle)
        watcher.start()
        intake = IntakeWorker(context, watcher)
        self._start("intake", intake.run)
        self._start("builder", self._worker_loop("builder", lambda slot: build_next(context, slot)))
        self._sync_registrars()
        threading.Thread(target=self._relay_stop, args=(intake,), name="stop-relay", daemon=True).start()
        metrics = MetricsWriter(context.store, self._metrics_settings, self.stop_event)
        metrics.start()
        self.setup_problems = self._setup_problems()
        self._notify(ready=True)
        log.info("daemon.ready", drop_dir=str(context.config.drop_dir), state_dir=str(context.config.state_dir),
                 targets=[target.name for target in context.config.targets])
        if self._store_notice:
            banners.announce_everywhere(context.config, f"esxi-watcher: {self._store_notice}. Done and failed "
                                        "jobs before it are no longer listed.", "error", banners.STORE_NOTICE_IDENT)
        try:
            self._main_loop()
        finally:
            sdnotify.notify(STOPPING="1", STATUS="stopping")
            self.stop_event.set()
            for thread, _ in list(self._workers.values()):
                thread.join(timeout=15)
            watcher.stop()
            metrics.join(timeout=15)
            context.store.close()
            log.info("daemon.stopped")
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _metrics_settings(self) -> tuple[Path | None, list[str]]:
        """Where the metrics go (None: nowhere) and the targets, as configured now (a reload may change them)."""
        config = self.context.config
        return config.metrics.textfile, [target.name for target in config.targets]

    def _relay_stop(self, intake: IntakeWorker) -> None:
        """Wake every sleeper once a stop is asked for: they sleep on news, not on stop_event."""
        self.stop_event.wait()
        self.context.store.changes.notify()
        intake.doorbell.notify()

    # ----- workers -----

    def _start(self, name: str, target: Callable[[], None]) -> None:
        def make() -> threading.Thread:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            return thread
        self._workers[name] = (make(), make)

    def _worker_loop(self, name: str, turn: Callable, own_stop: threading.Event | None = None) -> Callable[[], None]:
        """A worker's loop: take a turn (it returns 0 after work, else the seconds until work is due,
        None when none waits), then sleep until a store write, that time, or WORKER_RECHECK."""
        slot = self.activity.slot(name)

        def stopped() -> bool:
            return self.stop_event.is_set() or (own_stop is not None and own_stop.is_set())

        def run() -> None:
            changes = self.context.store.changes
            while not stopped():
                seen = changes.generation
                try:
                    due = turn(slot)
                except StoreUnavailable as error:  # a full state dir stops work, not the daemon
                    log.error("store.unavailable", reason=str(error.__cause__ or error), worker=name)
                    self.stop_event.wait(STORE_RECHECK)
                    continue
                except Exception:  # noqa: BLE001 - a bug in one job must not stop the daemon
                    log.exception("worker.crashed", worker=name)
                    self.stop_event.wait(5)
                    continue
                if due != 0:
                    changes.wait(seen, WORKER_RECHECK if due is None else min(max(due, 0.05), WORKER_RECHECK))
            if own_stop is not None and own_stop.is_set():  # its target was removed
                self.activity.remove(name)
        return run

    def _sync_registrars(self) -> None:
        """One registrar per configured target: start those of new targets, end those of removed ones."""
        wanted = [target.name for target in self.context.config.targets]
        for name in wanted:
            if name not in self._registrar_stops:
                own_stop = threading.Event()
                self._registrar_stops[name] = own_stop
                turn = (lambda target: lambda slot: register_next(self.context, target, slot))(name)
                self._start(f"registrar:{name}", self._worker_loop(f"registrar:{name}", turn, own_stop))
        for name in [name for name in self._registrar_stops if name not in wanted]:
            self._registrar_stops.pop(name).set()
            self._workers.pop(f"registrar:{name}", None)
            self.context.store.changes.notify()

    def _supervise(self) -> None:
        """A worker thread that died (it should not: each catches its errors) is logged and started again."""
        for name, (thread, make) in list(self._workers.items()):
            if not thread.is_alive() and not self.stop_event.is_set():
                log.error("worker.died", worker=name)
                self._workers[name] = (make(), make)

    # ----- the main loop -----

    def _main_loop(self) -> None:
        changes = self.context.store.changes
        next_setup_check = time.monotonic() + SETUP_RECHECK
        while not self.stop_event.is_set():
            seen = changes.generation
            if time.monotonic() >= next_setup_check:
                self.setup_problems = self._setup_problems()
                next_setup_check = time.monotonic() + SETUP_RECHECK
            self._handle_signals()
            self._supervise()
            self._notify()
            self._heartbeat()
            changes.wait(seen, self._until_next_look(next_setup_check))

    def _until_next_look(self, next_chore: float) -> float:
        """Seconds the main loop may sleep: until the next chore or watchdog ping; at most TICK while
        a worker shows progress (a build's stage, an upload's percentage)."""
        now = time.monotonic()
        wake = next_chore
        if self._ping_every:
            wake = min(wake, self._last_ping + self._ping_every)
        if self.activity.texts():
            wake = min(wake, now + TICK)
        return max(0.0, wake - now)

    def _chores_while_waiting(self) -> None:
        self._heartbeat()
        self._handle_signals()

    def _heartbeat(self) -> None:
        """Tell systemd's watchdog the main loop is alive."""
        if self._ping_every and time.monotonic() - self._last_ping >= self._ping_every:
            sdnotify.notify(WATCHDOG="1")
            self._last_ping = time.monotonic()

    def _setup_problems(self) -> list[str]:
        """What the admin still has to set up, for the status line (the daemon runs meanwhile)."""
        config, where = self.context.config, self.context.where
        problems = []
        if not config.build.template_dir.is_dir():
            problems.append(f"no packer-maas template at {config.build.template_dir}: see {where}")
        for target in config.targets:
            try:
                maas.read_api_key(target.api_key_file)
            except MissingApiKey:
                problems.append(f"no MAAS API key for {target.name}: see {where}")
            except EsxiWatcherError as error:
                problems.append(f"{target.name}: {error}")
        return problems

    def _notify(self, ready: bool = False) -> None:
        store = self.context.store
        try:
            counts, newest = store.counts(), store.newest_resource()
        except StoreUnavailable:
            counts, newest = {}, None
        activity = self.activity.texts()
        if store.write_error:
            activity.insert(0, f"cannot write the job store ({store.write_error}): "
                               f"free space in {self.context.config.state_dir}")
        problems = self.setup_problems + ([self._store_notice] if self._store_notice else [])
        fields = {"STATUS": status_line(counts, activity, problems, newest)}
        if ready:
            fields["READY"] = "1"
        sdnotify.notify(**fields)

    # ----- signals and reloads -----

    def _wake(self) -> None:
        if self.context is not None:
            self.context.store.changes.notify()

    def _handle_signals(self) -> None:
        for _ in self.signals.take():  # SIGHUP
            self.reload_config()

    def reload_config(self) -> None:
        """Read the configuration file again (SIGHUP); the new settings apply from the next job on,
        a new target gets the images already built."""
        sdnotify.notify(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
        try:
            new = reload_config(self.config_path or DEFAULT_CONFIG_PATH,
                                self.context.config if self.context else self.config)
            if new is not None:
                self._apply_config(new)
        finally:
            if self.context is None:  # still waiting for the store, which says so itself
                sdnotify.notify(READY="1")
            else:
                self._notify(ready=True)

    def _apply_config(self, new: Config) -> None:
        self.config = new
        if self.context is None:
            return
        self.context.config = new
        self.context.retention_next.clear()  # maas.keep may have changed: every target's pass is due
        self.context.store.changes.notify()  # wake the registrars to run it
        self._sync_registrars()
        targets.plan_all(self.context)
        self.setup_problems = self._setup_problems()
