"""Register an ESXi image in MAAS: create the boot resource, upload its bytes, wait until it is complete.

The only module that imports python-libmaas. It uses libmaas's `bones` layer (a binding built from
MAAS's describe document) for the API calls and libmaas's OAuth signing for the chunk uploads, which
it sends itself with aiohttp so that each chunk goes out exactly once. The MAAS rules it follows are
in docs/design.md; the ones that shape this module:

- a chunk PUT that failed midway cannot be re-sent: the upload starts over from a new resource set;
- MAAS 3.8+ keeps one file per sha256, shared by every image with those bytes: uploading bytes that
  another image already holds deletes that image's file, so we refuse (BytesHeldElsewhere);
- after an interrupted upload MAAS 3.8 answers `Too much data received.` once: start over again;
- sets are created with keep_old=true, so a failed upload never costs the image already there;
- `complete` means synced to every region: poll until the newest set is complete with our sha256.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

import aiohttp
import structlog
from maas.client.bones import CallError, SessionAPI
from maas.client.bones.helpers import RemoteError
from maas.client.utils import sign
from maas.client.utils.creds import Credentials
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from esxi_watcher.errors import (
    BadApiKeyFile,
    BytesHeldElsewhere,
    ImageNotComplete,
    MaasAuthError,
    MaasError,
    MaasUnavailable,
    MissingApiKey,
)

log = structlog.get_logger(__name__)

FILETYPE = "ddgz"
# Bytes per chunk PUT. Each PUT costs MAAS a request (OAuth check, database transaction, sync
# record), so 4 MiB chunks (the MAAS CLI's) spend more time per request than moving bytes. MAAS sets
# no request size limit (Django's DATA_UPLOAD_MAX_MEMORY_SIZE = None, for images) but holds one PUT's
# body in memory: 64 MiB keeps that modest. Each chunk is streamed from the file in READ_SIZE pieces.
CHUNK_SIZE = 64 << 20
READ_SIZE = 1 << 20
RETRY_MULTIPLIER = 5.0  # waits of 5, 10, 20, 40 ... seconds, capped at retry_max_wait
TOO_MUCH_DATA = "Too much data received."
FRESH_STARTS = 2  # `Too much data received.` answers absorbed per registration (MAAS 3.8 needs one)
MASK = "***"


@dataclass(frozen=True)
class Registration:
    """What MAAS holds for us once the image is registered."""

    resource_id: int
    name: str
    architecture: str
    set_version: str
    sha256: str
    size: int
    uploaded: bool  # False when MAAS already held the bytes for this name (nothing was done)
    bytes_sent: int = 0


@dataclass(frozen=True)
class StoreRules:
    """How a MAAS version stores boot-resource files, as far as uploading is concerned."""

    version: str
    large_objects: bool  # 3.4 and older: a file whose sha256 is already stored is complete at once
    shared_files: bool  # 3.8 and newer (or unknown): one on-disk file per sha256, shared by images


@dataclass(frozen=True)
class Holder:
    """A boot-resource file that holds the bytes we are about to register."""

    resource_id: int
    name: str
    architecture: str
    set_version: str
    complete: bool


class _Transient(Exception):
    """Worth another try after a wait: connection trouble, a timeout or a 5xx."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _StartOver(Exception):
    """MAAS answered `Too much data received.`: the upload must start again from a new set."""


class _ResendRefused(aiohttp.ClientConnectionError):
    """aiohttp tried to send a chunk a second time after its connection dropped; we stop it."""


# ----- the API key ----------------------------------------------------------------------------


def read_api_key(path: Path) -> str:
    """Given the API key file, return the key it holds (the first non-empty line).

    Refuse a file that group or others may read or write, a missing or unreadable file, and one
    that does not hold `consumer_key:token_key:token_secret`. No message ever carries the key.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MissingApiKey(
            f"MAAS API key file {path} does not exist: create it with "
            f"`maas apikey --username=ADMIN > {path} && chmod 600 {path}`") from None
    except OSError as error:
        raise BadApiKeyFile(f"MAAS API key file {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise BadApiKeyFile(f"MAAS API key file {path} is not a regular file")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        raise BadApiKeyFile(f"MAAS API key file {path} is readable by others: chmod 600 {path}")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BadApiKeyFile(f"MAAS API key file {path} is writable by others: chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise BadApiKeyFile(f"MAAS API key file {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not _looks_like_key(lines[0]):
        raise BadApiKeyFile(
            f"MAAS API key file {path} does not hold a MAAS API key (expected "
            "consumer_key:token_key:token_secret, as `maas apikey --username=ADMIN` prints)")
    return lines[0]


def _looks_like_key(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 3 and all(parts) and not any(char.isspace() for char in text)


def _credentials(api_key: str) -> Credentials:
    if not _looks_like_key(api_key.strip()):
        raise MaasAuthError("the MAAS API key is malformed: expected consumer_key:token_key:token_secret")
    return Credentials.parse(api_key.strip())


def _secrets(api_key: str) -> list[str]:
    """Given the key, return the strings no message may show: the key and each part of it."""
    parts = [api_key.strip(), *api_key.strip().split(":")]
    return sorted({part for part in parts if len(part) >= 4}, key=len, reverse=True)


def _masked(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


# ----- pure reading of MAAS's answers -----------------------------------------------------------


def store_rules(version: str) -> StoreRules:
    """Given MAAS's version string ("3.8.0", "3.6.4-17013-g1234abc", ...), return its storage rules.

    A version we cannot read gets the strictest rules (those of 3.8).
    """
    match = re.match(r"\s*v?(\d+)\.(\d+)", version or "")
    if match is None:
        return StoreRules(version=version, large_objects=False, shared_files=True)
    major_minor = (int(match.group(1)), int(match.group(2)))
    return StoreRules(version=version, large_objects=major_minor <= (3, 4), shared_files=major_minor >= (3, 8))


def set_version_key(version: str) -> tuple[int, ...]:
    """Given a set version (YYYYMMDD or YYYYMMDD.N), return a key that sorts sets oldest first."""
    numbers = tuple(int(number) for number in re.findall(r"\d+", version))
    return numbers if numbers else (-1,)


def resource_sets(resource: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Given a resource read from MAAS, return its (version, set) pairs, newest first."""
    sets = resource.get("sets") or {}
    return sorted(sets.items(), key=lambda item: set_version_key(item[0]), reverse=True)


def set_files(resource_set: dict[str, Any]) -> list[dict[str, Any]]:
    return list((resource_set.get("files") or {}).values())


def newest_set(resource: dict[str, Any], complete_only: bool = False) -> tuple[str, dict[str, Any]] | None:
    for version, resource_set in resource_sets(resource):
        if resource_set.get("complete") or not complete_only:
            return version, resource_set
    return None


def set_holds(resource_set: dict[str, Any], sha256: str) -> bool:
    files = set_files(resource_set)
    return len(files) == 1 and files[0].get("sha256") == sha256


def is_ours(resource: dict[str, Any], name: str, architecture: str) -> bool:
    return (str(resource.get("type", "")).lower() == "uploaded" and resource.get("name") == name
            and resource.get("architecture") == architecture)


def find_holders(resources: list[dict[str, Any]], sha256: str, *, skip: tuple[int, str] | None = None,
                 include_partial_of_others: bool = False, ours: int | None = None) -> list[Holder]:
    """Given resources read with their sets, return the files that hold our bytes.

    Complete files count everywhere. With include_partial_of_others, an incomplete file of another
    resource that MAAS has started receiving counts too (MAAS 3.8 would drop its partial or unsynced
    bytes). `skip` is a (resource id, set version) to leave out.
    """
    holders = []
    for resource in resources:
        for version, resource_set in resource_sets(resource):
            if skip == (resource.get("id"), version):
                continue
            for rfile in set_files(resource_set):
                if rfile.get("sha256") != sha256:
                    continue
                started = float(rfile.get("progress") or 0) > 0
                if rfile.get("complete") or (include_partial_of_others and started and resource.get("id") != ours):
                    holders.append(Holder(resource["id"], resource.get("name", "?"), resource.get("architecture", "?"),
                                          version, bool(rfile.get("complete"))))
    return holders


def _held_elsewhere_message(holder: Holder, sha256: str, version: str, our_name: str) -> str:
    what = "an older set of this image" if holder.name == our_name else "another image"
    state = "" if holder.complete else " (not yet complete)"
    return (f"MAAS {version} already holds these bytes (sha256 {sha256[:12]}...) as {what}: {holder.name} "
            f"{holder.architecture}, resource {holder.resource_id}, set {holder.set_version}{state}. MAAS 3.8+ "
            f"keeps one file per sha256, and uploading it again would delete that file and break that image. "
            f"Use the image already there, or delete it first (`maas ADMIN boot-resource delete "
            f"{holder.resource_id}`), then retry.")


# ----- talking to MAAS -------------------------------------------------------------------------


def _reason(error: BaseException, timeout: float) -> str:
    """Given a connection-level error, return a short reason an operator understands."""
    if isinstance(error, _ResendRefused):
        return "connection dropped during an upload"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect to {error.host}:{error.port}: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "connection dropped"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "connection dropped mid-answer"
    if isinstance(error, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"connection error: {error}"


def _refused(status: int, body: str, doing: str) -> Exception:
    """Given an HTTP error answer, return the exception that says what it means to us."""
    if status in (401, 403):
        return MaasAuthError(
            f"MAAS rejected the API key (HTTP {status}) while {doing}: check the key file (a MAAS admin's "
            f"key, as `maas apikey --username=ADMIN` prints)")
    if status >= 500:
        return _Transient(f"HTTP {status}")
    if status == 400 and body.strip() == TOO_MUCH_DATA:
        return _StartOver(body.strip())
    return MaasError(f"MAAS refused {doing}: HTTP {status}: {body.strip()[:300]}")


class _Client:
    """One connection to MAAS's API: libmaas's bones for the calls, aiohttp for the chunk uploads."""

    def __init__(self, session: SessionAPI, api_url: str, credentials: Credentials, timeout: float,
                 secrets: list[str]):
        self.session = session
        self.api_url = api_url
        self.credentials = credentials
        self.timeout = timeout
        self.secrets = secrets

    @classmethod
    async def connect(cls, url: str, api_key: str, timeout: float) -> _Client:
        credentials = _credentials(api_key)
        secrets = _secrets(api_key)
        try:
            profile, session = await asyncio.wait_for(SessionAPI.connect(url, apikey=api_key.strip()), timeout)
        except RemoteError as error:
            raise _describe_failed(_masked(str(error), secrets), url) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise _Transient(_masked(_reason(error, timeout), secrets)) from None
        return cls(session, profile.url, credentials, timeout, secrets)

    async def call(self, action: Callable[..., Any], doing: str, *, missing_ok: bool = False,
                   expect: type | None = None, **params: Any) -> Any:
        """Call one bones action with a timeout; return its data (None for a 404 when missing_ok).

        With `expect` (list or dict), an answer of another shape (a proxy's login page, a web server
        that is not MAAS, each with HTTP 200) is a transient failure that names what came back.
        """
        try:
            answer = await asyncio.wait_for(action(**params), self.timeout)
        except CallError as error:
            if missing_ok and error.status == 404:
                return None
            body = _masked(error.content.decode("utf-8", "replace"), self.secrets)
            raise _refused(error.status, body, doing) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise _Transient(_masked(_reason(error, self.timeout), self.secrets)) from None
        if expect is not None and not _shaped(answer, expect):
            raise _Transient(_masked(f"the answer to {doing} is not MAAS's JSON ({_preview(answer)}): is "
                                     f"maas.url the MAAS region API (http://HOST:5240/MAAS/)?", self.secrets))
        return answer

    async def version(self) -> str:
        answer = await self.call(self.session.Version.read, "reading its version")
        if isinstance(answer, (bytes, bytearray)):
            return answer.decode("utf-8", "replace")
        return str(answer.get("version", "")) if isinstance(answer, dict) else str(answer)

    async def resources(self) -> list[dict[str, Any]]:
        """Return every boot resource that may hold uploaded bytes, read with its sets."""
        listing = await self.call(self.session.BootResources.read, "listing boot resources", expect=list)
        resources = []
        for summary in listing:
            if str(summary.get("type", "")).lower() == "synced":
                continue
            resource = await self.read(summary["id"])
            if resource is not None:
                resources.append(resource)
        return resources

    async def read(self, resource_id: int) -> dict[str, Any] | None:
        return await self.call(self.session.BootResource.read, f"reading boot resource {resource_id}",
                               missing_ok=True, expect=dict, id=resource_id)

    async def create(self, **fields: str) -> dict[str, Any]:
        return await self.call(self.session.BootResources.create, f"creating boot resource {fields['name']}",
                               expect=dict, **fields)

    async def delete(self, resource_id: int) -> None:
        await self.call(self.session.BootResource.delete, f"deleting boot resource {resource_id}",
                        missing_ok=True, id=resource_id)

    def upload_session(self) -> aiohttp.ClientSession:
        """Return an HTTP session for chunk PUTs: a new connection per chunk, never a re-send."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            trace_configs=[_single_send_trace()],
        )

    async def put_chunk(self, http: aiohttp.ClientSession, upload_url: str, chunk: Any,
                        length: int | None = None) -> None:
        """Send one chunk once, signed afresh (a new OAuth nonce for every request): bytes, or an async
        iterator of pieces streamed from the file, `length` bytes in all."""
        length = len(chunk) if length is None else length
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        sign(upload_url, headers, self.credentials)
        try:
            async with http.put(upload_url, data=chunk, headers=headers,
                                trace_request_ctx={"connections": 0}) as response:
                body = await response.text(errors="replace")
                if response.status != 200:
                    raise _refused(response.status, _masked(body, self.secrets), "a chunk of the upload")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise _Transient(_masked(_reason(error, self.timeout), self.secrets)) from None


def _shaped(answer: Any, expect: type) -> bool:
    """Whether a JSON answer has the shape MAAS gives: the container, and objects inside a list."""
    if not isinstance(answer, expect):
        return False
    return expect is not list or all(isinstance(item, dict) for item in answer)


def _preview(answer: Any) -> str:
    if isinstance(answer, (bytes, bytearray)):
        text = answer.decode("utf-8", "replace")
    else:
        text = json.dumps(answer, default=str)
    text = " ".join(text.split())
    return f"{type(answer).__name__}: {text[:80]!r}" if text else f"an empty {type(answer).__name__}"


def _describe_failed(message: str, url: str) -> Exception:
    """Given libmaas's RemoteError text for the describe call, return what it means to us."""
    match = re.search(r"-> (\d{3})\b", message)
    if match is None:
        return MaasError(f"{url} does not look like a MAAS API: {message}")
    status = int(match.group(1))
    if status >= 500:
        return _Transient(f"HTTP {status}")
    if status == 404:
        return MaasError(f"no MAAS API at {url} (HTTP 404): check maas.url (e.g. http://HOST:5240/MAAS/)")
    return _refused(status, message, "describing its API")


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
                raise _ResendRefused("not re-sending a chunk after its connection dropped")

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(count_connection)
    trace.on_connection_reuseconn.append(count_connection)
    return trace


# ----- registering -----------------------------------------------------------------------------


class _Registrar:
    """One registration: its parameters and what it did so far across tries."""

    def __init__(self, *, url: str, api_key: str, name: str, title: str, architecture: str, artifact: Path,
                 sha256: str, size: int, progress: Callable[[float], None] | None,
                 on_retry: Callable[[str, float], None] | None, request_timeout: float, chunk_size: int,
                 complete_timeout: float, poll_interval: float):
        self.url = url
        self.api_key = api_key
        self.name = name
        self.title = title
        self.architecture = architecture
        self.artifact = Path(artifact)
        self.sha256 = sha256.lower()
        self.size = size
        self.progress = progress
        self.on_retry = on_retry
        self.request_timeout = request_timeout
        self.chunk_size = chunk_size
        self.complete_timeout = complete_timeout
        self.poll_interval = poll_interval
        self.created_set = False
        self.bytes_sent = 0
        self.fresh_starts = 0

    async def attempt(self) -> Registration:
        """One try: read what MAAS holds, create a set unless it is there, upload, wait until complete."""
        client = await _Client.connect(self.url, self.api_key, self.request_timeout)
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
            raise BytesHeldElsewhere(_held_elsewhere_message(holders[0], self.sha256, rules.version, self.name))

    async def _create_and_upload(self, client: _Client, created_here: bool) -> dict[str, Any]:
        while True:
            resource = await client.create(
                name=self.name, architecture=self.architecture, title=self.title, filetype=FILETYPE,
                sha256=self.sha256, size=str(self.size), keep_old="true")
            self.created_set = True
            version, rfile = self._our_new_file(resource)
            log.info("maas.created", name=self.name, resource=resource["id"], set_version=version,
                     complete=bool(rfile.get("complete")), bytes=self.size)
            if rfile.get("complete"):
                return resource  # MAAS 3.4 and older already held these bytes
            try:
                await self._upload(client, resource["id"], rfile["upload_uri"])
                return resource
            except _StartOver:
                await self._clean_up(client, resource["id"], created_here)
                if self.fresh_starts >= FRESH_STARTS:
                    raise MaasError(f"MAAS refused the upload of {self.name}: HTTP 400: {TOO_MUCH_DATA} "
                                    f"(after {self.fresh_starts} fresh starts)") from None
                self.fresh_starts += 1
                log.warning("maas.upload.start_over", name=self.name, resource=resource["id"], reason=TOO_MUCH_DATA)
            except Exception:
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

    async def _upload(self, client: _Client, resource_id: int, upload_uri: str) -> None:
        upload_url = urljoin(client.api_url, upload_uri)
        sent, next_log = 0, 0.0
        self._report(0.0)
        async with client.upload_session() as http:
            with self.artifact.open("rb", buffering=0) as stream:
                while sent < self.size:
                    length = min(self.chunk_size, self.size - sent)
                    await client.put_chunk(http, upload_url, self._pieces(stream, sent, length), length)
                    sent += length
                    self.bytes_sent += length
                    self._report(sent / self.size)  # what MAAS has acknowledged
                    if sent / self.size >= next_log or sent == self.size:
                        log.info("maas.upload.progress", name=self.name, resource=resource_id, bytes=sent,
                                 percent=round(100 * sent / self.size, 1))
                        next_log = sent / self.size + 0.1
        log.info("maas.upload.done", name=self.name, resource=resource_id, bytes=sent)

    async def _pieces(self, stream: Any, offset: int, length: int):
        """Yield `length` bytes of the artifact from `offset`, READ_SIZE at a time: a chunk is never
        held whole in memory. Reading ahead in a thread keeps the loop free while the disk works."""
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

    async def _clean_up(self, client: _Client, resource_id: int, created_here: bool) -> None:
        """After a failed upload, delete the resource if this try created it and nothing usable is in it.

        A resource that existed before keeps its sets: the incomplete new one is harmless, since MAAS
        deploys the newest complete set.
        """
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
        except (_Transient, MaasError) as error:
            log.warning("maas.cleanup.failed", name=self.name, resource=resource_id, error=str(error))

    async def _wait_until_complete(self, client: _Client, resource_id: int) -> Registration:
        """Poll the resource until its newest set is complete and holds our sha256."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.complete_timeout
        state = "not read yet"
        while True:
            try:
                resource = await client.read(resource_id)
            except _Transient as error:
                state = error.reason
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
                            set_version=version, sha256=self.sha256, size=self.size, uploaded=self.created_set,
                            bytes_sent=self.bytes_sent)

    def before_sleep(self, retry_state: Any) -> None:
        error = retry_state.outcome.exception()
        reason = getattr(error, "reason", str(error))
        wait = float(retry_state.next_action.sleep)
        log.warning("maas.retry", name=self.name, reason=reason, wait=wait, attempt=retry_state.attempt_number)
        if self.on_retry is not None:
            self.on_retry(reason, wait)


async def register_image(*, url: str, api_key: str, name: str, title: str, architecture: str, artifact: Path,
                         sha256: str, size: int, progress: Callable[[float], None] | None = None,
                         on_retry: Callable[[str, float], None] | None = None, request_timeout: float = 120,
                         retries: int = 8, retry_max_wait: float = 600, chunk_size: int = CHUNK_SIZE,
                         complete_timeout: float = 600, poll_interval: float = 2) -> Registration:
    """Make MAAS hold `artifact` as the newest complete set of boot resource (name, architecture).

    progress gets 0..1 as chunks go out (from 0 again when an upload starts over). `retries` counts
    tries after the first. complete_timeout bounds the wait for MAAS to call the new set complete
    (ImageNotComplete, retryable later: the upload is not repeated within this call).

    Connection errors, timeouts and 5xx answers are retried `retries` times (waits growing to
    retry_max_wait, each announced through on_retry), then raise MaasUnavailable. 401/403 raise
    MaasAuthError at once; other refusals raise MaasError (BytesHeldElsewhere on MAAS 3.8+ when
    another image holds these bytes).
    """
    _credentials(api_key)  # a malformed key fails before any request
    _check_artifact(Path(artifact), size, sha256)
    registrar = _Registrar(url=url, api_key=api_key, name=name, title=title, architecture=architecture,
                           artifact=artifact, sha256=sha256, size=size, progress=progress, on_retry=on_retry,
                           request_timeout=request_timeout, chunk_size=chunk_size,
                           complete_timeout=complete_timeout, poll_interval=poll_interval)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(0, retries) + 1),
        wait=wait_exponential(multiplier=RETRY_MULTIPLIER, max=retry_max_wait),
        retry=retry_if_exception_type(_Transient),
        before_sleep=registrar.before_sleep,
        reraise=True,
    )
    log.info("maas.register", name=name, architecture=architecture, bytes=size, sha256=sha256)
    try:
        return await retrying(registrar.attempt)
    except _Transient as error:
        raise MaasUnavailable(f"MAAS at {url} unavailable after {max(0, retries) + 1} tries: {error.reason}") from None


def register_image_sync(**kwargs: Any) -> Registration:
    """register_image in an event loop of our own (libmaas's sync wrappers would borrow a deprecated one)."""
    return asyncio.run(register_image(**kwargs))


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


# ----- notifications ---------------------------------------------------------------------------


async def notify_admins(*, url: str, api_key: str, message: str, category: str, ident: str,
                        request_timeout: float = 30) -> None:
    """Show `message` as a banner to MAAS's admins, replacing ours with the same ident. Best effort:
    any failure is logged, never raised."""
    try:
        client = await _Client.connect(url, api_key, request_timeout)
        single = getattr(client.session, "Notification", None)  # absent from some API descriptions
        if single is not None:
            notifications = await client.call(client.session.Notifications.read, "listing notifications",
                                              expect=list)
            for notification in notifications:
                if notification.get("ident") == ident:
                    await client.call(single.delete, "deleting a notification", missing_ok=True,
                                      id=notification["id"])
        await client.call(client.session.Notifications.create, "creating a notification", message=message,
                          category=category, ident=ident, admins="true")
        log.info("maas.notified", ident=ident, category=category)
    except Exception as error:  # a banner is a courtesy: never fail the caller for it
        reason = getattr(error, "reason", None) or str(error) or type(error).__name__
        log.warning("maas.notify.failed", ident=ident, error=_masked(reason, _secrets(api_key)))

