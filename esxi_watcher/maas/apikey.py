"""The MAAS API key: read from its file with today's checks, parsed into libmaas's credentials."""

from __future__ import annotations

from pathlib import Path

from maas.client.utils.creds import Credentials

from esxi_watcher.errors import BadApiKeyFile, MaasAuthError, MissingApiKey
from esxi_watcher.logs import add_secret
from esxi_watcher.private_file import read_private_file


def read_api_key(path: Path) -> str:
    """Given the API key file, return the key it holds (the first non-empty line).

    Refuse a file that group or others may read or write, a missing or unreadable file, and one
    that does not hold `consumer_key:token_key:token_secret`. No message ever carries the key.
    """
    text = read_private_file(
        path, "MAAS API key file", BadApiKeyFile, MissingApiKey,
        f"create it with `maas apikey --username=ADMIN > {path} && chmod 600 {path}`")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not looks_like_key(lines[0]):
        raise BadApiKeyFile(
            f"MAAS API key file {path} does not hold a MAAS API key (expected "
            "consumer_key:token_key:token_secret, as `maas apikey --username=ADMIN` prints)")
    return lines[0]


def looks_like_key(text: str) -> bool:
    """Whether text has the shape of a MAAS API key: three non-empty parts, no spaces."""
    parts = text.split(":")
    return len(parts) == 3 and all(parts) and not any(char.isspace() for char in text)


def credentials(api_key: str) -> Credentials:
    """Given an API key, return libmaas's credentials for signing; the key (and each part of it)
    is registered with logs.add_secret, so no log line, error or banner of ours can show it."""
    key = api_key.strip()
    if not looks_like_key(key):
        raise MaasAuthError("the MAAS API key is malformed: expected consumer_key:token_key:token_secret")
    add_secret(key)
    return Credentials.parse(key)
