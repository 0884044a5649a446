"""Everything esxi-watcher asks of MAAS; the only package that imports python-libmaas.

    endpoint = Endpoint(url="http://HOST:5240/MAAS/", api_key=read_api_key(path))
    registration = await register_image(endpoint, name=..., title=..., architecture=..., artifact=...,
                                        sha256=..., size=...)
    await post_banner(endpoint, ident="esxi-watcher-7", message="...", category="success")

One attempt per call, no waiting: the caller owns the retry policy. Errors (esxi_watcher.errors):
MaasUnavailable (waiting can fix it; ImageNotComplete is one), MaasAuthError (401/403),
BytesHeldElsewhere (MAAS 3.8+ holds the bytes under another image), MaasError (anything else).

Modules: apikey (the key file), rules (MAAS's rules, pure), client (the bones session and its
errors; retention reads and deletes resources through it), upload (the chunk upload and the registration attempt), notify (admin banners).
"""

from __future__ import annotations

from esxi_watcher.errors import (BytesHeldElsewhere, ImageNotComplete, MaasAuthError, MaasError,
                                 MaasUnavailable)
from esxi_watcher.maas.apikey import read_api_key
from esxi_watcher.maas.client import Client, Endpoint, server_version
from esxi_watcher.maas.notify import dismiss_banner, post_banner
from esxi_watcher.maas.rules import (Holder, StoreRules, find_holders, newest_set, set_version_key,
                                     store_rules)
from esxi_watcher.maas.upload import CHUNK_SIZE, Registration, name_holds_other_bytes, register_image

__all__ = [
    "BytesHeldElsewhere",
    "CHUNK_SIZE",
    "Client",
    "Endpoint",
    "Holder",
    "ImageNotComplete",
    "MaasAuthError",
    "MaasError",
    "MaasUnavailable",
    "Registration",
    "StoreRules",
    "dismiss_banner",
    "find_holders",
    "newest_set",
    "post_banner",
    "name_holds_other_bytes",
    "read_api_key",
    "register_image",
    "server_version",
    "set_version_key",
    "store_rules",
]
