"""Child-process probes: each runs one piece of esxi-watcher (or a baseline client) on a file and
prints one JSON line: seconds, bytes read (/proc/self/io rchar) and peak RSS of this process.

python -m bench.probe inspect|hash|artifact FILE
python -m bench.probe upload-ours|upload-libmaas URL KEYFILE NAME FILE SHA256 [CHUNK_BYTES]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path


def _io() -> dict[str, int]:
    counters = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        counters[key] = int(value)
    return counters


def _measure(action) -> dict:
    before = _io()
    started = time.perf_counter()
    answer = action()
    seconds = time.perf_counter() - started
    after = _io()
    return {"seconds": seconds, "rchar": after["rchar"] - before["rchar"],
            "read_bytes": after["read_bytes"] - before["read_bytes"],
            "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "answer": answer}


def inspect(path: str):
    from esxi_watcher.iso import inspect_iso

    facts = inspect_iso(path)
    return {"esxi": facts.esxi, "build": facts.build}


def hash_file(path: str):
    from esxi_watcher.intake import sha256_of

    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_of(descriptor)
    finally:
        os.close(descriptor)


def artifact(path: str):
    """What the daemon does between packer's exit and the upload: check the artifact, get its sha256."""
    from esxi_watcher import build

    build.check_artifact(Path(path))
    return build.artifact_sha256(Path(path))


def upload_ours(url: str, key_file: str, name: str, path: str, sha256: str, chunk: str = "") -> dict:
    from esxi_watcher import maas

    options = {"chunk_size": int(chunk)} if chunk else {}
    endpoint = maas.Endpoint(url, Path(key_file).read_text().strip(), request_timeout=600)
    registration = asyncio.run(maas.register_image(
        endpoint, name=name, title=name, architecture="amd64/generic", artifact=Path(path), sha256=sha256,
        size=os.path.getsize(path), poll_interval=0.1, **options))
    return {"uploaded": registration.uploaded, "resource_id": registration.resource_id}


def upload_libmaas(url: str, key_file: str, name: str, path: str, sha256: str, chunk: str = "") -> dict:
    """python-libmaas's own object-layer create() with its defaults (4 MiB chunks, its own sha256 pass)."""
    import warnings

    warnings.simplefilter("ignore")
    from maas.client import connect
    from maas.client.viscera.boot_resources import BootResourceFileType

    async def run():
        client = await connect(url, apikey=Path(key_file).read_text().strip())
        with open(path, "rb") as content:
            resource_ = await client.boot_resources.create(
                name, "amd64/generic", content, title=name, filetype=BootResourceFileType.DDTGZ)
        if asyncio.iscoroutine(resource_):
            resource_ = await resource_
        return {"id": resource_.id}

    return asyncio.run(run())


ACTIONS = {"inspect": inspect, "hash": hash_file, "artifact": artifact,
           "upload-ours": upload_ours, "upload-libmaas": upload_libmaas}


def _import_first(name: str) -> None:
    """Import what the action needs before measuring, so its figures hold only the work itself."""
    import esxi_watcher.build, esxi_watcher.daemon, esxi_watcher.intake, esxi_watcher.iso  # noqa: F401
    if name.startswith("upload"):
        import warnings

        warnings.simplefilter("ignore")
        import esxi_watcher.maas, maas.client, maas.client.viscera.boot_resources  # noqa: F401


def main(argv: list[str]) -> int:
    action = ACTIONS[argv[0]]
    _import_first(argv[0])
    print(json.dumps(_measure(lambda: action(*argv[1:]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
