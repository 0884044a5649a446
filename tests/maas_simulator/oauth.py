"""OAuth 1.0 PLAINTEXT checks, the way MAAS's API authentication (piston3) makes them.

Order of the checks, as the OAuth server MAAS uses runs them: parameters present,
version, consumer, token, timestamp (300 s window), nonce (refused once used, per
consumer and token: stored in the region's database), then the signature
("&" + token secret: the consumer secret is empty).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

TIMESTAMP_THRESHOLD = 300
NECESSARY_PARAMS = (
    "oauth_consumer_key",
    "oauth_token",
    "oauth_signature",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_nonce",
)


@dataclass(frozen=True)
class ApiKey:
    consumer_key: str
    token_key: str
    token_secret: str

    @classmethod
    def parse(cls, text: str) -> "ApiKey":
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError("an API key is consumer_key:token_key:token_secret")
        return cls(*parts)

    def __str__(self) -> str:
        return "%s:%s:%s" % (self.consumer_key, self.token_key, self.token_secret)


class AuthFailure(Exception):
    """The request is refused: 401 (or 400 for a malformed timestamp) with this text."""

    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.message = message
        self.status = status


def parse_authorization(header: str | None) -> dict[str, str] | None:
    """Given an Authorization header, return its OAuth parameters (None if not OAuth)."""
    if header is None:
        return None
    header = header.strip()
    if not header.startswith("OAuth"):
        return None
    params = {}
    for part in header[len("OAuth"):].split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        params[key.strip()] = unquote(value.strip().strip('"'))
    return params


class NonceStore:
    """The nonces already used, with when they were first seen."""

    def __init__(self, seen: dict[str, float] | None = None):
        self._seen = dict(seen or {})
        self._lock = threading.Lock()

    def use(self, consumer_key: str, token_key: str, nonce: str, now: float) -> bool:
        """Record the nonce; return False if it was used already."""
        key = "%s:%s:%s" % (consumer_key, token_key, nonce)
        with self._lock:
            horizon = now - 2 * TIMESTAMP_THRESHOLD
            for old in [k for k, seen_at in self._seen.items() if seen_at < horizon]:
                del self._seen[old]
            if key in self._seen:
                return False
            self._seen[key] = now
            return True

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen)


def check_request(header: str | None, api_key: ApiKey, nonces: NonceStore, now=None) -> None:
    """Given a request's Authorization header, return if it authenticates, else raise."""
    now = time.time() if now is None else now
    params = parse_authorization(header)
    if params is None or any(name not in params for name in NECESSARY_PARAMS):
        # Not an OAuth attempt MAAS can read: its handler challenges with a plain 401.
        raise AuthFailure("Authorization Error: missing OAuth parameters")
    try:
        timestamp = int(params["oauth_timestamp"])
    except ValueError:
        raise AuthFailure(
            "Bad Request: the following problems were found among the auth params: "
            "oauth_timestamp has an unexpected type",
            status=400,
        ) from None
    if params.get("oauth_version", "1.0") != "1.0":
        raise AuthFailure("Authorization Error: 'OAuth version %s not supported.'"
                          % params["oauth_version"])
    if params["oauth_consumer_key"] != api_key.consumer_key:
        raise AuthFailure("Authorization Error: Invalid API key.")
    if params["oauth_token"] != api_key.token_key:
        raise AuthFailure("Authorization Error: 'Invalid access token: %s'" % params["oauth_token"])
    if abs(now - timestamp) > TIMESTAMP_THRESHOLD:
        raise AuthFailure(
            "Authorization Error: 'Expired timestamp: given %d and now %s has a "
            "greater difference than threshold %d'" % (timestamp, int(now), TIMESTAMP_THRESHOLD)
        )
    if not nonces.use(api_key.consumer_key, api_key.token_key, params["oauth_nonce"], now):
        raise AuthFailure("Authorization Error: 'Nonce already used: %s'" % params["oauth_nonce"])
    if params["oauth_signature_method"] != "PLAINTEXT":
        raise AuthFailure(
            "Authorization Error: 'Signature method %s not supported try one of the "
            "following: PLAINTEXT'" % params["oauth_signature_method"]
        )
    if params["oauth_signature"] != "&" + api_key.token_secret:
        raise AuthFailure("Authorization Error: 'Invalid signature.'")
