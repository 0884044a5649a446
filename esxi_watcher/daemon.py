"""The daemon: moves jobs through their states and tells systemd what it is doing.

Three threads: the main loop (watch, intake, status, watchdog), one builder (one Packer build at a
time: it needs the host's KVM, memory and disk) and one registrar (uploads to MAAS), so a MAAS
outage never holds builds back. All state lives in the job store; threads only read and write it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import structlog

from esxi_watcher import build, host, maas, outcomes, sdnotify
from esxi_watcher.config import Config
from esxi_watcher.errors import (BuildFailed, EsxiWatcherError, MaasAuthError, MaasUnavailable,
                                 MissingApiKey, StoreUnavailable)
from esxi_watcher.intake import Intake, still_in_place
from esxi_watcher.iso import IsoFacts
from esxi_watcher.logs import add_secret, redact
from esxi_watcher.naming import resource_name, resource_title
from esxi_watcher.progress import BuildMonitor
from esxi_watcher.status import status_line
from esxi_watcher.store import (BUILDING, BUILT, DUPLICATE, FAILED, FINAL_STATES, QUEUED, REGISTERED,
                                REJECTED, UPLOADING, Job, JobStore)

log = structlog.get_logger(__name__)

TICK = 0.5  # how often the main loop looks around while a build or an upload runs (status, console)
# Idle, the loop and the workers sleep until a write to the store, a new file or a stop wakes them;
# workers also look at the store this often, for writes by other processes (`esxi-watcher retry`).
WORKER_RECHECK = 5.0
NO_KEY_RECHECK = 30.0
KVM_RECHECK = 600.0
STORE_RECHECK = 10.0
SETUP_RECHECK = 15.0


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

    # ----- life cycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        from esxi_watcher.watch import DropWatcher

        self._prepare_dirs()
        self.store = JobStore(self.config.db_path)
        self._install_signal_handlers()
        self.recover()
        watcher = DropWatcher(self.config.drop_dir, self.config.watch.settle)
        watcher.start()
        watcher.rescan_if_requested()
        self._start_worker("builder", lambda: self._take_next(QUEUED, self.build_job))
        self._start_worker("registrar", lambda: self._take_next(BUILT, self.register_job))
        self.setup_problems = self._setup_problems()
        self._notify(ready=True)
        log.info("daemon.ready", drop_dir=str(self.config.drop_dir), state_dir=str(self.config.state_dir))
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
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: self.stop())

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
                        heartbeat=self._heartbeat)
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
                next_rescan = time.monotonic() + self.config.watch.rescan_interval
            watcher.rescan_if_requested()
            known = set(self.store.identities_in_drop_dir())
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
        fields = {"STATUS": status_line(counts, activity, self.setup_problems, newest)}
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
        path = Path(job.iso_path)
        if path.parent != self.config.drop_dir or not os.path.lexists(path):
            return
        outcome = {REGISTERED: outcomes.DONE, DUPLICATE: outcomes.DONE, FAILED: outcomes.FAILED,
                   REJECTED: outcomes.REJECTED}[job.state]
        reason = job.error if job.state != REGISTERED else None
        moved = outcomes.move_to_outcome(self.config.drop_dir, path, outcome, job.id, reason)
        self.store.update(job.id, iso_path=str(moved))

    def _remove_orphan_workdirs(self) -> None:
        keep = {self._marker(job.id) for job in self.store.jobs((BUILT, UPLOADING))}
        keep |= {self._marker(job.id) for job in self.store.jobs((FAILED,)) if job.failed_stage == "register"}
        for entry in self.config.work_root.iterdir():
            if entry.name not in keep:
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
        try:
            artifact = build.run_build(
                job_id=self._marker(job.id), template_dir=self.config.build.template_dir,
                command=self.config.build.command, artifact_name=self.config.build.artifact,
                iso=Path(job.iso_path), workdir=workdir, log_path=log_path,
                timeout=self.config.build.timeout,
                on_line=monitor.packer_line,
                on_start=lambda pid: store.update(job.id, pgid=pid),
                stop_event=self.stop_event)
        except BuildFailed as failure:
            self._running_build = None
            self._build_failed(store.get(job.id), failure, monitor.explain(str(failure)))
        else:
            store.update(job.id, state=BUILT, stage="built", artifact=str(artifact), pgid=None,
                         error=None, next_try=0)
            log.info("build.finished", job=job.id, iso=job.iso, artifact=str(artifact),
                     minutes=round((time.monotonic() - started) / 60, 1))
        finally:
            self._running_build = None
            self.activity.pop("builder", None)

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
        facts = IsoFacts(**job.facts)
        name = resource_name(self.config.maas.name_template, facts)
        title = resource_title(self.config.maas.title_template, facts)
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

    def _run_registration(self, job: Job, api_key: str, name: str, title: str):
        settings = self.config.maas

        def progress(fraction: float) -> None:
            self.activity["registrar"] = f"uploading {name} {int(fraction * 100)}%"

        def on_retry(reason: str, wait: float) -> None:
            self.activity["registrar"] = f"waiting for MAAS: {redact(reason)}, retry in {_for_humans(wait)}"

        async def register():
            task = asyncio.ensure_future(maas.register_image(
                url=settings.url, api_key=api_key, name=name, title=title,
                architecture=settings.architecture, artifact=Path(job.artifact), sha256=_sha256_file(job.artifact),
                size=os.path.getsize(job.artifact), progress=progress, on_retry=on_retry,
                request_timeout=settings.request_timeout, retries=3,
                retry_max_wait=min(30.0, settings.retry_max_wait)))
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
        log.info("register.done", job=job.id, resource=registration.name, resource_id=registration.resource_id,
                 set_version=registration.set_version, uploaded=registration.uploaded, sha256=registration.sha256)
        self._finish_move(store.get(job.id))
        build.remove_workdir(self._workdir(job.id))
        if self.config.maas.notify:
            self._notify_admins(api_key, f"esxi-watcher registered {registration.name} from {job.iso}.",
                                "success", f"esxi-watcher-{job.id}")

    def _notify_admins(self, api_key: str, message: str, category: str, ident: str) -> None:
        settings = self.config.maas
        try:
            asyncio.run(maas.notify_admins(url=settings.url, api_key=api_key, message=message,
                                           category=category, ident=ident))
        except Exception as error:  # a banner is a courtesy; never fail a job for it
            log.warning("notify.failed", error=redact(str(error)))

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


def _sha256_file(path: str) -> str:
    """The artifact's sha256, as the build's check recorded it in its single read of the file."""
    return build.artifact_sha256(Path(path))


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".iso") else name


def _for_humans(seconds: float) -> str:
    return f"{int(seconds)} s" if seconds < 90 else f"{round(seconds / 60)} min"

