"""The MAAS simulator, driven by the real python-libmaas bones layer over real HTTP.

Every client call runs inside an event loop the test owns (asyncio.run); chunk PUTs are
signed with maas.client.utils.sign, as MAAS_API.md describes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
from maas.client.bones import CallError, SessionAPI
from maas.client.utils import sign
from maas.client.utils.creds import Credentials

from tests.maas_simulator import ImageUnavailable, MaasSimulator
from tests.paths import ROOT

ESXI = "esxi/8.0"
ARCH = "amd64/generic"
CHUNK = 4096


def image(seed: str, size: int = 10_000) -> bytes:
    """Return `size` bytes that differ per seed."""
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def maas(tmp_path):
    with MaasSimulator(tmp_path / "region", mode="3.8") as simulator:
        yield simulator


@pytest.fixture(params=["3.4", "3.5", "3.8"])
def any_maas(request, tmp_path):
    with MaasSimulator(tmp_path / "region", mode=request.param) as simulator:
        yield simulator


# -- a small client made of libmaas parts ------------------------------------------------
async def connect(simulator, apikey=None):
    _, session = await SessionAPI.connect(simulator.url, apikey=apikey or simulator.api_key)
    return session


async def create(session, name, content, **extra):
    fields = dict(name=name, architecture=ARCH, title="VMware ESXi 8.0", filetype="ddgz",
                  size=str(len(content)), sha256=sha(content))
    fields.update(extra)
    return await session.BootResources.create(**fields)


def newest_file(resource) -> dict:
    newest = max(resource["sets"], key=lambda version: [int(p) for p in version.split(".")])
    return next(iter(resource["sets"][newest]["files"].values()))


def signed_headers(simulator, uri, length, apikey=None) -> dict:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
    sign(uri, headers, Credentials.parse(apikey or simulator.api_key))
    return headers


async def put_chunk(simulator, upload_uri, chunk, apikey=None):
    """PUT one chunk with aiohttp; return (status, text)."""
    uri = urljoin(simulator.url, upload_uri)
    async with aiohttp.ClientSession() as http:
        async with http.put(uri, data=chunk,
                            headers=signed_headers(simulator, uri, len(chunk), apikey)) as answer:
            return answer.status, await answer.text()


async def upload(simulator, upload_uri, content, chunk_size=CHUNK):
    """PUT content in chunks; return the first non-200 (status, text), or (200, "OK")."""
    for offset in range(0, len(content), chunk_size):
        status, text = await put_chunk(simulator, upload_uri, content[offset:offset + chunk_size])
        if status != 200:
            return status, text
    return 200, "OK"


async def register(simulator, session, name, content, **extra):
    resource = await create(session, name, content, **extra)
    outcome = await upload(simulator, newest_file(resource)["upload_uri"], content)
    return resource, outcome


async def raw_request(simulator, method, path, headers, body=b"", send=None, half_close=False):
    """Send an HTTP request over a bare socket; return (status, text) or None if cut off.

    send: how many body bytes to actually send (default: all of them).
    """
    reader, writer = await asyncio.open_connection(simulator.host, simulator.port)
    head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\n" % (method, path, simulator.host, simulator.port)
    head += "".join("%s: %s\r\n" % item for item in headers.items()) + "\r\n"
    writer.write(head.encode() + body[: len(body) if send is None else send])
    await writer.drain()
    if half_close:
        writer.write_eof()
    try:
        status_line = await reader.readline()
        if not status_line:
            return None
        response_headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            response_headers[name.strip().lower()] = value.strip()
        text = await reader.readexactly(int(response_headers.get("content-length", "0")))
        return int(status_line.split()[1]), text.decode()
    except ConnectionError:
        return None
    finally:
        writer.close()


async def raw_put(simulator, upload_uri, chunk, **options):
    uri = urljoin(simulator.url, upload_uri)
    headers = signed_headers(simulator, uri, len(chunk))
    return await raw_request(simulator, "PUT", urlsplit(uri).path, headers, chunk, **options)


# -- describe, version, basic round trip -------------------------------------------------
def test_bones_builds_the_handlers_it_needs_from_describe(maas):
    async def scenario():
        session = await connect(maas)
        handlers = dict(session.handlers)
        actions = {name: sorted(action for action, _ in handler.actions)
                   for name, handler in handlers.items()}
        return actions, await session.Version.read()

    actions, version = run(scenario())
    assert {"create", "read"} <= set(actions["BootResources"])
    assert {"read", "delete"} <= set(actions["BootResource"])
    assert "create" in actions["Notifications"]
    assert actions["Version"] == ["read"]
    assert version["version"] == "3.8.0"
    assert "authenticate-api" in version["capabilities"]


def test_describe_uris_are_absolute_for_the_host_asked(maas):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.get(maas.url + "api/2.0/describe/") as answer:
                return answer.content_type, await answer.json()

    content_type, description = run(scenario())
    assert content_type == "application/json"
    by_name = {resource["name"]: resource for resource in description["resources"]}
    handler = by_name["BootResourceHandler"]["auth"]
    assert handler["params"] == ["id"]
    assert handler["uri"] == maas.url + "api/2.0/boot-resources/{id}/"
    assert by_name["VersionHandler"]["anon"] is not None
    assert by_name["VersionHandler"]["auth"] is None


def test_version_strings_per_mode_and_realistic_form(tmp_path):
    for mode, expected in (("3.4", "3.4.2"), ("3.5", "3.5.4"), ("3.8", "3.8.0")):
        with MaasSimulator(tmp_path / mode, mode=mode) as simulator:
            assert run(_read_version(simulator)) == expected
    with MaasSimulator(tmp_path / "real", mode="3.5", realistic_version=True) as simulator:
        assert run(_read_version(simulator)).startswith("3.5.4-")
    with MaasSimulator(tmp_path / "custom", version="3.6.4-17013-g.abc") as simulator:
        assert run(_read_version(simulator)) == "3.6.4-17013-g.abc"


async def _read_version(simulator):
    session = await connect(simulator)
    return (await session.Version.read())["version"]


def test_create_answers_an_incomplete_file_with_its_upload_uri(maas):
    content = image("a")

    async def scenario():
        return await create(await connect(maas), ESXI, content)

    resource = run(scenario())
    assert resource["type"] == "Uploaded"
    assert resource["name"] == ESXI and resource["architecture"] == ARCH
    assert resource["subarches"] == "generic" and resource["title"] == "VMware ESXi 8.0"
    assert resource["resource_uri"] == "/MAAS/api/2.0/boot-resources/%d/" % resource["id"]
    (version, rset), = resource["sets"].items()
    assert version == datetime.now(timezone.utc).strftime("%Y%m%d")
    assert rset["complete"] is False and rset["progress"] == 0.0 and rset["label"] == "uploaded"
    rfile = rset["files"]["root-dd.gz"]
    assert rfile["filetype"] == "root-dd.gz" and rfile["sha256"] == sha(content)
    assert rfile["size"] == len(content) and rfile["complete"] is False
    assert rfile["filename_on_disk"] == sha(content)[:7]
    assert rfile["upload_uri"] == "/MAAS/api/2.0/boot-resources/%d/upload/%d/" % (
        resource["id"], int(rfile["upload_uri"].rstrip("/").split("/")[-1]))


def test_upload_in_chunks_then_read_back_complete(any_maas):
    content = image("round-trip", 3 * CHUNK + 123)

    async def scenario():
        session = await connect(any_maas)
        resource, outcome = await register(any_maas, session, ESXI, content)
        read = await session.BootResource.read(id=resource["id"])
        listed = await session.BootResources.read(type="uploaded")
        everything = await session.BootResources.read()
        return outcome, read, listed, everything

    outcome, read, listed, everything = run(scenario())
    assert outcome == (200, "OK")
    rfile = newest_file(read)
    assert rfile["complete"] is True and rfile["sha256"] == sha(content)
    assert "upload_uri" not in rfile and "progress" not in rfile
    assert next(iter(read["sets"].values()))["complete"] is True
    assert [r["name"] for r in listed] == [ESXI]
    assert [r["type"] for r in everything] == ["Synced", "Uploaded"]
    assert any_maas.file_bytes(ESXI) == content
    puts = [r for r in any_maas.requests if r["method"] == "PUT"]
    assert [r["status"] for r in puts] == [200] * 4


def test_list_refuses_an_unknown_type(maas):
    async def scenario():
        session = await connect(maas)
        with pytest.raises(CallError) as caught:
            await session.BootResources.read(type="generated")
        return caught.value

    error = run(scenario())
    assert error.status == 400
    assert b"'generated' is not a valid boot resource type" in error.content


def test_delete_answers_204_and_the_resource_is_gone(maas):
    async def scenario():
        session = await connect(maas)
        resource, _ = await register(maas, session, ESXI, image("d"))
        await session.BootResource.delete(id=resource["id"])
        with pytest.raises(CallError) as caught:
            await session.BootResource.read(id=resource["id"])
        return caught.value.status

    assert run(scenario()) == 404
    deletes = [r for r in maas.requests if r["method"] == "DELETE"]
    assert deletes[0]["status"] == 204
    assert [r["name"] for r in maas.resources()] == ["ubuntu/noble"]


def test_whoami_tells_an_admin_from_a_user_who_may_not_create_boot_resources(tmp_path):
    async def scenario(simulator):
        session = await connect(simulator)
        me = await session.Users.whoami()
        try:
            await create(session, ESXI, image("w"))
        except CallError as error:
            return me, error.status, error.content.decode()
        return me, 201, ""

    with MaasSimulator(tmp_path / "admin") as admin:
        me, status, _ = run(scenario(admin))
    assert me["is_superuser"] is True and status == 201
    with MaasSimulator(tmp_path / "user", admin=False) as user:
        me, status, text = run(scenario(user))
        assert [r["name"] for r in user.resources()] == ["ubuntu/noble"]
    assert me["is_superuser"] is False and me["username"] == "operator"
    assert (status, text) == (403, "This method is reserved for admin users.")


# -- names, versions, keep_old ------------------------------------------------------------
@pytest.mark.parametrize(
    "name, status, message",
    [
        ("vmware/8.0", 400, "Unsupport operating system vmware, supported operating systems: ["),
        ("esxi", 400, "esxi is a reserved name"),
        ("ubuntu/jammy", 400, "ubuntu/jammy is a reserved name"),
        ("jammy", 400, "jammy is a reserved name"),
        ("centos7", 400, "centos7 is a reserved name"),
        ("esxi/" + "8" * 251, 400, "Ensure this value has at most 255 characters"),
        ("esxi/8.0/u3", 500, "too many values to unpack"),
    ],
)
def test_name_rules(maas, name, status, message):
    async def scenario():
        session = await connect(maas)
        with pytest.raises(CallError) as caught:
            await create(session, name, image("n"))
        return caught.value

    error = run(scenario())
    assert error.status == status
    assert message in error.content.decode()
    assert [r["name"] for r in maas.resources()] == ["ubuntu/noble"]


def test_architecture_and_sha256_fields_are_checked(maas):
    async def scenario():
        session = await connect(maas)
        errors = []
        for extra in ({"architecture": "amd64"}, {"sha256": "abc"}, {"size": "ten"}):
            with pytest.raises(CallError) as caught:
                await create(session, ESXI, image("f"), **extra)
            errors.append(json.loads(caught.value.content))
        return errors

    architecture, sha256, size = run(scenario())
    assert architecture["architecture"][0].startswith("'amd64' is not a valid architecture.")
    assert sha256 == {"sha256": ["Ensure this value has at least 64 characters (it has 3)."]}
    assert size == {"size": ["Enter a whole number."]}


def test_bare_custom_names_get_a_base_image(maas):
    async def scenario():
        session = await connect(maas)
        return await create(session, "vmware-esxi-6.7", image("c"))

    assert run(scenario())["base_image"] == "ubuntu/noble"


def test_same_sha256_with_another_size_is_refused(any_maas):
    content = image("s")

    async def scenario():
        session = await connect(any_maas)
        await create(session, ESXI, content)
        with pytest.raises(CallError) as caught:
            await create(session, "esxi/7.0", content, size=str(len(content) + 1))
        return caught.value

    error = run(scenario())
    assert error.status == 400
    assert b"File already exists with sha256 that is of different size." in error.content


def test_set_versions_count_up_within_a_day_and_restart_the_next(tmp_path):
    today = [datetime(2026, 3, 1, 23, 0, tzinfo=timezone.utc)]
    with MaasSimulator(tmp_path / "region", clock=lambda: today[0]) as simulator:
        async def scenario():
            session = await connect(simulator)
            versions = []
            for index in range(12):
                if index == 11:
                    today[0] += timedelta(hours=2)
                resource = await create(session, ESXI, image("v%d" % index), keep_old=True)
                versions.append(max(resource["sets"], key=lambda v: [int(p) for p in v.split(".")]))
            return versions, resource

        versions, resource = run(scenario())
    assert versions[:3] == ["20260301", "20260301.1", "20260301.2"]
    assert versions[10] == "20260301.10"
    assert versions[11] == "20260302"
    assert list(resource["sets"])[:2] == ["20260302", "20260301.10"]  # newest (by id) first


def test_without_keep_old_the_older_files_go_at_create_time(maas):
    first, second = image("old"), image("new")

    async def scenario():
        session = await connect(maas)
        await register(maas, session, ESXI, first)
        return await create(session, ESXI, second)

    resource = run(scenario())
    older = [rset for rset in resource["sets"].values() if not rset["files"]]
    assert len(older) == 1 and older[0]["complete"] is False and older[0]["size"] == 0
    with pytest.raises(ImageUnavailable):
        maas.file_bytes(ESXI)  # nothing usable until the new upload completes


def test_with_keep_old_the_older_image_serves_until_the_new_one_completes(maas):
    first, second = image("old"), image("new")

    async def scenario():
        session = await connect(maas)
        await register(maas, session, ESXI, first)
        resource = await create(session, ESXI, second, keep_old="true")
        served_meanwhile = maas.file_bytes(ESXI)
        outcome = await upload(maas, newest_file(resource)["upload_uri"], second)
        return served_meanwhile, outcome

    served_meanwhile, outcome = run(scenario())
    assert served_meanwhile == first and outcome == (200, "OK")
    assert maas.file_bytes(ESXI) == second


def test_keep_old_zero_counts_as_true_like_a_django_checkbox(maas):
    async def scenario():
        session = await connect(maas)
        await register(maas, session, ESXI, image("old"))
        return await create(session, ESXI, image("new"), keep_old="0")

    resource = run(scenario())
    assert all(rset["files"] for rset in resource["sets"].values())


# -- what each MAAS generation does with bytes it already holds ---------------------------
def test_38_identical_bytes_under_another_name_destroy_the_first_image(maas):
    content = image("same", 2 * CHUNK + 10)

    async def scenario():
        session = await connect(maas)
        await register(maas, session, ESXI, content)
        second = await create(session, "esxi/8.0u1", content)
        outcome = await upload(maas, newest_file(second)["upload_uri"], content)
        first = await session.BootResources.read(type="uploaded")
        first_read = await session.BootResource.read(id=first[0]["id"])
        return outcome, first_read

    outcome, first_read = run(scenario())
    assert outcome == (400, "Too much data received.")
    assert newest_file(first_read)["complete"] is True  # MAAS still calls it complete
    with pytest.raises(ImageUnavailable):
        maas.file_bytes(ESXI)
    assert maas.disk_files() == {}


def test_38_identical_bytes_to_the_same_name_fail_too(maas):
    content = image("again")

    async def scenario():
        session = await connect(maas)
        await register(maas, session, ESXI, content)
        return (await register(maas, session, ESXI, content))[1]

    assert run(scenario()) == (400, "Too much data received.")
    with pytest.raises(ImageUnavailable):
        maas.file_bytes(ESXI)


def test_34_known_sha256_is_complete_at_once(tmp_path):
    content = image("lo")
    with MaasSimulator(tmp_path / "region", mode="3.4") as simulator:
        async def scenario():
            session = await connect(simulator)
            first, _ = await register(simulator, session, ESXI, content)
            second = await create(session, "esxi/8.0u1", content)
            first_file = newest_file(await session.BootResource.read(id=first["id"]))
            late = await raw_put(simulator, "/MAAS/api/2.0/boot-resources/%d/upload/%d/" % (
                second["id"], _file_id(simulator, second)), b"x")
            return newest_file(second), first_file, late

        second_file, first_file, late = run(scenario())
        assert second_file["complete"] is True and "upload_uri" not in second_file
        assert "filename_on_disk" not in second_file and second_file["filename"] == "root-dd.gz"
        assert late == (400, "Cannot upload to a complete file.")
        assert simulator.file_bytes(ESXI) == content == simulator.file_bytes("esxi/8.0u1")


def _file_id(simulator, resource):
    rfiles = [f for f in simulator.store.data["files"]
              if f["set_id"] in {s["id"] for s in simulator.store.sets_of(
                  simulator.store.resource(resource["id"]))}]
    return rfiles[-1]["id"]


def test_35_identical_bytes_upload_again_and_both_serve(tmp_path):
    content = image("inc")
    with MaasSimulator(tmp_path / "region", mode="3.5") as simulator:
        async def scenario():
            session = await connect(simulator)
            await register(simulator, session, ESXI, content)
            second = await create(session, "esxi/8.0u1", content)
            assert newest_file(second)["complete"] is False
            return await upload(simulator, newest_file(second)["upload_uri"], content)

        assert run(scenario()) == (200, "OK")
        assert simulator.file_bytes(ESXI) == content == simulator.file_bytes("esxi/8.0u1")


# -- upload errors ---------------------------------------------------------------------------
def test_upload_errors_follow_maas_wording(maas):
    content = image("e", 3000)

    async def scenario():
        session = await connect(maas)
        resource = await create(session, ESXI, content)
        uri = newest_file(resource)["upload_uri"]
        results = {"empty": await put_chunk(maas, uri, b"")}
        full_uri = urljoin(maas.url, uri)
        headers = signed_headers(maas, full_uri, 100)
        results["short"] = await raw_request(maas, "PUT", uri, headers, b"x" * 100, send=40,
                                             half_close=True)
        chunked = {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
        sign(full_uri, chunked, Credentials.parse(maas.api_key))
        results["chunked"] = await raw_request(maas, "PUT", uri, chunked, b"5\r\nhello\r\n0\r\n\r\n")
        results["too much"] = await put_chunk(maas, uri, content + b"!")
        results["wrong bytes"] = await put_chunk(maas, uri, image("other", 3000))
        return results, uri

    results, uri = run(scenario())
    assert results["empty"] == (400, "Missing data.")
    assert results["short"] == (400, "Content-Length doesn't equal size of received data.")
    assert results["chunked"] == (400, "Missing data.")
    assert results["too much"] == (400, "Too much data received.")
    assert results["wrong bytes"] == (400, "Saved content does not match given SHA256 value.")

    async def complete_then_again():
        # The wrong bytes still fill the shared file: the next chunk overflows and clears it.
        first = await put_chunk(maas, uri, content[:10])
        second = await upload(maas, uri, content)
        third = await put_chunk(maas, uri, b"more")
        return first, second, third

    first, second, third = run(complete_then_again())
    assert first == (400, "Too much data received.")
    assert second == (200, "OK")
    assert third == (400, "Cannot upload to a complete file.")
    assert maas.file_bytes(ESXI) == content


def test_upload_to_a_synced_resource_is_forbidden(maas):
    synced = maas.store.data["resources"][0]
    rfile = maas.store.data["files"][0]

    async def scenario():
        return await put_chunk(maas, "/MAAS/api/2.0/boot-resources/%d/upload/%d/" % (
            synced["id"], rfile["id"]), b"data")

    assert run(scenario()) == (403, "Cannot upload to a resource of type: 0.")


# -- interrupted uploads ---------------------------------------------------------------------
def test_38_interrupted_upload_then_retry_overflows_then_third_try_works(maas):
    content = image("cut", 3 * CHUNK)

    async def scenario():
        session = await connect(maas)
        resource = await create(session, ESXI, content)
        uri = newest_file(resource)["upload_uri"]
        assert await upload(maas, uri, content[:CHUNK]) == (200, "OK")
        maas.inject("drop", after_bytes=1000, appended="received")
        dropped = await raw_put(maas, uri, content[CHUNK:2 * CHUNK])
        on_disk_after_drop = dict(maas.disk_files())
        await session.BootResource.delete(id=resource["id"])
        retry = await register(maas, session, ESXI, content)
        on_disk_after_retry = dict(maas.disk_files())
        await session.BootResource.delete(id=retry[0]["id"])
        third = await register(maas, session, ESXI, content)
        return dropped, on_disk_after_drop, retry[1], on_disk_after_retry, third[1]

    dropped, after_drop, retry, after_retry, third = run(scenario())
    assert dropped is None
    assert after_drop == {sha(content)[:7]: CHUNK + 1000}  # a partial chunk reached the disk
    assert retry == (400, "Too much data received.")
    assert after_retry == {}
    assert third == (200, "OK")
    assert maas.file_bytes(ESXI) == content


def test_35_interrupted_upload_then_retry_works(tmp_path):
    content = image("cut35", 3 * CHUNK)
    with MaasSimulator(tmp_path / "region", mode="3.5") as simulator:
        async def scenario():
            session = await connect(simulator)
            resource = await create(session, ESXI, content)
            uri = newest_file(resource)["upload_uri"]
            simulator.inject("drop", after_bytes=1000, appended="received")
            dropped = await raw_put(simulator, uri, content[:CHUNK])
            await session.BootResource.delete(id=resource["id"])
            return dropped, (await register(simulator, session, ESXI, content))[1]

        dropped, retry = run(scenario())
        assert dropped is None and retry == (200, "OK")
        assert simulator.file_bytes(ESXI) == content


def test_drop_after_the_region_committed_the_chunk(maas):
    content = image("all", 2 * CHUNK)

    async def scenario():
        session = await connect(maas)
        resource = await create(session, ESXI, content)
        uri = newest_file(resource)["upload_uri"]
        maas.inject("drop", after_bytes=0, appended="all")
        dropped = await raw_put(maas, uri, content[:CHUNK])
        return dropped, await session.BootResource.read(id=resource["id"])

    dropped, read = run(scenario())
    assert dropped is None
    assert newest_file(read)["progress"] == 50.0  # the chunk counts though no answer came


def test_drop_before_the_region_saw_anything_leaves_nothing(maas):
    content = image("none", 2 * CHUNK)

    async def scenario():
        session = await connect(maas)
        resource = await create(session, ESXI, content)
        uri = newest_file(resource)["upload_uri"]
        maas.inject("drop", after_bytes=100)
        dropped = await raw_put(maas, uri, content[:CHUNK])
        return dropped, await session.BootResource.read(id=resource["id"])

    dropped, read = run(scenario())
    assert dropped is None and newest_file(read)["progress"] == 0.0
    assert maas.disk_files() == {}


def test_aiohttp_resend_after_a_drop_never_appends_a_chunk_twice(maas):
    content = image("resend", 2 * CHUNK)

    async def scenario():
        session = await connect(maas)
        resource = await create(session, ESXI, content)
        uri = newest_file(resource)["upload_uri"]
        maas.inject("drop", after_bytes=0, appended="all")
        try:
            outcome = await put_chunk(maas, uri, content[:CHUNK])
        except aiohttp.ClientError as error:
            outcome = type(error).__name__
        return outcome, await session.BootResource.read(id=resource["id"])

    outcome, read = run(scenario())
    # aiohttp re-sends the idempotent PUT with the same nonce: MAAS refuses the replay.
    if isinstance(outcome, tuple):
        assert outcome[0] == 401
        assert outcome[1].startswith("Authorization Error: 'Nonce already used: ")
    else:
        assert outcome in ("ServerDisconnectedError", "ClientOSError")
    assert newest_file(read)["progress"] == 50.0


# -- OAuth -----------------------------------------------------------------------------------
def test_oauth_failures_answer_401(maas):
    consumer, token, secret = maas.api_key.split(":")

    async def scenario():
        outcomes = {}
        for label, key in (("secret", "%s:%s:wrong" % (consumer, token)),
                           ("consumer", "nobody:%s:%s" % (token, secret)),
                           ("token", "%s:nothing:%s" % (consumer, secret))):
            session = await connect(maas, apikey=key)
            with pytest.raises(CallError) as caught:
                await session.BootResources.read()
            outcomes[label] = (caught.value.status, caught.value.content.decode())
        anonymous = await SessionAPI.fromURL(maas.url + "api/2.0/")
        outcomes["anonymous version"] = (await anonymous.Version.read())["version"]
        async with aiohttp.ClientSession() as http:
            async with http.get(maas.url + "api/2.0/boot-resources/") as answer:
                outcomes["no header"] = answer.status
            headers = {}
            url = maas.url + "api/2.0/boot-resources/"
            sign(url, headers, Credentials.parse(maas.api_key))
            for attempt in ("first", "replay"):
                async with http.get(url, headers=headers) as answer:
                    outcomes[attempt] = (answer.status, await answer.text())
            stale = {}
            sign(url, stale, Credentials.parse(maas.api_key))
            stale["Authorization"] = _with_timestamp(stale["Authorization"], int(time.time()) - 3600)
            async with http.get(url, headers=stale) as answer:
                outcomes["stale"] = (answer.status, await answer.text())
        return outcomes

    outcomes = run(scenario())
    assert outcomes["secret"] == (401, "Authorization Error: 'Invalid signature.'")
    assert outcomes["consumer"] == (401, "Authorization Error: Invalid API key.")
    assert outcomes["token"][0] == 401
    assert outcomes["anonymous version"] == "3.8.0"
    assert outcomes["no header"] == 401
    assert outcomes["first"][0] == 200
    assert outcomes["replay"][0] == 401 and "Nonce already used" in outcomes["replay"][1]
    assert outcomes["stale"][0] == 401 and "Expired timestamp" in outcomes["stale"][1]


def _with_timestamp(header: str, timestamp: int) -> str:
    parts = []
    for part in header.split(","):
        if "oauth_timestamp" in part:
            part = part.split("=")[0] + '="%d"' % timestamp
        parts.append(part)
    return ",".join(parts)


# -- persistence and restart -------------------------------------------------------------------
def test_state_survives_a_restart_with_the_same_key(tmp_path):
    content = image("persist")
    state_dir = tmp_path / "region"
    with MaasSimulator(state_dir) as first:
        key, port = first.api_key, first.port

        async def scenario():
            session = await connect(first)
            return await register(first, session, ESXI, content)
        run(scenario())
    with MaasSimulator(state_dir, port=port) as second:
        assert second.api_key == key and second.port == port

        async def read_back():
            session = await connect(second)
            return await session.BootResources.read(type="uploaded")

        listed = run(read_back())
        assert [r["name"] for r in listed] == [ESXI]
        assert second.file_bytes(ESXI) == content


def test_38_deleted_bytes_stay_on_disk_until_restart(tmp_path):
    content = image("ghost")
    with MaasSimulator(tmp_path / "region") as simulator:
        async def delete_and_recreate():
            session = await connect(simulator)
            resource, _ = await register(simulator, session, ESXI, content)
            await session.BootResource.delete(id=resource["id"])
            on_disk = dict(simulator.disk_files())
            again = await register(simulator, session, ESXI, content)
            return on_disk, again

        on_disk, (again, outcome) = run(delete_and_recreate())
        assert on_disk == {sha(content)[:7]: len(content)}
        assert outcome == (400, "Too much data received.")

        async def delete_restart_recreate():
            session = await connect(simulator)
            await session.BootResource.delete(id=again["id"])
            resource, _ = await register(simulator, session, "esxi/9", image("keep"))
            await session.BootResource.delete(id=resource["id"])
            return sorted(simulator.disk_files())

        assert run(delete_restart_recreate()) == [sha(image("keep"))[:7]]
        (simulator.store.files_store.directory / "stray.incomplete").write_bytes(b"x")
        simulator.restart()
        assert simulator.disk_files() == {}
        assert sorted(simulator.store.removed_on_restart) == sorted(
            [sha(image("keep"))[:7], "stray.incomplete"])

        async def recreate():
            session = await connect(simulator)
            return (await register(simulator, session, ESXI, content))[1]

        assert run(recreate()) == (200, "OK")
        assert simulator.file_bytes(ESXI) == content


# -- notifications ----------------------------------------------------------------------------
def test_notifications_are_created_for_admins(maas):
    async def scenario():
        session = await connect(maas)
        made = await session.Notifications.create(
            message="ESXi 8.0 upload failed", category="error", ident="esxi-watcher:x", admins=True)
        with pytest.raises(CallError) as caught:
            await session.Notifications.create(message="m", category="fatal")
        return made, caught.value

    made, error = run(scenario())
    assert made["category"] == "error" and made["admins"] is True and made["users"] is False
    assert error.status == 400 and b"category" in error.content
    assert [n["ident"] for n in maas.notifications()] == ["esxi-watcher:x"]


def test_one_notification_is_read_updated_dismissed_and_deleted(maas):
    async def scenario():
        session = await connect(maas)
        made = await session.Notifications.create(message="first", category="info", ident="x", admins=True)
        read = await session.Notification.read(id=made["id"])
        updated = await session.Notification.update(id=made["id"], message="second", category="error",
                                                    ident="x", admins=True)
        await session.Notification.dismiss(id=made["id"])
        await session.Notification.dismiss(id=made["id"])  # safe to repeat
        listed_after_dismiss = await session.Notifications.read()
        await session.Notification.delete(id=made["id"])
        with pytest.raises(CallError) as missing:
            await session.Notification.delete(id=made["id"])
        return made, read, updated, listed_after_dismiss, missing.value

    made, read, updated, listed, missing = run(scenario())
    assert read == made
    assert updated["id"] == made["id"] and (updated["message"], updated["category"]) == ("second", "error")
    assert listed == []  # a dismissed notification is not listed to the one who dismissed it
    assert missing.status == 404 and missing.content == b"No Notification matches the given query."
    assert maas.notifications() == []
    deletes = [r for r in maas.requests if r["method"] == "DELETE"]
    assert [r["status"] for r in deletes] == [204, 404]


# -- faults -------------------------------------------------------------------------------------
def test_echo_fault_shows_the_authorization_header_and_query_like_a_bad_proxy(maas):
    async def scenario():
        session = await connect(maas)
        maas.inject("echo", status=400, method="GET", path="/boot-resources/", body="Bad Request")
        with pytest.raises(CallError) as caught:
            await session.BootResources.read(type="uploaded")
        return caught.value, await session.BootResources.read()

    error, listed = run(scenario())
    body = error.content.decode()
    assert error.status == 400 and body.startswith("Bad Request\nRequest: GET /MAAS/api/2.0/boot-resources/")
    assert "(query: type=uploaded)" in body
    token_secret = maas.api_key.split(":")[2]
    assert "Authorization: OAuth " in body and token_secret in body  # PLAINTEXT: the signature is the secret
    assert listed  # one call only


@pytest.mark.parametrize("status", [500, 502, 503, 401, 403])
def test_status_faults_fail_the_next_calls(maas, status):
    async def scenario():
        session = await connect(maas)
        maas.inject("status", status=status, count=2, path="/boot-resources/")
        failures = []
        for _ in range(2):
            with pytest.raises(CallError) as caught:
                await session.BootResources.read()
            failures.append(caught.value.status)
        return failures, await session.BootResources.read()

    failures, listed = run(scenario())
    assert failures == [status, status] and listed
    assert [r["status"] for r in maas.requests if r["path"].endswith("boot-resources/")] == [
        status, status, 200]


def test_refused_connections_then_the_same_port_again(maas):
    port = maas.port

    async def scenario():
        session = await connect(maas)
        maas.stop()
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.BootResources.read()
        maas.start()
        return await session.BootResources.read()

    assert run(scenario()) and maas.port == port


def test_delay_makes_a_client_time_out(maas):
    maas.inject("delay", seconds=6, path="/version/")

    async def scenario():
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                async with http.get(maas.url + "api/2.0/version/") as answer:
                    await answer.read()
            return time.monotonic() - started

    assert run(scenario()) < 5  # the client gave up long before the 6 s answer


def test_no_space_fault(maas):
    content = image("full")

    async def scenario():
        session = await connect(maas)
        resource = await create(session, ESXI, content)
        maas.inject("no_space")
        return await upload(maas, newest_file(resource)["upload_uri"], content)

    assert run(scenario()) == (400, "No space left on device")


def test_control_endpoint_over_http(maas):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            control = maas.url + "_sim/"
            async with http.post(control + "faults", json={"kind": "status", "status": 502,
                                                            "path": "/version/"}) as answer:
                queued = (answer.status, await answer.json())
            async with http.get(maas.url + "api/2.0/version/") as answer:
                faulted = answer.status
            async with http.post(control + "faults", json={"kind": "bogus"}) as answer:
                refused = answer.status
            async with http.post(control + "faults", json={"kind": "delay", "seconds": 5}) as answer:
                pass
            async with http.delete(control + "faults") as answer:
                cleared = answer.status
            async with http.get(control + "state") as answer:
                state = await answer.json()
            async with http.post(control + "refuse", json={"seconds": 3}) as answer:
                refusing = answer.status
            refused_at = await poll_version(http, until_refused=True)
            back = await poll_version(http, until_refused=False)
            return queued, faulted, refused, cleared, state, (refusing, refused_at), back

    async def poll_version(http, until_refused: bool, seconds: float = 15):
        """Ask for /version/ until the region refuses (or answers again); what it last said."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                async with http.get(maas.url + "api/2.0/version/") as answer:
                    if not until_refused:
                        return answer.status
            except aiohttp.ClientConnectorError:
                if until_refused:
                    return "refused"
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                pass  # a kept-alive connection cut by the stop: the next one tells
            await asyncio.sleep(0.05)
        return "no change"

    queued, faulted, refused, cleared, state, refusing, back = run(scenario())
    assert queued[0] == 201 and queued[1]["faults"][0]["status"] == 502
    assert faulted == 502 and refused == 400 and cleared == 204
    assert state["mode"] == "3.8" and state["faults"] == []
    assert [r["name"] for r in state["resources"]] == ["ubuntu/noble"]
    assert state["requests"][-1]["status"] == 502
    assert refusing == (202, "refused") and back == 200


def test_command_line_runs_until_sigterm(tmp_path):
    key_file = tmp_path / "maas.key"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.maas_simulator", "--state-dir", str(tmp_path / "region"),
         "--mode", "3.5", "--api-key-file", str(key_file)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/MAAS/")
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        key = key_file.read_text().strip()

        async def scenario():
            _, session = await SessionAPI.connect(url, apikey=key)
            content = image("cli")
            resource = await create(session, ESXI, content)
            rfile = newest_file(resource)
            upload_uri = urljoin(url, rfile["upload_uri"])
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Length": str(len(content))}
            sign(upload_uri, headers, Credentials.parse(key))
            async with aiohttp.ClientSession() as http:
                async with http.put(upload_uri, data=content, headers=headers) as answer:
                    put_status = answer.status
                async with http.get(url + "_sim/file-bytes", params={"name": ESXI}) as answer:
                    served = await answer.read()
            return (await session.Version.read())["version"], put_status, served == content

        assert run(scenario()) == ("3.5.4", 200, True)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_status = process.wait(timeout=10)
        process.stdout.close()
    assert exit_status == 0
    assert json.loads((tmp_path / "region" / "state.json").read_text())["api_key"] == key


# -- last_deployed (MAAS 3.4+: newest IMAGE_DEPLOYED event; 3.7+: Node.update_deployment_time) --------

def test_a_deployment_marks_last_deployed_on_every_resource_of_that_name_and_architecture(maas):
    async def scenario():
        session = await connect(maas)
        await register(maas, session, ESXI, image("a"))
        await register(maas, session, "esxi/8.0-other", image("b"))
        await create(session, ESXI, image("c"), architecture="arm64/generic")
        before = await session.BootResources.read()
        when = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=timezone.utc)
        marked = maas.mark_deployed(ESXI, when=when)
        listing = await session.BootResources.read()
        one = next(r for r in listing if r["name"] == ESXI and r["architecture"] == ARCH)
        return before, marked, listing, await session.BootResource.read(id=one["id"])

    before, marked, listing, read = run(scenario())
    assert all(r["last_deployed"] is None for r in before)  # never deployed: null, key present
    assert marked == 1 and read["last_deployed"] == "2026-11-30T10:00:00.123Z"  # Django's JSON form
    shown = {(r["name"], r["architecture"]): r["last_deployed"] for r in listing}
    assert shown[("esxi/8.0-other", ARCH)] is None and shown[(ESXI, "arm64/generic")] is None
