"""One connection to a MAAS region's API through python-libmaas's `bones` layer (a binding built
from MAAS's describe document): every call bounded by the endpoint's timeout, every answer checked
for MAAS's JSON shape, every failure turned into one of our errors with a one-line reason:

- MaasUnavailable: what waiting can fix (connection refused, timeouts, 5xx, an answer that is not
  MAAS's JSON, such as a proxy's page);
- MaasAuthError: 401/403;
- MaasError: a refusal with a reason (400), anything else waiting cannot fix.

Text that came from the server goes through logs.redact before it reaches an error: a proxy may
echo our Authorization header.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from maas.client.bones import CallError, SessionAPI
from maas.client.bones.helpers import RemoteError
from maas.client.utils.creds import Credentials

from esxi_watcher.errors import MaasAuthError, MaasError, MaasUnavailable
from esxi_watcher.logs import redact
from esxi_watcher.maas.apikey import credentials

TOO_MUCH_DATA = "Too much data received."
BODY_SHOWN = 300  # characters of a refusal's body kept in the error


@dataclass(frozen=True)
class Endpoint:
    """Where one MAAS region's API is and how to talk to it."""

    url: str  # region API URL ending in / (http://HOST:5240/MAAS/)
    api_key: str = field(repr=False)  # consumer_key:token_key:token_secret
    request_timeout: float = 120.0


class StartOver(Exception):
    """MAAS answered `Too much data received.`: the upload must start again from a new set."""


class ResendRefused(aiohttp.ClientConnectionError):
    """aiohttp tried to send a chunk a second time after its connection dropped; we stop it."""


def connection_reason(error: BaseException, timeout: float) -> str:
    """Given a connection-level error, return a short reason an operator understands."""
    if isinstance(error, ResendRefused):
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


def unavailable(error: BaseException, timeout: float) -> MaasUnavailable:
    """Given a connection-level error, return the MaasUnavailable that names it."""
    return MaasUnavailable(redact(connection_reason(error, timeout)))


def refusal(status: int, body: str, doing: str) -> Exception:
    """Given an HTTP error answer, return the exception that says what it means to us.

    The body is redacted before it is cut short, so no part of a secret survives the cut.
    """
    if status in (401, 403):
        return MaasAuthError(
            f"MAAS rejected the API key (HTTP {status}) while {doing}: check the key file (a MAAS admin's "
            f"key, as `maas apikey --username=ADMIN` prints)")
    if status >= 500:
        return MaasUnavailable(f"HTTP {status}")
    text = " ".join(redact(body).split())
    if status == 400 and text == TOO_MUCH_DATA:
        return StartOver(text)
    return MaasError(f"MAAS refused {doing}: HTTP {status}: {text[:BODY_SHOWN]}")


def describe_failed(message: str, url: str) -> Exception:
    """Given libmaas's RemoteError text for the describe call, return what it means to us."""
    match = re.search(r"-> (\d{3})\b", message)
    if match is None:
        return MaasError(f"{url} does not look like a MAAS API: {' '.join(redact(message).split())[:BODY_SHOWN]}")
    status = int(match.group(1))
    if status >= 500:
        return MaasUnavailable(f"HTTP {status}")
    if status == 404:
        return MaasError(f"no MAAS API at {url} (HTTP 404): check maas.url (e.g. http://HOST:5240/MAAS/)")
    return refusal(status, message, "describing its API")


def shaped(answer: Any, expect: type) -> bool:
    """Whether a JSON answer has the shape MAAS gives: the container, and objects inside a list."""
    if not isinstance(answer, expect):
        return False
    return expect is not list or all(isinstance(item, dict) for item in answer)


def preview(answer: Any) -> str:
    """Given an answer of the wrong shape, return a short, redacted picture of it."""
    if isinstance(answer, (bytes, bytearray)):
        text = answer.decode("utf-8", "replace")
    else:
        text = json.dumps(answer, default=str)
    text = " ".join(redact(text).split())
    return f"{type(answer).__name__}: {text[:80]!r}" if text else f"an empty {type(answer).__name__}"


class Client:
    """A bones session on one endpoint, with the answer shapes we rely on."""

    def __init__(self, session: SessionAPI, api_url: str, signing: Credentials, timeout: float):
        self.session = session
        self.api_url = api_url  # .../MAAS/api/2.0/ as libmaas resolved it
        self.credentials = signing
        self.timeout = timeout

    @classmethod
    async def connect(cls, endpoint: Endpoint) -> Client:
        """Fetch the describe document and build the binding (one request)."""
        signing = credentials(endpoint.api_key)  # a malformed key fails here, before any request
        timeout = endpoint.request_timeout
        try:
            profile, session = await asyncio.wait_for(
                SessionAPI.connect(endpoint.url, apikey=endpoint.api_key.strip()), timeout)
        except RemoteError as error:
            raise describe_failed(str(error), endpoint.url) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise unavailable(error, timeout) from None
        return cls(session, profile.url, signing, timeout)

    async def call(self, action: Callable[..., Any], doing: str, *, missing_ok: bool = False,
                   expect: type | None = None, **params: Any) -> Any:
        """Call one bones action with the timeout; return its data (None for a 404 when missing_ok).

        With `expect` (list or dict), an answer of another shape (a proxy's login page, a web server
        that is not MAAS, each with HTTP 200) raises MaasUnavailable naming what came back.
        """
        try:
            answer = await asyncio.wait_for(action(**params), self.timeout)
        except CallError as error:
            if missing_ok and error.status == 404:
                return None
            raise refusal(error.status, error.content.decode("utf-8", "replace"), doing) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise unavailable(error, self.timeout) from None
        if expect is not None and not shaped(answer, expect):
            raise MaasUnavailable(f"the answer to {doing} is not MAAS's JSON ({preview(answer)}): is "
                                  f"maas.url the MAAS region API (http://HOST:5240/MAAS/)?")
        return answer

    async def version(self) -> str:
        answer = await self.call(self.session.Version.read, "reading its version")
        if isinstance(answer, (bytes, bytearray)):
            return answer.decode("utf-8", "replace")
        return str(answer.get("version", "")) if isinstance(answer, dict) else str(answer)

    async def whoami(self) -> dict[str, Any]:
        """Return the key's user as MAAS shows it (username, is_superuser, ...): an authenticated call."""
        return await self.call(self.session.Users.whoami, "reading the key's user", expect=dict)

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

    async def notifications(self) -> list[dict[str, Any]]:
        return await self.call(self.session.Notifications.read, "listing notifications", expect=list)

    async def create_notification(self, **fields: str) -> dict[str, Any]:
        return await self.call(self.session.Notifications.create, "creating a notification", expect=dict,
                               **fields)

    async def delete_notification(self, notification_id: int) -> None:
        await self.call(self.session.Notification.delete, f"deleting notification {notification_id}",
                        missing_ok=True, id=notification_id)


async def server_version(endpoint: Endpoint) -> str:
    """Given an endpoint, return the version MAAS reports ("3.6.4-17013-g.1234abc", ...)."""
    client = await Client.connect(endpoint)
    return await client.version()
