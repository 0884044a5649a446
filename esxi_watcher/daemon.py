"""The daemon: moves jobs through their states and tells systemd what it is doing.

Three threads: the main loop (watch, intake, status, watchdog), one builder (one Packer build at a
time: it needs the host's KVM, memory and disk) and one registrar (uploads to MAAS), so a MAAS
outage never holds builds back. All state lives in the job store; threads only read and write it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import structlog

from esxi_watcher import build, host, instance, maas, outcomes, sdnotify, store as job_store
from esxi_watcher.config import DEFAULT_CONFIG_PATH, Config, load_config, reloaded
from esxi_watcher.errors import (BuildFailed, BuildOutOfSpace, ConfigError, EsxiWatcherError, MaasAuthError,
                                 MaasUnavailable, MissingApiKey, StoreNotADatabase, StoreUnavailable)
from esxi_watcher.intake import Intake, decide_resource, human_size, still_in_place
from esxi_watcher.iso import IsoFacts
from esxi_watcher.logs import add_secret, redact
from esxi_watcher.naming import distinct_name, distinct_title, resource_name, resource_title
from esxi_watcher.progress import BuildMonitor
from esxi_watcher.status import status_line
from esxi_watcher.store import (BUILDING, BUILT, FAILED, FINAL_STATES, QUEUED, REGISTERED, UPLOADING,
                                Job, JobStore)

log = structlog.get_logger(__name__)

TICK = 0.5  # how often the main loop looks around while a build or an upload runs (status, console)
# Idle, the loop and the workers sleep until a write to the store, a new file or a stop wakes them;
# workers also look at the store this often, for writes by other processes (`esxi-watcher retry`).
WORKER_RECHECK = 5.0
NO_KEY_RECHECK = 30.0
BANNER_TIMEOUT = 30.0  # a banner is a courtesy: never hold the registrar longer than this for one
KVM_RECHECK = 600.0
STORE_RECHECK = 10.0
STORE_LOCKED_RECHECK = 2.0
SETUP_RECHECK = 15.0
SPACE_RECHECK = 10.0  # a job waiting for space in the state dir looks again this often
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Signals whose default action would kill the daemon and orphan a running build: noted, ignored.
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)


class Daemon:
    def __init__(self, config: Config, config_path: Path | None = None):
        self.config = config
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.store: JobStore | None = None
        self.activity: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        # Marks our build processes (ESXI_WATCHER_JOB=<instance>-<job>), unique per state dir, so
        # that crash recovery only ever touches builds of this daemon.
        self._running_build: BuildMonitor | None = None
        self.setup_problems: list[str] = []
        self._ping_every = sdnotify.watchdog_interval()
        self._last_ping = 0.0
        self.instance = hashlib.sha256(str(config.state_dir).encode()).hexdigest()[:8]
        self._folder_lock: instance.InstanceLock | None = None
        self._signals_received: list[int] = []  # noted by the handlers, acted on by the main loop
        self._store_notice: str | None = None  # a broken store moved aside: said until the next restart
        self.mover = outcomes.Mover(config.drop_dir)

    # ----- life cycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT/SIGQUIT; return the exit code. Raise AlreadyRunning, before
        touching the store or the host, when another daemon works on the same state or drop dir."""
        self._install_signal_handlers()
        self._claim_folders()
        try:
            self._prepare_dirs()
            self.store = self._open_store()
            if self.store is None:  # stopped while waiting for the store
                return 0
            return self._run_with_store()
        finally:
            self._folder_lock.release()

    def _run_with_store(self) -> int:
        from esxi_watcher.watch import DropWatcher

        self.recover()
        watcher = DropWatcher(self.config.drop_dir, self.config.watch.settle)
        watcher.start()
        watcher.rescan_if_requested()
        self._start_worker("builder", lambda: self._take_next(QUEUED, self.build_job))
        self._start_worker("registrar", lambda: self._take_next(BUILT, self.register_job))
        self.setup_problems = self._setup_problems()
        self._notify(ready=True)
        log.info("daemon.ready", drop_dir=str(self.config.drop_dir), state_dir=str(self.config.state_dir))
        if self._store_notice:
            self._announce_new_store()
        try:
            self._main_loop(watcher)
        finally:
            sdnotify.notify(STOPPING="1", STATUS="stopping")
            watcher.stop()
            for thread in self._threads:
                thread.join(timeout=15)
            self.store.close()
            log.info("daemon.stopped")
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in STOP_SIGNALS:
            signal.signal(number, lambda *_: self.stop())
        for number in (signal.SIGHUP, *IGNORED_SIGNALS):
            signal.signal(number, self._note_signal)

    def _note_signal(self, number: int, _frame) -> None:
        self._signals_received.append(number)
        if self.store is not None:  # wake the main loop (its condition is reentrant: safe here)
            self.store.changes.notify()

    def _handle_signals(self) -> None:
        """Act on the signals noted since the last turn (logging inside a handler is not safe)."""
        while self._signals_received:
            number = self._signals_received.pop(0)
            if number == signal.SIGHUP:
                self.reload_config()
            else:
                log.warning("signal.ignored", signal=signal.Signals(number).name,
                            reason="only SIGTERM, SIGINT or SIGQUIT stop the daemon; SIGHUP reloads")

    def reload_config(self) -> None:
        """Read the configuration file again (SIGHUP); the new settings apply from the next job on."""
        sdnotify.notify(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
        try:
            self._apply_config(load_config(self.config_path or DEFAULT_CONFIG_PATH))
        except ConfigError as error:
            log.error("config.reload_failed", error=str(error), keeping="the configuration loaded before")
        finally:
            if self.store is None:  # still waiting for the store, which says so itself
                sdnotify.notify(READY="1")
            else:
                self._notify(ready=True)

    def _apply_config(self, new: Config) -> None:
        from esxi_watcher.logs import configure_logging

        old = self.config
        new, kept, changed = reloaded(old, new)
        if kept:
            log.warning("config.restart_needed", keys=kept,
                        reason="these keys change only when the daemon restarts: keeping the old values")
        log.info("config.reloaded", changed=changed)  # before a new log level could hide it
        if new.log != old.log:
            configure_logging(new.log.format, new.log.level)
        self.config = new

    def _claim_folders(self) -> None:
        for folder in (self.config.state_dir, self.config.drop_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._folder_lock = instance.claim_folders(
            [("state_dir", self.config.state_dir), ("drop_dir", self.config.drop_dir)])

    def _open_store(self) -> JobStore | None:
        """Open the job store. A damaged file is moved aside and a new store started; while another
        process locks it, wait (READY is sent so systemd's start timeout does not kill the wait)."""
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
                self._heartbeat()
                self.stop_event.wait(STORE_LOCKED_RECHECK)
                self._handle_signals()
            else:
                if waiting_since is not None:
                    log.info("store.available", waited=round(time.monotonic() - waiting_since))
                return opened
        return None

    def _move_broken_store(self, error: StoreNotADatabase) -> None:
        moved = job_store.move_aside(self.config.db_path)
        self._store_notice = (f"the job store was not a database ({error.reason}): moved aside to {moved.name}, "
                              f"started a new one; ISOs still in the drop dir are taken in again")
        log.error("store.moved_aside", store=str(self.config.db_path), moved_to=str(moved), reason=error.reason)

    def _announce_new_store(self) -> None:
        """Tell MAAS's admins too (in the background: MAAS may be slow or away)."""
        try:
            api_key = maas.read_api_key(self.config.maas.api_key_file)
        except EsxiWatcherError:
            return
        add_secret(api_key)
        message = f"esxi-watcher: {self._store_notice}. Done and failed jobs before it are no longer listed."
        threading.Thread(target=self._notify_admins, args=(api_key, message, "error", "esxi-watcher-store"),
                         name="store-notice", daemon=True).start()

    def _prepare_dirs(self) -> None:
        for folder in (self.config.state_dir, self.config.work_root, self.config.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.config.drop_dir.mkdir(parents=True, exist_ok=True)

    def _start_worker(self, name: str, target) -> None:
        thread = threading.Thread(target=self._guarded(name, target), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _guarded(self, name: str, loop):
        def run() -> None:
            while not self.stop_event.is_set():
                try:
                    loop()
                except StoreUnavailable as error:
                    self._store_unavailable(error)
                except Exception:  # a bug in one job must not stop the daemon
                    log.exception("worker.crashed", worker=name)
                    self.stop_event.wait(5)
        return run

    def _main_loop(self, watcher) -> None:
        intake = Intake(self.config.drop_dir, self.config.watch.max_iso_size, self.store, self.stop_event,
                        heartbeat=self._heartbeat, name_template=self.config.maas.name_template,
                        mover=self.mover)
        changes = self.store.changes
        watcher.on_change = changes.notify
        threading.Thread(target=self._relay_stop, name="stop-relay", daemon=True).start()
        next_rescan = time.monotonic() + self.config.watch.rescan_interval
        next_setup_check = 0.0
        while not self.stop_event.is_set():
            seen = changes.generation
            if time.monotonic() >= next_setup_check:
                self.setup_problems = self._setup_problems()
                next_setup_check = time.monotonic() + SETUP_RECHECK
            watcher.ensure_watching()
            if time.monotonic() >= next_rescan:
                watcher.request_rescan("periodic reconcile")
                self._finish_moves()
                next_rescan = time.monotonic() + self.config.watch.rescan_interval
            watcher.rescan_if_requested()
            known = set(self.store.identities_in_drop_dir(self.config.drop_dir))
            intake.name_template = self.config.maas.name_template  # a SIGHUP may have changed it
            for path in watcher.ready(known):
                if self.stop_event.is_set():
                    break
                try:
                    intake.take_in(path)
                except StoreUnavailable as error:
                    watcher.nominate(path)  # taken in again once the store can be written
                    self._store_unavailable(error)
                except Exception:
                    log.exception("intake.crashed", iso=path.name)
            monitor = self._running_build
            if monitor is not None:
                monitor.poll()
            self._handle_signals()
            self._notify()
            self._heartbeat()
            changes.wait(seen, self._until_next_look(watcher, min(next_rescan, next_setup_check)))

    def _until_next_look(self, watcher, next_chore: float) -> float:
        """Seconds the main loop may sleep: until the earliest settle deadline, chore or watchdog ping;
        at most TICK while a build or upload runs (its console and progress go to the status line)."""
        now = time.monotonic()
        wake = next_chore
        deadline = watcher.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        if self._ping_every:
            wake = min(wake, self._last_ping + self._ping_every)
        if self.activity or self._running_build is not None:
            wake = min(wake, now + TICK)
        return max(0.0, wake - now)

    def _relay_stop(self) -> None:
        """Wake every sleeper (main loop, workers) once a stop is asked for: they sleep on the store's
        changes, not on stop_event."""
        self.stop_event.wait()
        self.store.changes.notify()

    def _setup_problems(self) -> list[str]:
        """What the admin still has to set up, for the status line (the daemon runs meanwhile)."""
        where = self.config_path or "/etc/esxi-watcher/config.yaml"
        problems = []
        if not self.config.build.template_dir.is_dir():
            problems.append(f"no packer-maas template at {self.config.build.template_dir}: see {where}")
        try:
            maas.read_api_key(self.config.maas.api_key_file)
        except MissingApiKey:
            problems.append(f"no MAAS API key: see {where}")
        except EsxiWatcherError as error:
            problems.append(str(error))
        return problems

    def _heartbeat(self) -> None:
        """Tell systemd's watchdog the main loop is alive (also from long reads of big ISOs)."""
        if self._ping_every and time.monotonic() - self._last_ping >= self._ping_every:
            sdnotify.notify(WATCHDOG="1")
            self._last_ping = time.monotonic()

    def _store_unavailable(self, error: StoreUnavailable) -> None:
        """A full state dir stops all work but not the daemon: say so, wait, try again."""
        log.error("store.unavailable", reason=str(error.__cause__ or error), state_dir=str(self.config.state_dir))
        self.stop_event.wait(STORE_RECHECK)

    def _notify(self, ready: bool = False) -> None:
        try:
            counts, newest = self.store.counts(), self.store.newest_resource()
        except StoreUnavailable:
            counts, newest = {}, None
        activity = dict(self.activity)
        if self.store.write_error:
            activity["store"] = (f"cannot write the job store ({self.store.write_error}): "
                                 f"free space in {self.config.state_dir}")
        problems = self.setup_problems + ([self._store_notice] if self._store_notice else [])
        fields = {"STATUS": status_line(counts, activity, problems, newest)}
        if ready:
            fields["READY"] = "1"
        sdnotify.notify(**fields)

    # ----- recovery ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-enter every step a previous run left half-done."""
        store = self.store
        report = self._clean_host()  # nothing runs yet: every build of ours is dead
        log.info("recover.host_cleaned", **report.counts())
        for job in store.jobs((BUILDING,)):
            store.update(job.id, state=QUEUED, stage="re-queued after restart", pgid=None,
                         build_attempts=max(job.build_attempts - 1, 0))
            log.warning("recover.requeued", job=job.id, iso=job.iso)
        for job in store.jobs((UPLOADING,)):
            store.update(job.id, state=BUILT, stage="upload interrupted by restart: starts over")
            log.warning("recover.upload_restarts", job=job.id, resource=job.resource)
        for job in store.jobs(FINAL_STATES):
            self._finish_move(job)
        self._remove_orphan_workdirs()

    def _finish_move(self, job: Job) -> None:
        """Move a finished job's ISO to its outcome folder; one that cannot move stays, logged once."""
        self.mover.finish(self.store, job)

    def _finish_moves(self) -> None:
        """Moves that failed before (or that the store could not record) are tried again."""
        for job in self.store.jobs(FINAL_STATES):
            self._finish_move(job)

    def _remove_orphan_workdirs(self) -> None:
        """Remove the work dirs of ours no job keeps; anything else in work/ is not ours to delete."""
        keep = {self._marker(job.id) for job in self.store.jobs((BUILT, UPLOADING))}
        keep |= {self._marker(job.id) for job in self.store.jobs((FAILED,)) if job.failed_stage == "register"}
        ours = re.compile(re.escape(self.instance) + r"-[0-9]+")
        for entry in self.config.work_root.iterdir():
            if not ours.fullmatch(entry.name):
                log.warning("recover.workdir_not_ours", entry=str(entry),
                            reason="not a work dir this daemon made: left alone")
            elif entry.name not in keep:
                log.info("recover.workdir_removed", workdir=str(entry))
                build.remove_workdir(entry)

    # ----- building ---------------------------------------------------------------------------

    def _take_next(self, state: str, handle) -> None:
        """One turn of a worker: handle the next due job in this state, or sleep until a write to the
        store, the earliest retry in this state, or WORKER_RECHECK (writes by other processes)."""
        changes = self.store.changes
        seen = changes.generation
        job = self.store.next_due(state)
        if job is None:
            due = self.store.next_try_in(state)
            changes.wait(seen, WORKER_RECHECK if due is None else min(max(due, 0.05), WORKER_RECHECK))
            return
        try:
            handle(job)
        except StoreUnavailable:
            raise
        except Exception as error:
            self._internal_error(job, "build" if state == QUEUED else "register", error)

    def _internal_error(self, job: Job, stage: str, error: Exception) -> None:
        """An error nobody planned for fails its job with a reason, instead of leaving it half-done
        (building or uploading) until the next restart; the worker goes on with the next job."""
        log.exception("job.internal_error", job=job.id, stage=stage)
        doing = "building" if stage == "build" else "registering"
        reason = redact(f"unexpected error while {doing}: {type(error).__name__}: {error} (the traceback is "
                        f"in `journalctl -u esxi-watcher`; `esxi-watcher retry {job.id}` tries again)")
        if stage == "build":
            self._discard_build(job.id)
        self._fail(self.store.get(job.id), stage, reason)

    def build_job(self, job: Job) -> None:
        store = self.store
        if not still_in_place(job):
            reason = "the ISO was removed or replaced in the drop dir before it was built"
            store.update(job.id, state=FAILED, failed_stage="build", error=reason)
            log.warning("build.iso_gone", job=job.id, iso=job.iso)
            return
        waiting = self._kvm_problem()
        if waiting:
            self.activity["builder"] = f"waiting: {waiting}"
            store.update(job.id, stage="waiting for KVM", error=waiting, next_try=time.time() + KVM_RECHECK)
            return
        shortage = self._space_shortage(job)
        if shortage:
            self._wait_for_space(job, shortage)
            return
        workdir = self._workdir(job.id)
        log_path = self.config.logs_dir / f"{job.id}.log"
        attempts = job.build_attempts + 1
        store.update(job.id, state=BUILDING, stage="starting", error=None, build_attempts=attempts, pgid=None)
        started = time.monotonic()
        self.activity["builder"] = f"building {_stem(job.iso)} (0 min, starting)"
        log.info("job.building", job=job.id, iso=job.iso, attempt=attempts, workdir=str(workdir))
        self._clean_host()
        monitor = self._monitor(job, workdir, started)
        self._running_build = monitor
        failure = None
        try:
            artifact = build.run_build(
                job_id=self._marker(job.id), template_dir=self.config.build.template_dir,
                command=self.config.build.command, artifact_name=self.config.build.artifact,
                iso=Path(job.iso_path), workdir=workdir, log_path=log_path,
                timeout=self.config.build.timeout,
                on_line=monitor.packer_line,
                on_start=lambda pid: store.update(job.id, pgid=pid),
                stop_event=self.stop_event)
        except BuildFailed as error:
            failure = error
        finally:
            self._running_build = None
            self.activity.pop("builder", None)
        if failure is not None:
            self._build_failed(store.get(job.id), failure, monitor.explain(str(failure)))
            return
        store.update(job.id, state=BUILT, stage="built", artifact=str(artifact), pgid=None,
                     error=None, next_try=0)
        log.info("build.finished", job=job.id, iso=job.iso, artifact=str(artifact),
                 minutes=round((time.monotonic() - started) / 60, 1))

    def _space_shortage(self, job: Job) -> str | None:
        """Why the state dir cannot hold this job's build now, or None (see build.space_needed)."""
        needed = build.space_needed(self.config.build.template_dir, job.size or 0)
        free = shutil.disk_usage(self.config.state_dir).free
        if free >= needed:
            return None
        return (f"no space left in the state dir {self.config.state_dir}: {human_size(free)} free, "
                f"a build needs about {human_size(needed)} (the ISO and the template's disk)")

    def _wait_for_space(self, job: Job, reason: str, build_tail: str | None = None) -> None:
        """Keep the job in line until there is space: disk space is not the ISO's fault, nor counted."""
        self.activity["builder"] = f"waiting for space: {reason}"
        error = reason if build_tail is None else f"{reason}\n{build_tail}"
        self.store.update(job.id, state=QUEUED, stage=f"waiting for space: {reason}", error=error, pgid=None,
                          next_try=time.time() + SPACE_RECHECK)
        log.warning("build.waiting_for_space", job=job.id, iso=job.iso, reason=reason)

    def _monitor(self, job: Job, workdir: Path, started: float) -> BuildMonitor:
        """Follow the build's stage; the main loop polls it so the console is read during the install."""
        shown = {"stage": None}

        def show(stage: str) -> None:
            minutes = int((time.monotonic() - started) / 60)
            self.activity["builder"] = f"building {_stem(job.iso)} ({minutes} min, {stage})"
            if stage != shown["stage"]:
                shown["stage"] = stage
                self.store.update(job.id, stage=stage)
                log.info("job.stage", job=job.id, stage=stage)

        console = workdir / self.config.build.template_dir.name / self.config.build.console_log
        return BuildMonitor(console, on_stage=show)

    def _build_failed(self, job: Job, failure: BuildFailed, reason: str) -> None:
        store = self.store
        self._discard_build(job.id)
        if self.stop_event.is_set():
            store.update(job.id, state=QUEUED, stage="interrupted by shutdown", pgid=None,
                         build_attempts=max(job.build_attempts - 1, 0))
            return
        if isinstance(failure, BuildOutOfSpace):
            store.update(job.id, build_attempts=max(job.build_attempts - 1, 0))
            free = human_size(shutil.disk_usage(self.config.state_dir).free)
            self._wait_for_space(job, f"the build ran out of space (No space left on device; {free} free in "
                                      f"the state dir {self.config.state_dir} now)", reason)
            return
        if failure.transient and job.build_attempts <= self.config.build.retries:
            wait = 60.0 * job.build_attempts
            store.update(job.id, state=QUEUED, stage=f"retry in {int(wait)} s", error=reason, pgid=None,
                         next_try=time.time() + wait)
            log.warning("build.retry_later", job=job.id, iso=job.iso, reason=reason, wait=wait)
        else:
            self._fail(job, "build", reason)

    def _discard_build(self, job_id: int) -> None:
        """End what a build that did not finish left behind: its processes, mounts, nbd devices, work dir."""
        self._clean_host(dead_jobs={self._marker(job_id)})
        build.remove_workdir(self._workdir(job_id))

    def _kvm_problem(self) -> str | None:
        from esxi_watcher import kvm

        if not kvm.template_wants_kvm(self.config.build.template_dir, self.config.build.command):
            return None
        verdict = kvm.kvm_can_run_guests(cache_dir=self.config.state_dir)
        return None if verdict.ok else verdict.reason

    # ----- registering ------------------------------------------------------------------------

    def register_job(self, job: Job) -> None:
        store = self.store
        try:
            api_key = maas.read_api_key(self.config.maas.api_key_file)
        except EsxiWatcherError as error:
            where = self.config_path or "/etc/esxi-watcher/config.yaml"
            store.update(job.id, stage=f"no MAAS API key: see {where}", error=str(error),
                         next_try=time.time() + NO_KEY_RECHECK)
            self.activity["registrar"] = f"no MAAS API key: see {where}"
            return
        add_secret(api_key)
        name, title = self._names(job)
        store.update(job.id, state=UPLOADING, stage="uploading", resource=name,
                     register_attempts=job.register_attempts + 1)
        self.activity["registrar"] = f"uploading {name}"
        try:
            registration = self._run_registration(job, api_key, name, title)
        except asyncio.CancelledError:
            store.update(job.id, state=BUILT, stage="upload interrupted by shutdown")
        except MaasUnavailable as error:
            self._maas_unavailable(store.get(job.id), redact(str(error)))
        except MaasAuthError as error:
            self._fail(store.get(job.id), "register", redact(str(error)))
        except EsxiWatcherError as error:
            self._fail(store.get(job.id), "register", redact(str(error)))
        else:
            self._registered(store.get(job.id), registration, api_key)
        finally:
            self.activity.pop("registrar", None)

    def _names(self, job: Job) -> tuple[str, str]:
        """The MAAS name decided when the job was queued (decided now for a job queued before names
        were stored) and the title that goes with it."""
        facts = IsoFacts(**job.facts)
        name = job.resource or decide_resource(self.store, self.config.maas.name_template, job.facts, job.sha256)
        title = resource_title(self.config.maas.title_template, facts)
        if name == distinct_name(resource_name(self.config.maas.name_template, facts), job.sha256):
            title = distinct_title(title, job.sha256)
        return name, title

    def _run_registration(self, job: Job, api_key: str, name: str, title: str):
        settings = self.config.maas
        endpoint = maas.Endpoint(url=settings.url, api_key=api_key, request_timeout=settings.request_timeout)

        def progress(fraction: float) -> None:
            self.activity["registrar"] = f"uploading {name} {int(fraction * 100)}%"

        async def register():
            task = asyncio.ensure_future(maas.register_image(
                endpoint, name=name, title=title, architecture=settings.architecture,
                artifact=Path(job.artifact), sha256=_sha256_file(job.artifact),
                size=os.path.getsize(job.artifact), progress=progress))
            while not task.done():
                if self.stop_event.is_set():
                    task.cancel()
                await asyncio.wait([task], timeout=TICK)
            return task.result()

        return asyncio.run(register())

    def _maas_unavailable(self, job: Job, reason: str) -> None:
        settings = self.config.maas
        if job.register_attempts > settings.retries:
            self._fail(job, "register", f"MAAS unavailable after {job.register_attempts} attempts: {reason}")
            return
        wait = min(settings.retry_max_wait, 30.0 * 2 ** (job.register_attempts - 1))
        self.activity["registrar"] = f"waiting for MAAS: {reason}, retry in {_for_humans(wait)}"
        self.store.update(job.id, state=BUILT, stage=f"waiting for MAAS: {reason}", error=reason,
                          next_try=time.time() + wait)
        log.warning("register.retry_later", job=job.id, resource=job.resource, reason=reason, wait=wait)

    def _registered(self, job: Job, registration, api_key: str) -> None:
        store = self.store
        store.update(job.id, state=REGISTERED, stage=None, error=None, resource=registration.name,
                     resource_id=registration.resource_id, next_try=0)
        log.info("register.done", job=job.id, iso=job.iso, resource=registration.name, resource_id=registration.resource_id,
                 set_version=registration.set_version, uploaded=registration.uploaded, sha256=registration.sha256)
        self._finish_move(store.get(job.id))
        build.remove_workdir(self._workdir(job.id))
        if self.config.maas.notify:
            self._notify_admins(api_key, f"esxi-watcher registered {registration.name} from {job.iso}.",
                                "success", f"esxi-watcher-{job.id}")

    def _notify_admins(self, api_key: str, message: str, category: str, ident: str) -> None:
        settings = self.config.maas
        endpoint = maas.Endpoint(url=settings.url, api_key=api_key,
                                 request_timeout=min(BANNER_TIMEOUT, settings.request_timeout))
        try:
            asyncio.run(maas.post_banner(endpoint, ident=ident, message=message, category=category))
        except Exception as error:  # a banner is a courtesy; never fail a job for it
            log.warning("notify.failed", ident=ident, error=redact(str(error)))

    def _failure_banner(self, job: Job, reason: str) -> None:
        """Tell MAAS's admins a job failed at registration; same ident as the success banner, which
        replaces it once `esxi-watcher retry` succeeds."""
        if not self.config.maas.notify:
            return
        try:
            api_key = maas.read_api_key(self.config.maas.api_key_file)
        except EsxiWatcherError:
            return
        first_line = (reason.splitlines() or [""])[0]
        self._notify_admins(api_key, f"esxi-watcher could not register {job.resource or job.iso} from {job.iso}: "
                                     f"{first_line.rstrip('.')}. Then `esxi-watcher retry {job.id}` tries again.",
                            "error", f"esxi-watcher-{job.id}")

    # ----- shared -----

    def _marker(self, job_id: int) -> str:
        return f"{self.instance}-{job_id}"

    def _workdir(self, job_id: int) -> Path:
        return self.config.work_root / self._marker(job_id)

    def _clean_host(self, dead_jobs: set[str] | None = None) -> host.CleanupReport:
        """End processes, mounts and nbd devices left by builds of ours (default: all of them).

        Called only while no build of ours runs.
        """
        jobs = self.store.jobs()
        if dead_jobs is None:
            dead_jobs = {self._marker(job.id) for job in jobs}
        groups = {job.pgid: self._marker(job.id) for job in jobs if job.pgid}
        report = host.clean_host(live_jobs=set(), dead_jobs=dead_jobs, work_root=self.config.work_root,
                                 process_groups=groups)
        if any(report.counts().values()):
            log.warning("host.cleaned", **report.counts())
        return report

    # ----- jobs ending ------------------------------------------------------------------------

    def _fail(self, job: Job, stage: str, reason: str) -> None:
        self.store.update(job.id, state=FAILED, failed_stage=stage, error=reason, pgid=None, stage=None)
        log.error("job.failed", job=job.id, iso=job.iso, stage=stage, reason=reason)
        self._finish_move(self.store.get(job.id))
        if stage == "register":
            self._failure_banner(job, reason)


def _sha256_file(path: str) -> str:
    """The artifact's sha256, as the build's check recorded it in its single read of the file."""
    return build.artifact_sha256(Path(path))


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".iso") else name


def _for_humans(seconds: float) -> str:
    return f"{int(seconds)} s" if seconds < 90 else f"{round(seconds / 60)} min"

