"""Banners for MAAS's admins on each target: one per job (a later one replaces the earlier), and
the store notice. A banner is a courtesy: it never fails a job, nor holds a worker for long."""

from __future__ import annotations

import asyncio
import threading

import structlog

from esxi_watcher import maas
from esxi_watcher.config import Config, TargetConfig
from esxi_watcher.errors import EsxiWatcherError
from esxi_watcher.logs import add_secret, redact
from esxi_watcher.provenance import SHORT

log = structlog.get_logger(__name__)

BANNER_TIMEOUT = 30.0  # the longest a banner may hold its caller
STORE_NOTICE_IDENT = "esxi-watcher-store"


def job_ident(job_id: int) -> str:
    """One banner per job on each target: a later one replaces the earlier."""
    return f"esxi-watcher-{job_id}"


def provenance_note(job) -> str:
    """What a success banner says of what built the image: the job, the template's commit (or the
    recipe's fingerprint when the template is not a git checkout) and where to read the rest."""
    template = (job.provenance or {}).get("template") or {}
    commit = template.get("git_commit")
    if commit:
        recipe = f"template {commit[:SHORT]}" + (" with local changes" if template.get("git_dirty") else "")
    else:
        recipe = f"recipe {(template.get('fingerprint') or job.fingerprint or 'unknown')[:SHORT]}"
    return f"job {job.id}, {recipe}: `esxi-watcher show {job.id}`"


def post(target: TargetConfig, endpoint: maas.Endpoint, ident: str, category: str, message: str) -> None:
    _courtesy(target, maas.post_banner(endpoint, ident=ident, message=message, category=category))


def dismiss(target: TargetConfig, endpoint: maas.Endpoint, ident: str) -> None:
    _courtesy(target, maas.dismiss_banner(endpoint, ident=ident))


def announce_everywhere(config: Config, message: str, category: str, ident: str) -> None:
    """Post a banner on every target that has a usable key, each in the background (a target may be
    slow or away)."""
    for target in config.targets:
        try:
            api_key = maas.read_api_key(target.api_key_file)
        except EsxiWatcherError:
            continue
        add_secret(api_key)
        endpoint = maas.Endpoint(url=target.url, api_key=api_key, request_timeout=target.request_timeout)
        threading.Thread(target=post, args=(target, endpoint, ident, category, message),
                         name=f"banner-{target.name}", daemon=True).start()


def _courtesy(target: TargetConfig, call) -> None:
    try:
        asyncio.run(asyncio.wait_for(call, BANNER_TIMEOUT))
    except Exception as error:  # noqa: BLE001
        log.warning("banner.failed", target=target.name, error=redact(str(error)) or type(error).__name__)
