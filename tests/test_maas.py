"""esxi_watcher.maas against real HTTP: the MAAS simulator, and raw servers for connection faults."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import socket
from pathlib import Path

import pytest
from maas.client.utils.creds import Credentials

from esxi_watcher import maas
from esxi_watcher.errors import BadApiKeyFile, EsxiWatcherError, MaasAuthError, MissingApiKey

KEY = "ConsumerKeyAbc:TokenKeyDefGhi:TokenSecretJklMnoPqr"


# ----- the API key file --------------------------------------------------------------------


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_read_api_key_returns_the_key_of_a_private_file(tmp_path):
    path = write_key(tmp_path / "key", KEY + "\n")
    assert maas.read_api_key(path) == KEY


def test_read_api_key_takes_the_first_of_several_keys(tmp_path):
    path = write_key(tmp_path / "key", f"\n{KEY}\nother:key:here\n")
    assert maas.read_api_key(path) == KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_read_api_key_refuses_a_file_readable_by_others(tmp_path, mode):
    path = write_key(tmp_path / "key", KEY, mode)
    with pytest.raises(BadApiKeyFile) as raised:
        maas.read_api_key(path)
    message = str(raised.value)
    assert "readable by others" in message and f"chmod 600 {path}" in message
    assert "Secret" not in message and "TokenKey" not in message


def test_read_api_key_refuses_a_file_writable_by_others(tmp_path):
    path = write_key(tmp_path / "key", KEY, 0o620)
    with pytest.raises(BadApiKeyFile, match="writable by others: chmod 600"):
        maas.read_api_key(path)


def test_read_api_key_names_the_missing_file(tmp_path):
    path = tmp_path / "etc" / "maas.key"
    with pytest.raises(MissingApiKey) as raised:
        maas.read_api_key(path)
    assert isinstance(raised.value, EsxiWatcherError)
    assert str(path) in str(raised.value) and "maas apikey --username=" in str(raised.value)


@pytest.mark.parametrize("text", ["", "\n\n", "only:two", "a:b:c:d", "a::c", "not a key at all",
                                  "ConsumerKey:Token Key:Secret"])
def test_read_api_key_refuses_a_malformed_key_without_showing_it(tmp_path, text):
    path = write_key(tmp_path / "key", text)
    with pytest.raises(BadApiKeyFile) as raised:
        maas.read_api_key(path)
    assert "consumer_key:token_key:token_secret" in str(raised.value)
    for part in text.split(":"):
        if len(part) > 3:
            assert part not in str(raised.value)


def test_read_api_key_refuses_a_directory(tmp_path):
    (tmp_path / "key").mkdir(mode=0o700)
    with pytest.raises(BadApiKeyFile, match="not a regular file"):
        maas.read_api_key(tmp_path / "key")


# ----- reading MAAS's answers --------------------------------------------------------------


@pytest.mark.parametrize("version, large_objects, shared_files", [
    ("3.8.0", False, True),
    ("3.8.1~beta2-18000-g0123abc", False, True),
    ("4.0.0", False, True),
    ("3.7.2", False, False),
    ("3.6.4-17013-g1234abc", False, False),
    ("3.5.0~rc1", False, False),
    ("3.4.6", True, False),
    ("3.3.5-13189-g.f88272d1e", True, False),
    ("2.9.2", True, False),
    ("", False, True),
    ("unknown", False, True),
])
def test_store_rules_follow_the_maas_version(version, large_objects, shared_files):
    rules = maas.store_rules(version)
    assert (rules.large_objects, rules.shared_files) == (large_objects, shared_files)


def test_newest_set_sorts_versions_as_numbers():
    resource = {"sets": {
        "20250101.9": {"complete": True, "files": {}},
        "20250101.10": {"complete": False, "files": {}},
        "20250101": {"complete": True, "files": {}},
        "20241231.12": {"complete": True, "files": {}},
    }}
    assert maas.newest_set(resource)[0] == "20250101.10"
    assert maas.newest_set(resource, complete_only=True)[0] == "20250101.9"
    assert maas.newest_set({"sets": {}}) is None


# ----- a chunk is sent once ----------------------------------------------------------------


def test_a_chunk_whose_connection_drops_is_not_sent_again():
    """aiohttp re-sends a PUT once after a dropped connection; the upload must not."""

    async def scenario():
        connections = []

        async def hang_up(reader, writer):
            connections.append(await reader.readuntil(b"\r\n\r\n"))
            await reader.read(1000)
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/MAAS/api/2.0/"
        client = maas._Client(None, url, Credentials.parse(KEY), 5, maas._secrets(KEY))
        try:
            async with client.upload_session() as http:
                with pytest.raises(maas._Transient) as raised:
                    await client.put_chunk(http, url + "boot-resources/1/upload/1/", b"x" * 100_000)
        finally:
            server.close()
            await server.wait_closed()
        return connections, raised.value

    connections, error = asyncio.run(scenario())
    assert len(connections) == 1
    assert error.reason == "connection dropped during an upload"
    assert b"oauth_signature_method=\"PLAINTEXT\"" in connections[0]
