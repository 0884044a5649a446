"""The retention step (`maas.keep`): one pass over a target's images, run by its registrar.

A pass is due when the daemon starts, after each registration on the target, after a reload, and
every PASS_INTERVAL (an image kept because MAAS reported it deployed may be deleted later). It
plans per release line (esxi_watcher.retention), checks in MAAS that the newest kept image is
complete, then reads each resource past the count: deletes it, records it gone, or records once
why it stays. MAAS away or refusing: nothing changes, the next pass tries again.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

import structlog

from esxi_watcher import build, maas, retention
from esxi_watcher.config import TargetConfig
from esxi_watcher.daemon.activity import Slot
from esxi_watcher.daemon.context import Context
from esxi_watcher.errors import EsxiWatcherError, MaasError, MaasUnavailable
from esxi_watcher.logs import add_secret, redact
from esxi_watcher.retention import Image, LinePlan
from esxi_watcher.store import Registration, Target

log = structlog.get_logger(__name__)

PASS_INTERVAL = 3600.0  # seconds between passes when nothing asks for one sooner
STOP_POLL = 0.5


def request_pass(context: Context, target_name: str) -> None:
    """Make the target's next pass due now (after a registration there, or a reload)."""
    context.retention_next[target_name] = 0.0


def due_in(context: Context, target: TargetConfig) -> float | None:
    """Seconds until the target's next pass is due (0: now); None when keep is unset."""
    if target.keep is None:
        return None
    return max(0.0, context.retention_next.get(target.name, 0.0) - time.time())


def run_pass(context: Context, target: TargetConfig, slot: Slot) -> None:
    """One retention pass on the target; the next is due PASS_INTERVAL from now."""
    context.retention_next[target.name] = time.time() + PASS_INTERVAL
    # Read the target's settings after that: a reload swaps the config, then makes every pass due,
    # so a pass that began with the old settings is followed by one with the new.
    target = context.config.target(target.name)
    if target is None or target.keep is None:
        return
    records = {record.job: record for record in context.store.registrations_on(target.name, (Target.REGISTERED,))}
    plans = retention.plan(_images(context, records.values()), target.keep)
    _clear_stale_notes(context, target, plans, records)
    older = sum(len(line_plan.older) for line_plan in plans)
    log.debug("retention.pass", target=target.name, keep=target.keep, lines=len(plans), older=older)
    if not older:
        return
    try:
        api_key = maas.read_api_key(target.api_key_file)
    except EsxiWatcherError as error:
        log.warning("retention.skipped", target=target.name, reason=str(error))
        return
    add_secret(api_key)
    endpoint = maas.Endpoint(url=target.url, api_key=api_key, request_timeout=target.request_timeout)
    with slot.lease() as lease:
        lease.show(f"retention on {target.name}")
        try:
            _run(context, _Pass(context, target, endpoint, plans, records))
        except asyncio.CancelledError:
            log.info("retention.interrupted", target=target.name)
        except MaasUnavailable as error:
            log.warning("retention.waiting_for_maas", target=target.name, reason=redact(str(error)),
                        next_pass=round(PASS_INTERVAL))
        except MaasError as error:  # the key may not delete (not an admin's), say: the next pass tries again
            log.error("retention.refused", target=target.name, reason=redact(str(error)),
                      next_pass=round(PASS_INTERVAL))


def _images(context: Context, records) -> list[Image]:
    images = []
    for record in records:
        job = context.store.get(record.job)
        if job is None or not job.facts or record.resource_id is None:
            continue
        images.append(Image(job=record.job, resource=record.resource, resource_id=record.resource_id,
                            set_version=record.set_version, facts=job.facts))
    return images


def _clear_stale_notes(context: Context, target: TargetConfig, plans: list[LinePlan],
                       records: dict[int, Registration]) -> None:
    """An image kept by the count (keep raised, or a newer one removed) no longer needs a reason."""
    for line_plan in plans:
        for image in line_plan.kept:
            if records[image.job].kept is not None:
                context.store.update_registration(image.job, target.name, kept=None)


def _run(context: Context, one_pass: _Pass) -> None:
    """Run the pass in an event loop of our own; cancel it when the daemon stops."""
    async def watched() -> None:
        task = asyncio.ensure_future(one_pass.run())
        while not task.done():
            if context.stop_event.is_set():
                task.cancel()
            await asyncio.wait([task], timeout=STOP_POLL)
        task.result()

    asyncio.run(watched())


class _Pass:
    """One pass: the plans, MAAS's resources as read, and what was done."""

    def __init__(self, context: Context, target: TargetConfig, endpoint: maas.Endpoint, plans: list[LinePlan],
                 records: dict[int, Registration]):
        self.context = context
        self.target = target
        self.endpoint = endpoint
        self.plans = plans
        self.records = records
        self.client: maas.Client | None = None
        self.read: dict[int, dict | None] = {}

    async def run(self) -> None:
        self.client = await maas.Client.connect(self.endpoint)
        due: dict[int, list[tuple[Image, LinePlan]]] = {}
        for line_plan in self.plans:
            if line_plan.older and await self._newest_is_complete(line_plan):
                for image in line_plan.older:
                    due.setdefault(image.resource_id, []).append((image, line_plan))
        for resource_id, images in sorted(due.items()):
            await self._settle_resource(resource_id, images)

    async def _resource(self, resource_id: int) -> dict | None:
        if resource_id not in self.read:
            self.read[resource_id] = await self.client.read(resource_id)
        return self.read[resource_id]

    async def _newest_is_complete(self, line_plan: LinePlan) -> bool:
        """Whether MAAS holds the line's newest kept image complete: never delete an older one
        while the newest is missing (deleted by hand, say)."""
        newest = line_plan.kept[0]
        if retention.holds_complete(await self._resource(newest.resource_id), newest):
            return True
        reason = (f"the newest image of {retention.line_label(line_plan.line)}, {newest.resource} (resource "
                  f"{newest.resource_id} set {newest.set_version}), is not complete in MAAS")
        for image in line_plan.older:
            self._keep(image, reason)
        return False

    async def _settle_resource(self, resource_id: int, images: list[tuple[Image, LinePlan]]) -> None:
        resource = await self._resource(resource_id)
        gone = retention.missing_sets(resource, [image for image, _ in images])
        for image, line_plan in images:
            if image in gone:
                self._removed(image, line_plan, gone=f"set {image.set_version} is no longer in resource {resource_id}")
        images = [(image, line_plan) for image, line_plan in images if image not in gone]
        if not images:
            return
        verdict = retention.judge(resource, resource_id, [image for image, _ in images], self._created(resource_id),
                                  datetime.now(timezone.utc), self.target.keep_deployed_within)
        if verdict.action == "kept":
            for image, _ in images:
                self._keep(image, verdict.reason)
            return
        if verdict.action == "delete":
            await self.client.delete(resource_id)
        for image, line_plan in images:
            self._removed(image, line_plan, gone=verdict.reason if verdict.action == "gone" else None)

    def _created(self, resource_id: int) -> bool:
        """Whether one of our uploads on this target created the resource (the store says so)."""
        return any(record.created_resource and record.resource_id == resource_id
                   for record in self.context.store.registrations_on(self.target.name, tuple(Target)))

    def _keep(self, image: Image, reason: str) -> None:
        """Record why the image stays, and log it once (not at every pass)."""
        if self.records[image.job].kept == reason:
            return
        self.context.store.update_registration(image.job, self.target.name, kept=reason)
        log.info("retention.kept", job=image.job, target=self.target.name, resource=image.resource,
                 resource_id=image.resource_id, reason=reason)

    def _removed(self, image: Image, line_plan: LinePlan, gone: str | None) -> None:
        removal = retention.removal_text(image, image.resource_id, line_plan, self.target.keep, self.target.name,
                                         gone=gone)
        self.context.store.update_registration(image.job, self.target.name, state=Target.REMOVED,
                                               removed=time.time(), removal=removal, kept=None)
        log.info("retention.gone" if gone else "retention.deleted", job=image.job, target=self.target.name,
                 resource=image.resource, resource_id=image.resource_id, set_version=image.set_version,
                 removal=removal)
        drop_kept_image(self.context, image.job)


def drop_kept_image(context: Context, job_id: int) -> None:
    """Delete the job's kept image once retention removed it from every target it was on: no target
    wants it any more, and a target added later should not get an image the others deleted."""
    records = context.store.registrations(job_id)
    job = context.store.get(job_id)
    if job is None or not job.artifact or any(record.state is not Target.REMOVED for record in records):
        return
    kept = Path(job.artifact)
    if kept.parent != context.config.artifacts_dir:
        return
    for suffix in ("", build.SHA256_SUFFIX):
        Path(f"{kept}{suffix}").unlink(missing_ok=True)
    context.store.update(job_id, artifact=None)
    log.info("retention.image_file_deleted", job=job_id, path=str(kept))
