"""Banners for MAAS's admins (the notifications API): one banner per ident, replaced, never added to.

MAAS (src/maasserver/api/notification.py) has `notifications/` (list, create) and
`notifications/{id}/` (read, update, delete, op=dismiss). Listing shows the notifications the
caller may see and has not dismissed; a banner an admin dismissed is not listed, nor shown again.
"""

from __future__ import annotations

import structlog

from esxi_watcher.logs import redact
from esxi_watcher.maas.client import Client, Endpoint

log = structlog.get_logger(__name__)

CATEGORIES = ("error", "warning", "success", "info")


async def post_banner(endpoint: Endpoint, *, ident: str, message: str, category: str) -> None:
    """Show `message` to MAAS's admins as a banner; delete our earlier banners with this ident first,
    so the ident has at most one. Raises what register_image raises for the calls it makes."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}")
    client = await Client.connect(endpoint)
    removed = await _delete_banners(client, ident)
    await client.create_notification(message=redact(message), category=category, ident=ident, admins="true")
    log.info("maas.banner.posted", ident=ident, category=category, replaced=removed)


async def dismiss_banner(endpoint: Endpoint, *, ident: str) -> None:
    """Delete the banners with this ident (none is fine)."""
    client = await Client.connect(endpoint)
    removed = await _delete_banners(client, ident)
    if removed:
        log.info("maas.banner.deleted", ident=ident, count=removed)


async def _delete_banners(client: Client, ident: str) -> int:
    """Delete every notification with this ident; return how many went."""
    removed = 0
    for notification in await client.notifications():
        if notification.get("ident") == ident and "id" in notification:
            await client.delete_notification(notification["id"])
            removed += 1
    return removed
