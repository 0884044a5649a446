"""The build step: one queued job's ISO through packer-maas into an image kept for its targets.

One build at a time (it needs the host's KVM, memory and disk). A build that cannot start now (no
KVM, no space in the state dir) leaves its job queued with a reason and a time to look again; one
that failed in a way that may pass is tried again later; anything else fails the job.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import structlog

from esxi_watcher import build, host, provenance
from esxi_watcher.buildlock import BuildLock
from esxi_watcher.daemon import targets
from esxi_watcher.daemon.activity import Lease, Slot
from esxi_watcher.daemon.context import Context
from esxi_watcher.errors import BuildFailed, BuildLockUnavailable, BuildOutOfSpace, StoreUnavailable
from esxi_watcher.intake import human_size, still_in_place
from esxi_watcher.logs import redact
from esxi_watcher.progress import BuildMonitor, JobProgress
from esxi_watcher.store import Job, State, Step

log = structlog.get_logger(__name__)

KVM_RECHECK = 600.0
SPACE_RECHECK = 10.0  # a job waiting for space in the state dir looks again this often
CONSOLE_POLL = 0.5  # how often a running build's serial console is read for the status line
LOCK_RECHECK = 60.0  # a job whose build lock file cannot be opened looks again this often
TRANSIENT_BACKOFF = 60.0  # a build that may have failed by chance waits this long per attempt


def build_next(context: Context, slot: Slot) -> float | None:
    """Build the next due queued job. Return 0 when one was handled, else the seconds until the next
    is due (None: none waits)."""
    job = context.store.next_due(State.QUEUED)
    if job is None:
        due = context.store.next_try_in(State.QUEUED)
        if due is None:
            slot.show(None)  # nothing waits (for KVM or space) any more
        return due
    try:
        build_job(context, job, slot)
    except StoreUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - an error nobody planned for fails its job, not the daemon
        internal_error(context, job, error)
    return 0.0


def build_job(context: Context, job: Job, slot: Slot) -> None:
    store = context.store
    if not still_in_place(job):
        reason = "the ISO was removed or replaced in the drop dir before it was built"
        store.update(job.id, state=State.FAILED, failed_stage=Step.BUILD, error=reason)
        log.warning("build.iso_gone", job=job.id, iso=job.iso)
        return
    waiting = _kvm_problem(context)
    if waiting:
        slot.show(f"waiting: {waiting}")
        store.update(job.id, stage="waiting for KVM", error=waiting, next_try=time.time() + KVM_RECHECK)
        return
    shortage = _space_shortage(context, job)
    if shortage:
        _wait_for_space(context, job, shortage, slot)
        return
    lock = BuildLock(context.config.build.lock_file)
    if not _take_build_lock(context, job, slot, lock):
        return
    try:
        attempts = job.build_attempts + 1
        store.update(job.id, state=State.BUILDING, stage="starting", error=None, build_attempts=attempts, pgid=None)
        log.info("job.building", job=job.id, iso=job.iso, attempt=attempts, workdir=str(context.workdir(job.id)))
        _record_recipe(context, job)
        trace = _Trace()
        with slot.lease() as lease:
            artifact, failure, monitor = _run(context, job, lease, trace)
        _record_build(context, job.id, trace, artifact)
        if failure is not None:
            # The console is the guest's own text: an installer quoting its kickstart could show the password.
            _build_failed(context, store.get(job.id), failure, redact(monitor.explain(str(failure))), slot)
            return
        _keep_image(context, job, artifact)
    finally:
        lock.release()


def _record_recipe(context: Context, job: Job) -> None:
    """Record in the job's provenance what it is built with: today's recipe (its fingerprint becomes
    the job's, unless another live job of this content was queued with it), the template's git
    source, the packer version, and how long the job waited in line."""
    config, store = context.config, context.store
    try:
        fingerprint = provenance.fingerprint_for(config)
    except OSError as error:  # the state dir cannot hold the salt: the build says more if it matters
        log.warning("provenance.no_fingerprint", job=job.id, error=error.strerror or str(error))
        fingerprint = job.fingerprint
    update = {
        "iso": {"name": job.iso, "sha256": job.sha256, "size": job.size}, "esxi": job.facts,
        "template": {"path": str(config.build.template_dir), "fingerprint": fingerprint,
                     **provenance.template_source(config.build.template_dir, config.build.artifact)},
        "kickstart": provenance.kickstart_record(config.build),
        "packer_version": provenance.packer_version(config.build.environment or None),
        "durations": {"queued": round(time.time() - job.created, 3)},
    }
    store.change_provenance(job.id, lambda record: provenance.merged(record, update))
    if fingerprint and fingerprint != job.fingerprint and store.live_job_for(job.sha256, fingerprint) is None:
        store.update(job.id, fingerprint=fingerprint)
        log.info("build.recipe_changed", job=job.id, was=provenance.short(job.fingerprint),
                 now=provenance.short(fingerprint))


class _Trace:
    """What a build did, for its provenance: the commands as run and when each stage began."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.stages: list[tuple[str, float]] = [("starting", time.monotonic())]
        self.lock = threading.Lock()

    def command(self, argv: list[str]) -> None:
        self.commands.append([redact(str(arg)) for arg in argv])

    def stage(self, stage: str) -> None:
        with self.lock:
            self.stages.append((stage, time.monotonic()))

    def durations(self) -> dict[str, float]:
        """The whole build's seconds ("build") and each stage's ("build:<stage>")."""
        now = time.monotonic()
        with self.lock:
            stages = list(self.stages)
        durations = {"build": round(now - stages[0][1], 3)}
        for (stage, began), (_, ended) in zip(stages, stages[1:] + [("", now)]):
            durations[f"build:{stage}"] = round(durations.get(f"build:{stage}", 0) + ended - began, 3)
        return durations


def _record_build(context: Context, job_id: int, trace: _Trace, artifact: Path | None) -> None:
    """Record the commands as run, how long the build and each of its stages took, and the image's
    size and sha256."""
    update: dict = {"commands": trace.commands, "durations": trace.durations()}
    if artifact is not None:
        update["artifact"] = {"size": artifact.stat().st_size, "sha256": build.artifact_sha256(artifact)}
    context.store.change_provenance(job_id, lambda record: provenance.merged(record, update))


def _take_build_lock(context: Context, job: Job, slot: Slot, lock: BuildLock) -> bool:
    """Wait for the host's build lock (another daemon's or a one-shot build may hold it), showing
    whose build this one waits for. Return False when it cannot be had now: the job stays queued."""
    def waiting(note: str) -> None:
        slot.show(note)
        context.store.update(job.id, stage=note)
        log.info("build.waiting_for_lock", job=job.id, iso=job.iso, reason=note)

    try:
        taken = lock.acquire(context.stop_event, on_wait=waiting)
    except BuildLockUnavailable as error:
        slot.show(f"waiting: {error}")
        context.store.update(job.id, stage="waiting for the build lock", error=str(error),
                             next_try=time.time() + LOCK_RECHECK)
        log.error("build.lock_unavailable", job=job.id, reason=str(error))
        return False
    slot.show(None)
    return taken


def _run(context: Context, job: Job, lease: Lease,
         trace: _Trace) -> tuple[Path | None, BuildFailed | None, BuildMonitor]:
    """Run the build, showing its stage; return (artifact, None) or (None, why it failed). The
    trace gets the commands it ran and its stages."""
    config, store = context.config, context.store
    workdir = context.workdir(job.id)
    started = time.monotonic()
    lease.show(JobProgress(_stem(job.iso), now=started).text(started))
    clean_host(context)
    monitor = _monitor(context, job, workdir, started, lease, trace)
    console = _ConsolePoller(monitor)
    try:
        artifact = build.run_build(
            job_id=context.marker(job.id), template_dir=config.build.template_dir,
            command=config.build.command, artifact_name=config.build.artifact,
            iso=Path(job.iso_path), workdir=workdir, log_path=config.logs_dir / f"{job.id}.log",
            timeout=config.build.timeout, build_config=config.build, on_line=monitor.packer_line,
            on_start=lambda pid: store.update(job.id, pgid=pid), stop_event=context.stop_event,
            on_command=trace.command)
    except BuildFailed as error:
        return None, error, monitor
    finally:
        console.stop()
    return artifact, None, monitor


class _ConsolePoller:
    """Reads the build's serial console while it runs (Packer prints nothing during the install)."""

    def __init__(self, monitor: BuildMonitor) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(monitor,), name="console", daemon=True)
        self._thread.start()

    def _poll(self, monitor: BuildMonitor) -> None:
        while not self._done.wait(CONSOLE_POLL):
            try:
                monitor.poll()
            except Exception:  # noqa: BLE001 - the console is a courtesy; the build goes on
                log.exception("build.console_poll_failed")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _monitor(context: Context, job: Job, workdir: Path, started: float, lease: Lease,
             trace: _Trace) -> BuildMonitor:
    """Follow the build's stage into the status line (through the build's lease) and the store."""
    progress = JobProgress(_stem(job.iso), now=started)
    lock = threading.Lock()
    recorded = {"note": None}

    def show(stage: str) -> None:
        stage = redact(stage)
        now = time.monotonic()
        with lock:
            moved_on = progress.build_stage(stage, now)
            if moved_on:
                trace.stage(stage)
            changed = moved_on or recorded["note"] is None
            lease.show(progress.text(now))
            note = progress.note(now)  # changes with the stage and once a minute
            if note == recorded["note"]:
                return
            recorded["note"] = note
        context.store.update(job.id, stage=note)
        if changed:
            log.info("job.stage", job=job.id, stage=stage)

    build_config = context.config.build
    return BuildMonitor(workdir / build_config.template_dir.name / build_config.console_log, on_stage=show)


def _keep_image(context: Context, job: Job, artifact: Path) -> None:
    """Move the image (and the sha256 its check recorded) to state_dir/artifacts/, where it stays
    until `forget`: a target added later registers it without a rebuild. The work dir goes."""
    kept = context.artifact_path(job.id)
    kept.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (build.SHA256_SUFFIX, ""):  # the image last: its sha256 record is there with it
        source = Path(f"{artifact}{suffix}")
        if source.exists():
            os.replace(source, f"{kept}{suffix}")
    build.remove_workdir(context.workdir(job.id))
    job = context.store.update(job.id, state=State.BUILT, stage="built", artifact=str(kept), pgid=None,
                               error=None, next_try=0)
    targets.plan(context, job)  # a target added while it was built
    targets.settle(context, job.id)


def _space_shortage(context: Context, job: Job) -> str | None:
    """Why the state dir cannot hold this job's build now, or None (see build.space_needed)."""
    config = context.config
    needed = build.space_needed(config.build.template_dir, job.size or 0)
    free = shutil.disk_usage(config.state_dir).free
    if free >= needed:
        return None
    return (f"no space left in the state dir {config.state_dir}: {human_size(free)} free, "
            f"a build needs about {human_size(needed)} (the ISO and the template's disk)")


def _wait_for_space(context: Context, job: Job, reason: str, slot: Slot, build_tail: str | None = None) -> None:
    """Keep the job in line until there is space: disk space is not the ISO's fault, nor counted."""
    slot.show(f"waiting for space: {reason}")
    error = reason if build_tail is None else f"{reason}\n{build_tail}"
    context.store.update(job.id, state=State.QUEUED, stage=f"waiting for space: {reason}", error=error, pgid=None,
                         next_try=time.time() + SPACE_RECHECK)
    log.warning("build.waiting_for_space", job=job.id, iso=job.iso, reason=reason)


def _build_failed(context: Context, job: Job, failure: BuildFailed, reason: str, slot: Slot) -> None:
    store, config = context.store, context.config
    discard_build(context, job.id)
    if context.stop_event.is_set():
        store.update(job.id, state=State.QUEUED, stage="interrupted by shutdown", pgid=None,
                     build_attempts=max(job.build_attempts - 1, 0))
        return
    if isinstance(failure, BuildOutOfSpace):
        store.update(job.id, build_attempts=max(job.build_attempts - 1, 0))
        free = human_size(shutil.disk_usage(config.state_dir).free)
        _wait_for_space(context, job, f"the build ran out of space (No space left on device; {free} free in "
                                      f"the state dir {config.state_dir} now)", slot, reason)
        return
    if failure.transient and job.build_attempts <= config.build.retries:
        wait = TRANSIENT_BACKOFF * job.build_attempts
        store.update(job.id, state=State.QUEUED, stage=f"retry in {int(wait)} s", error=reason, pgid=None,
                     next_try=time.time() + wait)
        log.warning("build.retry_later", job=job.id, iso=job.iso, reason=reason, wait=wait)
    else:
        fail_build(context, job, reason)


def fail_build(context: Context, job: Job, reason: str) -> None:
    context.store.update(job.id, state=State.FAILED, failed_stage=Step.BUILD, error=reason, pgid=None, stage=None)
    log.error("job.failed", job=job.id, iso=job.iso, stage=Step.BUILD, reason=reason)
    context.mover.finish(context.store, context.store.get(job.id))


def internal_error(context: Context, job: Job, error: Exception) -> None:
    """An error nobody planned for fails its job with a reason, instead of leaving it building until
    the next restart; the builder goes on with the next job."""
    log.exception("job.internal_error", job=job.id, stage=Step.BUILD)
    reason = redact(f"unexpected error while building: {type(error).__name__}: {error} (the traceback is "
                    f"in `journalctl -u esxi-watcher`; `esxi-watcher retry {job.id}` tries again)")
    discard_build(context, job.id)
    fail_build(context, context.store.get(job.id), reason)


def discard_build(context: Context, job_id: int) -> None:
    """End what a build that did not finish left behind: its processes, mounts, nbd devices, work dir."""
    clean_host(context, dead_jobs={context.marker(job_id)})
    build.remove_workdir(context.workdir(job_id))


def clean_host(context: Context, dead_jobs: set[str] | None = None) -> host.CleanupReport:
    """End processes, mounts and nbd devices left by builds of ours (default: all of them).

    Called only while no build of ours runs.
    """
    # What a dead build can leave belongs to a job that was building (its process group recorded)
    # or still has a work dir: not to the whole history.
    jobs = context.store.jobs_that_were_building()
    if dead_jobs is None:
        dead_jobs = {context.marker(job.id) for job in jobs} | _work_dir_names(context)
    groups = {job.pgid: context.marker(job.id) for job in jobs if job.pgid}
    report = host.clean_host(live_jobs=set(), dead_jobs=dead_jobs, work_root=context.config.work_root,
                             process_groups=groups)
    if any(report.counts().values()):
        log.warning("host.cleaned", **report.counts())
    return report


def _work_dir_names(context: Context) -> set[str]:
    """Names of the work dirs this daemon made (`<instance>-<job>`); anything else is not ours."""
    try:
        return {entry.name for entry in context.config.work_root.iterdir() if context.made_workdir(entry.name)}
    except FileNotFoundError:
        return set()


def _kvm_problem(context: Context) -> str | None:
    from esxi_watcher import kvm

    build_config = context.config.build
    if not kvm.template_wants_kvm(build_config.template_dir, build_config.command):
        return None
    verdict = kvm.kvm_can_run_guests(cache_dir=context.config.state_dir)
    return None if verdict.ok else verdict.reason


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".iso") else name
