"""The register step: one target's next due registration of a built image, one attempt at a time.

Each target has its own registrar running this, so a target that is down, slow or refusing the
key never holds the others back. MAAS being away (MaasUnavailable) is not a failure: the
registration waits and tries again with capped exponential backoff, for as long as it takes; the
next try is kept in the store, so a restart keeps the pace. Only answers waiting cannot fix
(MaasError: the key refused, a 400 with a reason, the bytes held by another image) fail it, with a
banner on that target naming the command that tries again.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Callable

import structlog

from esxi_watcher import build, maas, provenance
from esxi_watcher.config import TargetConfig
from esxi_watcher.daemon import banners, retention_step, targets
from esxi_watcher.daemon.activity import Lease, Slot
from esxi_watcher.daemon.context import Context
from esxi_watcher.errors import EsxiWatcherError, MaasError, MaasUnavailable, MissingApiKey, StoreUnavailable
from esxi_watcher.iso import IsoFacts
from esxi_watcher.logs import add_secret, redact
from esxi_watcher.naming import distinct_name, distinct_title, resource_name, resource_title
from esxi_watcher.progress import JobProgress
from esxi_watcher.status import describe_wait
from esxi_watcher.store import Job, Registration, Target

log = structlog.get_logger(__name__)

NO_KEY_RECHECK = 30.0  # a target without a usable API key file looks for it again this often
STOP_POLL = 0.5  # how often a running upload checks whether the daemon is stopping
LONGEST_DOUBLING = 32  # waits stop doubling long before this; it keeps 2**n a float


def wait_before_next_try(tries: int, target: TargetConfig, chooser: Callable[[], float] = random.random) -> float:
    """Given how many tries failed so far, return the seconds to wait before the next one: from
    retry_min_wait, doubling per try up to retry_max_wait, shortened by a random 0 to 25 % so that
    waits spread."""
    ceiling = min(target.retry_max_wait, target.retry_min_wait * 2.0 ** min(max(tries - 1, 0), LONGEST_DOUBLING))
    return ceiling * (1.0 - 0.25 * chooser())


def register_next(context: Context, target_name: str, slot: Slot) -> float | None:
    """Make one attempt at the target's next due registration. Return 0 when one was handled, else
    the seconds until the next is due (None: none waits)."""
    target = context.config.target(target_name)
    if target is None:  # removed from the configuration: its registrar ends
        return None
    store = context.store
    record = store.next_registration_due(target.name)
    if record is None:
        if retention_step.due_in(context, target) == 0:
            retention_step.run_pass(context, target, slot)
            return 0.0
        slot.show(waiting_note(context, target))
        return _sooner(store.next_registration_in(target.name), retention_step.due_in(context, target))
    job = store.get(record.job)
    try:
        register(context, target, job, record, slot)
    except StoreUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - an error nobody planned for fails this registration only
        log.exception("job.internal_error", job=job.id, stage="register", target=target.name)
        reason = redact(f"unexpected error while registering: {type(error).__name__}: {error} (the traceback is "
                        f"in `journalctl -u esxi-watcher`; `esxi-watcher retry {job.id} --target {target.name}` "
                        f"tries again)")
        _failed(context, target, job, store.registration(job.id, target.name), reason, endpoint=None)
    return 0.0


def _sooner(first: float | None, second: float | None) -> float | None:
    """Given two waits (None: nothing waits), return the shorter."""
    waits = [wait for wait in (first, second) if wait is not None]
    return min(waits) if waits else None


def waiting_note(context: Context, target: TargetConfig) -> str | None:
    """What the status line says while the target's registrations wait for MAAS, or None."""
    waiting = context.store.waiting_registrations(target.name)
    if not waiting:
        return None
    first = waiting[0]
    note = f"waiting for MAAS {target.name} {describe_wait(first)}"
    return note + (f" ({len(waiting)} images)" if len(waiting) > 1 else "")


def register(context: Context, target: TargetConfig, job: Job, record: Registration, slot: Slot) -> None:
    store = context.store
    try:
        api_key = maas.read_api_key(target.api_key_file)
    except EsxiWatcherError as error:
        reason = f"no MAAS API key ({error})" if isinstance(error, MissingApiKey) else str(error)
        store.update_registration(job.id, target.name, error=reason, next_try=time.time() + NO_KEY_RECHECK)
        return
    add_secret(api_key)
    endpoint = maas.Endpoint(url=target.url, api_key=api_key, request_timeout=target.request_timeout)
    tries = record.attempts + 1
    store.update_registration(job.id, target.name, state=Target.UPLOADING, attempts=tries)
    started = time.monotonic()
    with slot.lease() as lease:
        try:
            registration = _attempt(context, target, endpoint, job, record, lease)
        except asyncio.CancelledError:  # the daemon is stopping: this try does not count
            store.update_registration(job.id, target.name, state=Target.PENDING, attempts=record.attempts)
            log.info("register.interrupted", job=job.id, target=target.name, resource=record.resource)
        except MaasUnavailable as error:
            _wait_for_maas(context, target, job, record, tries, redact(str(error)))
        except MaasError as error:
            _failed(context, target, job, record, redact(str(error)), endpoint)
        else:
            _record_duration(context, job.id, target.name, time.monotonic() - started)
            _registered(context, target, job, record, registration, endpoint)


def _attempt(context: Context, target: TargetConfig, endpoint: maas.Endpoint, job: Job, record: Registration,
             lease: Lease) -> maas.Registration:
    """One try, showing its progress in the status line and (every few percent) in the store."""
    artifact = Path(job.artifact)
    if not artifact.is_file():
        raise MaasError(f"the image {artifact} is gone: `esxi-watcher retry {job.id}` builds it again")
    size = artifact.stat().st_size
    shown = JobProgress(job.iso, now=time.monotonic())
    shown.upload_begins(record.resource, target.name, size, time.monotonic())
    lease.show(shown.text(time.monotonic()))

    def progress(fraction: float) -> None:
        now = time.monotonic()
        shown.uploaded(fraction, now)
        lease.show(shown.text(now))
        if shown.upload_due(now):
            context.store.update(job.id, stage=shown.note(now))

    def created(resource_id: int) -> None:  # kept at once: this try may end before `complete`
        context.store.update_registration(job.id, target.name, resource_id=resource_id, created_resource=True)

    return upload(endpoint, target, name=record.resource, title=title_for(target, job, record.resource),
                  artifact=artifact, stop_event=context.stop_event, progress=progress, on_created=created)


def upload(endpoint: maas.Endpoint, target: TargetConfig, *, name: str, title: str, artifact: Path,
           stop_event: threading.Event, progress: Callable[[float], None],
           on_created: Callable[[int], None] | None = None) -> maas.Registration:
    """Given a built image and its MAAS name and title, make one registration attempt on the target,
    in an event loop of its own; stop_event cancels it (raising asyncio.CancelledError) after the
    upload deleted the half-made resource it created. on_created gets the id of a resource this
    attempt's POST created, as soon as it exists. The daemon and `esxi-watcher build` both
    register through here."""
    async def attempt() -> maas.Registration:
        task = asyncio.ensure_future(maas.register_image(
            endpoint, name=name, title=title, architecture=target.architecture, artifact=artifact,
            sha256=build.artifact_sha256(artifact), size=artifact.stat().st_size, progress=progress,
            on_created=on_created))
        cancelled = False
        while not task.done():
            if stop_event.is_set() and not cancelled:
                task.cancel()  # once: the attempt then cleans up what it made in MAAS
                cancelled = True
            await asyncio.wait([task], timeout=STOP_POLL)
        return task.result()

    return asyncio.run(attempt())


def _record_duration(context: Context, job_id: int, target: str, seconds: float) -> None:
    """The job's provenance keeps how long its registration on each target took (the try that did it)."""
    update = {"durations": {f"register:{target}": round(seconds, 3)}}
    context.store.change_provenance(job_id, lambda record: provenance.merged(record, update))


def title_for(target: TargetConfig, job: Job, resource: str) -> str:
    """The title MAAS shows: the target's template's, tagged like the name when the name is tagged."""
    return title_of(target, job.facts, job.sha256, resource)


def title_of(target: TargetConfig, facts: dict, sha256: str, resource: str) -> str:
    """Given an ISO's facts and sha256 and the MAAS name its image gets, return the target's title,
    tagged like the name when the name is tagged."""
    iso_facts = IsoFacts(**facts)
    title = resource_title(target.title_template, iso_facts)
    if resource == distinct_name(resource_name(target.name_template, iso_facts), sha256):
        title = distinct_title(title, sha256)
    return title


def created_resource(context: Context, job: Job, target: TargetConfig, registration: maas.Registration) -> bool:
    """Whether our upload created the resource: this try's POST made it, or an earlier try's did
    (recorded when it was made) and this try found our bytes complete in it."""
    if registration.created_resource:
        return True
    record = context.store.registration(job.id, target.name)
    return bool(record and record.created_resource and record.resource_id == registration.resource_id)


def _wait_for_maas(context: Context, target: TargetConfig, job: Job, record: Registration, tries: int,
                   reason: str) -> None:
    wait = wait_before_next_try(tries, target)
    since = record.since or time.time()
    context.store.update_registration(job.id, target.name, state=Target.PENDING, since=since, error=reason,
                                      next_try=time.time() + wait)
    log.warning("register.waiting_for_maas", job=job.id, target=target.name, resource=record.resource,
                reason=reason, tries=tries, wait=round(wait, 1), waiting_for=round(time.time() - since))


def _failed(context: Context, target: TargetConfig, job: Job, record: Registration, reason: str,
            endpoint: maas.Endpoint | None) -> None:
    context.store.update_registration(job.id, target.name, state=Target.FAILED, error=reason, since=None,
                                      next_try=0)
    log.error("register.failed", job=job.id, iso=job.iso, target=target.name, resource=record.resource,
              reason=reason)
    job = targets.settle(context, job.id)
    if target.notify and endpoint is not None:
        first_line = (reason.splitlines() or [""])[0].rstrip(".")
        banners.post(target, endpoint, banners.job_ident(job.id), "error",
                     f"esxi-watcher could not register {record.resource} from {job.iso} on {target.name}: "
                     f"{first_line}. Once fixed, `esxi-watcher retry {job.id} --target {target.name}` tries again.")


def _registered(context: Context, target: TargetConfig, job: Job, record: Registration,
                registration: maas.Registration, endpoint: maas.Endpoint) -> None:
    context.store.update_registration(job.id, target.name, state=Target.REGISTERED, error=None, since=None,
                                      next_try=0, resource=registration.name, resource_id=registration.resource_id,
                                      set_version=registration.set_version,
                                      created_resource=created_resource(context, job, target, registration))
    retention_step.request_pass(context, target.name)
    log.info("register.done", job=job.id, iso=job.iso, target=target.name, resource=registration.name,
             resource_id=registration.resource_id, set_version=registration.set_version,
             uploaded=registration.uploaded, sha256=registration.sha256, tries=record.attempts + 1)
    targets.settle(context, job.id)
    if target.notify:  # the same ident as a failure banner: this one replaces it
        banners.post(target, endpoint, banners.job_ident(job.id), "success",
                     f"esxi-watcher registered {registration.name} from {job.iso} "
                     f"({banners.provenance_note(context.store.get(job.id) or job)}).")
    elif record.error is not None:  # a failure banner posted while notify was on goes
        banners.dismiss(target, endpoint, banners.job_ident(job.id))
