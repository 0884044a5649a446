"""Each MAAS target: the key file, reachable and its version, the key accepted, allowed to create
boot resources."""

from __future__ import annotations

from typing import Iterator

from esxi_watcher.config import TargetConfig
from esxi_watcher.doctor.verdict import FAIL, PASS, Check
from esxi_watcher.errors import EsxiWatcherError

MAAS_TIMEOUT = 10.0  # seconds per MAAS request: doctor answers quickly even when MAAS is away


def maas_target(target: TargetConfig) -> Iterator[Check]:
    """Given a target, yield its key file, then reachable, key accepted and admin, stopping at the first FAIL."""
    from esxi_watcher import maas
    from esxi_watcher.maas.probe import probe_target

    label = f"maas[{target.name}]"
    try:
        key = maas.read_api_key(target.api_key_file)
    except EsxiWatcherError as error:
        yield Check(f"{label} API key", FAIL, str(error),
                    f"`maas apikey --username=ADMIN > {target.api_key_file} && chmod 600 {target.api_key_file}`")
        return
    yield Check(f"{label} API key", PASS, f"{target.api_key_file}")
    timeout = min(target.request_timeout, MAAS_TIMEOUT)
    probe = probe_target(maas.Endpoint(url=target.url, api_key=key, request_timeout=timeout))
    if probe.unreachable:
        yield Check(f"{label} reachable", FAIL, f"{target.url}: {probe.unreachable}",
                    f"start MAAS (`snap services maas` / `systemctl status maas-regiond`) or fix {target.where}.url; "
                    f"`curl {target.url}api/2.0/version/` must answer")
        return
    yield Check(f"{label} reachable", PASS, f"MAAS {probe.version} at {target.url}")
    if probe.key_refused:
        yield Check(f"{label} key accepted", FAIL, probe.key_refused,
                    f"`maas apikey --username=ADMIN > {target.api_key_file}` on the region")
        return
    yield Check(f"{label} key accepted", PASS, f"as user {probe.username}")
    if not probe.admin:
        yield Check(f"{label} may create boot resources", FAIL,
                    f"not allowed to create boot resources: {probe.username} is not a MAAS admin",
                    f"use an admin's key: `maas apikey --username=ADMIN > {target.api_key_file}` (or make "
                    f"{probe.username} an admin)")
        return
    yield Check(f"{label} may create boot resources", PASS, f"{probe.username} is a MAAS admin")
