"""One registration attempt: look for the bytes in MAAS, create a set, upload it, wait until complete.

The MAAS rules that shape it (docs/design.md has their sources):

- a chunk PUT that failed midway cannot be re-sent: the attempt ends (MaasUnavailable) after
  deleting the resource it made, and the caller's retry starts over from a new set;
- MAAS 3.8+ keeps one file per sha256, shared by every image with those bytes: uploading bytes that
  another image already holds deletes that image's file, so we refuse (BytesHeldElsewhere);
- after an interrupted upload MAAS 3.8 answers `Too much data received.` once: this is a MAAS rule,
  not an outage, so the attempt starts over by itself (FRESH_STARTS times at most);
- sets are created with keep_old=true, so a failed upload never costs the image already there;
- `complete` means synced to every region: poll until the newest set is complete with our sha256.

No waiting between tries here: the caller owns the retry policy.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, BinaryIO, Callable
from urllib.parse import urljoin

import aiohttp
import structlog
from maas.client.utils import sign
from maas.client.utils.creds import Credentials

from esxi_watcher.errors import BytesHeldElsewhere, ImageNotComplete, MaasError, MaasUnavailable
from esxi_watcher.maas.apikey import credentials
from esxi_watcher.maas.client import TOO_MUCH_DATA, Client, Endpoint, ResendRefused, StartOver, refusal, unavailable
from esxi_watcher.maas.rules import (StoreRules, find_holders, held_elsewhere_message, is_ours, newest_set,
                                     set_files, set_holds, store_rules)

log = structlog.get_logger(__name__)

FILETYPE = "ddgz"
# Bytes per chunk PUT. Each PUT costs MAAS a request (OAuth check, database transaction, sync
# record), so 4 MiB chunks (the MAAS CLI's) spend more time per request than moving bytes. MAAS sets
# no request size limit (Django's DATA_UPLOAD_MAX_MEMORY_SIZE = None, for images) but holds one PUT's
# body in memory: 64 MiB keeps that modest. Each chunk is streamed from the file in READ_SIZE pieces.
CHUNK_SIZE = 64 << 20
READ_SIZE = 1 << 20
FRESH_STARTS = 2  # `Too much data received.` answers absorbed per attempt (MAAS 3.8 needs one)
COMPLETE_TIMEOUT = 600.0  # how long MAAS may take to call an uploaded set complete (synced)
POLL_INTERVAL = 2.0


@dataclass(frozen=True)
class Registration:
    """What MAAS holds for us once the image is registered."""

    resource_id: int
    name: str
    architecture: str
    set_version: str
    sha256: str
    uploaded: bool  # False when MAAS already held the bytes for this name (nothing was done)
    created_resource: bool = False  # True when this attempt's POST made the resource (it was not there)


async def register_image(endpoint: Endpoint, *, name: str, title: str, architecture: str, artifact: Path,
                         sha256: str, size: int, progress: Callable[[float], None] | None = None,
                         on_created: Callable[[int], None] | None = None, chunk_size: int = CHUNK_SIZE, complete_timeout: float = COMPLETE_TIMEOUT,
                         poll_interval: float = POLL_INTERVAL) -> Registration:
    """Make MAAS hold `artifact` as the newest complete set of boot resource (name, architecture).

    One attempt, no waiting between tries. progress gets 0..1 as MAAS acknowledges chunks (from 0
    again when the upload starts over). on_created gets the id of a resource this attempt's POST made
    new, at once (an attempt that ends before `complete` may still leave it in MAAS). Raises MaasUnavailable for what waiting can fix (its str()
    is a one-line reason; ImageNotComplete when MAAS did not call the set complete within
    complete_timeout), MaasAuthError for 401/403, BytesHeldElsewhere when MAAS 3.8+ holds these bytes
    under another image, MaasError for a refusal waiting cannot fix.
    """
    credentials(endpoint.api_key)  # a malformed key fails before any request
    _check_artifact(Path(artifact), size, sha256)
    attempt = _Attempt(endpoint, name=name, title=title, architecture=architecture, artifact=Path(artifact),
                       sha256=sha256.lower(), size=size, progress=progress, on_created=on_created,
                       chunk_size=chunk_size,
                       complete_timeout=complete_timeout, poll_interval=poll_interval)
    log.info("maas.register", name=name, architecture=architecture, bytes=size, sha256=sha256, url=endpoint.url)
    return await attempt.run()


def _check_artifact(artifact: Path, size: int, sha256: str) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError("sha256 must be 64 hexadecimal digits")
    if size <= 0:
        raise ValueError("size must be positive")
    try:
        actual = artifact.stat().st_size
    except OSError as error:
        raise MaasError(f"cannot read the image {artifact}: {error.strerror}") from None
    if actual != size:
        raise MaasError(f"the image {artifact} has {actual} bytes, not the {size} to register")


class _Attempt:
    """One registration attempt: its parameters and what it did so far."""

    def __init__(self, endpoint: Endpoint, *, name: str, title: str, architecture: str, artifact: Path,
                 sha256: str, size: int, progress: Callable[[float], None] | None,
                 on_created: Callable[[int], None] | None, chunk_size: int, complete_timeout: float,
                 poll_interval: float):
        self.endpoint = endpoint
        self.name = name
        self.title = title
        self.architecture = architecture
        self.artifact = artifact
        self.sha256 = sha256
        self.size = size
        self.progress = progress
        self.on_created = on_created
        self.created_resource = False
        self.chunk_size = chunk_size
        self.complete_timeout = complete_timeout
        self.poll_interval = poll_interval
        self.created_set = False
        self.bytes_sent = 0
        self.fresh_starts = 0

    async def run(self) -> Registration:
        """Read what MAAS holds, create a set unless it is there, upload, wait until complete."""
        client = await Client.connect(self.endpoint)
        rules = store_rules(await client.version())
        resources = await client.resources()
        ours = next((resource for resource in resources if is_ours(resource, self.name, self.architecture)), None)
        log.info("maas.inspected", name=self.name, maas_version=rules.version, resources=len(resources),
                 resource=ours["id"] if ours else None)
        if ours is not None:
            registered = self._already_registered(ours)
            if registered is not None:
                return registered
        self._refuse_shared_bytes(rules, resources, ours)
        resource = await self._create_and_upload(client, created_here=ours is None)
        return await self._wait_until_complete(client, resource["id"])

    def _already_registered(self, ours: dict[str, Any]) -> Registration | None:
        newest = newest_set(ours, complete_only=True)
        if newest is None or not set_holds(newest[1], self.sha256):
            return None
        log.info("maas.already_registered", name=self.name, resource=ours["id"], set_version=newest[0],
                 sha256=self.sha256)
        return self._registration(ours["id"], newest[0])

    def _refuse_shared_bytes(self, rules: StoreRules, resources: list[dict[str, Any]],
                             ours: dict[str, Any] | None) -> None:
        holders = find_holders(resources, self.sha256, include_partial_of_others=rules.shared_files,
                               ours=ours["id"] if ours else None)
        if not holders:
            return
        log.info("maas.bytes_held", name=self.name, holders=[(h.resource_id, h.name, h.set_version) for h in holders],
                 maas_version=rules.version, shared_files=rules.shared_files)
        if rules.shared_files:
            raise BytesHeldElsewhere(held_elsewhere_message(holders[0], self.sha256, rules.version, self.name))

    async def _create_and_upload(self, client: Client, created_here: bool) -> dict[str, Any]:
        while True:
            resource = await client.create(
                name=self.name, architecture=self.architecture, title=self.title, filetype=FILETYPE,
                sha256=self.sha256, size=str(self.size), keep_old="true")
            self.created_set = True
            if created_here:  # the name was free: the POST made the resource
                self.created_resource = True
                if self.on_created is not None:
                    self.on_created(resource["id"])
            version, rfile = self._our_new_file(resource)
            log.info("maas.created", name=self.name, resource=resource["id"], set_version=version,
                     complete=bool(rfile.get("complete")), bytes=self.size)
            if rfile.get("complete"):
                return resource  # MAAS 3.4 and older already held these bytes
            try:
                await self._upload(client, resource["id"], rfile["upload_uri"])
                return resource
            except StartOver:
                await self._clean_up(client, resource["id"], created_here)
                if self.fresh_starts >= FRESH_STARTS:
                    raise MaasError(f"MAAS refused the upload of {self.name}: HTTP 400: {TOO_MUCH_DATA} "
                                    f"(after {self.fresh_starts} fresh starts)") from None
                self.fresh_starts += 1
                log.warning("maas.upload.start_over", name=self.name, resource=resource["id"], reason=TOO_MUCH_DATA)
            except BaseException:  # asyncio.CancelledError too: a cancelled upload leaves no half-made resource
                await self._clean_up(client, resource["id"], created_here)
                raise

    def _our_new_file(self, resource: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        newest = newest_set(resource)
        files = set_files(newest[1]) if newest else []
        if newest is None or len(files) != 1 or files[0].get("sha256") != self.sha256:
            raise MaasError(f"MAAS answered the creation of {self.name} without a new set holding sha256 "
                            f"{self.sha256[:12]}...")
        if not files[0].get("complete") and not files[0].get("upload_uri"):
            raise MaasError(f"MAAS gave no upload address for {self.name} (resource {resource['id']})")
        return newest[0], files[0]

    async def _upload(self, client: Client, resource_id: int, upload_uri: str) -> None:
        upload_url = urljoin(client.api_url, upload_uri)
        sent, next_log = 0, 0.0
        self._report(0.0)
        async with upload_session(client.timeout) as http:
            with self.artifact.open("rb", buffering=0) as stream:
                while sent < self.size:
                    length = min(self.chunk_size, self.size - sent)
                    await put_chunk(http, upload_url, self._pieces(stream, sent, length), client.credentials,
                                    timeout=client.timeout, length=length)
                    sent += length
                    self.bytes_sent += length
                    self._report(sent / self.size)  # what MAAS has acknowledged
                    if sent / self.size >= next_log or sent == self.size:
                        log.info("maas.upload.progress", name=self.name, resource=resource_id, bytes=sent,
                                 percent=round(100 * sent / self.size, 1))
                        next_log = sent / self.size + 0.1
        log.info("maas.upload.done", name=self.name, resource=resource_id, bytes=sent)

    async def _pieces(self, stream: BinaryIO, offset: int, length: int) -> AsyncIterator[bytes]:
        """Yield `length` bytes of the artifact from `offset`, READ_SIZE at a time: a chunk is never
        held whole in memory. Reading in a thread keeps the loop free while the disk works."""
        loop = asyncio.get_running_loop()
        end = offset + length
        while offset < end:
            piece = await loop.run_in_executor(None, stream.read, min(READ_SIZE, end - offset))
            if not piece:
                raise MaasError(f"{self.artifact} is shorter than the {self.size} bytes registered")
            offset += len(piece)
            yield piece

    def _report(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress(fraction)

    async def _clean_up(self, client: Client, resource_id: int, created_here: bool) -> None:
        """After a failed upload, delete the resource if this attempt created it and nothing usable
        is in it. A resource that existed before keeps its sets: the incomplete new one is harmless,
        since MAAS deploys the newest complete set."""
        if not created_here:
            log.info("maas.upload.abandoned_set", name=self.name, resource=resource_id)
            return
        try:
            resource = await client.read(resource_id)
            if resource is None:
                return
            if newest_set(resource, complete_only=True) is not None:
                log.info("maas.upload.kept_resource", name=self.name, resource=resource_id)
                return
            await client.delete(resource_id)
            log.info("maas.resource.deleted", name=self.name, resource=resource_id, reason="upload failed")
        except (MaasUnavailable, MaasError) as error:
            log.warning("maas.cleanup.failed", name=self.name, resource=resource_id, error=str(error))

    async def _wait_until_complete(self, client: Client, resource_id: int) -> Registration:
        """Poll the resource until its newest set is complete and holds our sha256."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.complete_timeout
        state = "not read yet"
        while True:
            try:
                resource = await client.read(resource_id)
            except MaasUnavailable as error:
                state = str(error)
            else:
                if resource is None:
                    raise MaasError(f"boot resource {resource_id} ({self.name}) vanished while MAAS synced it")
                version, resource_set = newest_set(resource) or ("", {})
                if not set_holds(resource_set, self.sha256):
                    raise MaasError(f"another upload to {self.name} began while ours completed "
                                    f"(resource {resource_id}, newest set {version})")
                if resource_set.get("complete"):
                    log.info("maas.registered", name=self.name, resource=resource_id, set_version=version,
                             bytes=self.size, bytes_sent=self.bytes_sent)
                    return self._registration(resource_id, version)
                state = f"set {version} at {float(resource_set.get('progress') or 0):.0f}%"
            if loop.time() >= deadline:
                raise ImageNotComplete(f"MAAS did not call {self.name} (resource {resource_id}) complete "
                                       f"within {self.complete_timeout:g} s: {state}")
            await asyncio.sleep(self.poll_interval)

    def _registration(self, resource_id: int, version: str) -> Registration:
        return Registration(resource_id=resource_id, name=self.name, architecture=self.architecture,
                            set_version=version, sha256=self.sha256, uploaded=self.created_set,
                            created_resource=self.created_resource)


# ----- the chunk PUTs --------------------------------------------------------------------------


def upload_session(timeout: float) -> aiohttp.ClientSession:
    """Return an HTTP session for chunk PUTs: a new connection per chunk, never a re-send."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=timeout),
        trace_configs=[_single_send_trace()],
    )


async def put_chunk(http: aiohttp.ClientSession, upload_url: str, chunk: Any, signing: Credentials, *,
                    timeout: float, length: int | None = None) -> None:
    """Send one chunk once, signed afresh (a new OAuth nonce for every request): bytes, or an async
    iterator of pieces streamed from the file, `length` bytes in all."""
    length = len(chunk) if length is None else length
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
    sign(upload_url, headers, signing)
    try:
        async with http.put(upload_url, data=chunk, headers=headers,
                            trace_request_ctx={"connections": 0}) as response:
            body = await response.text(errors="replace")
            if response.status != 200:
                raise refusal(response.status, body, "a chunk of the upload")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        raise unavailable(error, timeout) from None


def _single_send_trace() -> aiohttp.TraceConfig:
    """Return a trace that stops aiohttp from opening a second connection for the same request.

    aiohttp re-sends an idempotent request (PUT included) once when its connection drops; for a
    chunk that could append it twice, and MAAS refuses the replayed OAuth nonce with a 401.
    """
    async def count_connection(session: Any, context: Any, params: Any) -> None:
        request = context.trace_request_ctx
        if isinstance(request, dict):
            request["connections"] += 1
            if request["connections"] > 1:
                raise ResendRefused("not re-sending a chunk after its connection dropped")

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(count_connection)
    trace.on_connection_reuseconn.append(count_connection)
    return trace


async def name_holds_other_bytes(endpoint: Endpoint, *, name: str, architecture: str, sha256: str) -> bool:
    """Whether MAAS holds an image (name, architecture) whose newest complete set is not these
    bytes: registering there would replace what the next deployment of that name installs."""
    client = await Client.connect(endpoint)
    for resource in await client.resources():
        if is_ours(resource, name, architecture):
            newest = newest_set(resource, complete_only=True)
            return newest is not None and not set_holds(newest[1], sha256.lower())
    return False
