"""What `doctor` asks one MAAS target: is it there, which version, is the key accepted, and may its
user create boot resources (MAAS 3.4 to 3.7 allow it to admins only, `@admin_method`; 3.8 to those
with the boot-entities permission, which admins have)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from esxi_watcher.errors import EsxiWatcherError, MaasUnavailable
from esxi_watcher.maas.client import Client, Endpoint, preview


@dataclass(frozen=True)
class Probe:
    """How far the questions got: each field is None when an earlier question failed."""

    version: str | None = None
    username: str | None = None
    admin: bool | None = None
    unreachable: str | None = None  # why MAAS could not be reached or read
    key_refused: str | None = None  # why the authenticated call failed


async def _probe(endpoint: Endpoint) -> Probe:
    try:
        client = await Client.connect(endpoint)
        version = await client.version()
    except EsxiWatcherError as error:
        return Probe(unreachable=str(error))
    if not re.match(r"\d+\.\d+", version):  # a proxy's page or another service answering 200
        return Probe(unreachable=f"the answer to reading its version is not MAAS's ({preview(version)}): is "
                                 f"maas.url the MAAS region API (http://HOST:5240/MAAS/)?")
    try:
        user = await client.whoami()
    except MaasUnavailable as error:
        return Probe(version=version, unreachable=str(error))
    except EsxiWatcherError as error:
        return Probe(version=version, key_refused=str(error))
    return Probe(version=version, username=str(user.get("username", "?")),
                 admin=user.get("is_superuser") is True)


def probe_target(endpoint: Endpoint) -> Probe:
    """Given an endpoint (its request_timeout bounds each call), return what MAAS answered."""
    return asyncio.run(_probe(endpoint))
