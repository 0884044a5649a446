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
from esxi_watcher.errors import (BadApiKeyFile, BytesHeldElsewhere, EsxiWatcherError, ImageNotComplete,
                                 MaasAuthError, MaasUnavailable, MissingApiKey)
from esxi_watcher.maas.upload import put_chunk, upload_session
from tests.maas_simulator import MaasSimulator

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
        url = f"http://127.0.0.1:{port}/MAAS/api/2.0/boot-resources/1/upload/1/"
        try:
            async with upload_session(5) as http:
                with pytest.raises(MaasUnavailable) as raised:
                    await put_chunk(http, url, b"x" * 100_000, Credentials.parse(KEY), timeout=5)
        finally:
            server.close()
            await server.wait_closed()
        return connections, raised.value

    connections, error = asyncio.run(scenario())
    assert len(connections) == 1
    assert str(error).startswith("connection dropped")  # aiohttp 3.8 never re-sends; newer ones try
    assert b"oauth_signature_method=\"PLAINTEXT\"" in connections[0]


def test_the_endpoint_never_shows_its_key():
    endpoint = maas.Endpoint("http://maas:5240/MAAS/", KEY)
    assert "Token" not in repr(endpoint) and "Token" not in str(endpoint)


# ----- registering against the MAAS simulator ----------------------------------------------

NAME = "esxi/8.0.2-22380479"
ARCH = "amd64/generic"
MiB = 1 << 20


class Artifact:
    """A real gzip file, the kind of ddgz image packer-maas writes (random content, so it stays big)."""

    def __init__(self, path: Path, mib: float = 3, seed: int = 0):
        payload = hashlib.shake_256(f"disk {seed}".encode()).digest(int(mib * MiB))
        path.write_bytes(gzip.compress(payload, compresslevel=1))
        self.path = path
        self.data = path.read_bytes()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.size = len(self.data)


@pytest.fixture
def artifact(tmp_path):
    return Artifact(tmp_path / "vmware-esxi.dd.gz")


@pytest.fixture
def other_artifact(tmp_path):
    return Artifact(tmp_path / "vmware-esxi-2.dd.gz", seed=1)


@pytest.fixture(params=["3.8"])
def simulator(request, tmp_path):
    with MaasSimulator(tmp_path / "maas", mode=request.param, realistic_version=True) as running:
        yield running
    assert running.crashes == []


def modes(*names):
    return pytest.mark.parametrize("simulator", names, indirect=True)


def register(simulator, artifact: Artifact, name: str = NAME, progress=None, *, url: str | None = None,
             api_key: str | None = None, request_timeout: float = 10, **overrides) -> maas.Registration:
    """One registration attempt, as a caller makes it (1 MiB chunks, so a 3 MiB image takes four)."""
    endpoint = maas.Endpoint(url or simulator.url, api_key or simulator.api_key, request_timeout)
    arguments = dict(name=name, title="VMware ESXi 8.0.2", architecture=ARCH, artifact=artifact.path,
                     sha256=artifact.sha256, size=artifact.size, progress=progress, chunk_size=1 * MiB,
                     complete_timeout=5, poll_interval=0.02)
    arguments.update(overrides)
    return asyncio.run(maas.register_image(endpoint, **arguments))


def requests(simulator, method: str, path: str = "", status: int | None = None) -> list[dict]:
    return [r for r in simulator.requests if r["method"] == method and path in r["path"]
            and (status is None or r["status"] == status)]


def uploaded(simulator) -> list[dict]:
    return [r for r in simulator.resources() if r["type"] == "Uploaded"]


def uploaded_resource(simulator, name: str = NAME) -> dict:
    return next(r for r in uploaded(simulator) if r["name"] == name)


@modes("3.8", "3.5", "3.4")
def test_registers_a_ddgz_image(simulator, artifact):
    progress = []
    registration = register(simulator, artifact, progress=progress.append)

    resource = uploaded_resource(simulator)
    version, newest = maas.newest_set(resource)
    (rfile,) = newest["files"].values()
    assert registration == maas.Registration(
        resource_id=resource["id"], name=NAME, architecture=ARCH, set_version=version, sha256=artifact.sha256,
        uploaded=True, created_resource=True)
    assert newest["complete"] and rfile["complete"] and rfile["sha256"] == artifact.sha256
    assert rfile["filetype"] == "root-dd.gz" and resource["title"] == "VMware ESXi 8.0.2"
    assert simulator.file_bytes(NAME) == artifact.data
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    puts = requests(simulator, "PUT", "/upload/")
    assert len(puts) == 4 and all(put["status"] == 200 for put in puts)  # 3 MiB of noise gzips to just over 3 MiB
    assert sum(put["bytes"] for put in puts) == artifact.size


def test_a_registration_says_whether_its_post_created_the_resource(simulator, artifact, other_artifact):
    """Retention deletes only resources we made: the first upload creates the resource (and says
    so at once, through on_created), a second image under that name only adds a set to it."""
    created = []
    first = register(simulator, artifact, on_created=created.append)
    second = register(simulator, other_artifact, on_created=created.append)
    assert first.created_resource and created == [first.resource_id]
    assert not second.created_resource and second.uploaded and second.resource_id == first.resource_id
    assert len(uploaded_resource(simulator)["sets"]) == 2


@modes("3.8", "3.5", "3.4")
def test_the_same_bytes_under_the_same_name_again_change_nothing(simulator, artifact):
    first = register(simulator, artifact)
    requests_before = len(simulator.requests)

    again = register(simulator, artifact)

    assert again == maas.Registration(**{**first.__dict__, "uploaded": False, "created_resource": False})
    later = simulator.requests[requests_before:]
    assert [r for r in later if r["method"] != "GET"] == []
    assert len(uploaded_resource(simulator)["sets"]) == 1
    assert simulator.file_bytes(NAME) == artifact.data


def test_bytes_held_by_another_image_on_maas_38_are_not_uploaded(simulator, artifact):
    first = register(simulator, artifact)
    requests_before = len(simulator.requests)

    with pytest.raises(BytesHeldElsewhere) as raised:
        register(simulator, artifact, name="esxi/8.0.2-copy")

    message = str(raised.value)
    assert NAME in message and f"resource {first.resource_id}" in message and "delete" in message
    assert [r for r in simulator.requests[requests_before:] if r["method"] != "GET"] == []
    assert [r["name"] for r in uploaded(simulator)] == [NAME]
    assert simulator.file_bytes(NAME) == artifact.data


@modes("3.5", "3.4")
def test_bytes_held_by_another_image_before_maas_38_are_registered_again(simulator, artifact):
    register(simulator, artifact)
    requests_before = len(simulator.requests)

    copy = register(simulator, artifact, name="esxi/8.0.2-copy")

    assert copy.uploaded and copy.sha256 == artifact.sha256
    sent = sum(r["bytes"] for r in simulator.requests[requests_before:] if r["method"] == "PUT")
    assert sent == (0 if simulator.mode == "3.4" else artifact.size)  # 3.4 links the large object
    assert simulator.file_bytes("esxi/8.0.2-copy") == artifact.data
    assert simulator.file_bytes(NAME) == artifact.data


def test_an_older_set_of_the_same_name_holding_the_bytes_blocks_on_maas_38(simulator, artifact, other_artifact):
    register(simulator, artifact)
    register(simulator, other_artifact)

    with pytest.raises(BytesHeldElsewhere, match="an older set of this image"):
        register(simulator, artifact)
    assert simulator.file_bytes(NAME) == other_artifact.data


@modes("3.8", "3.5", "3.4")
def test_a_new_build_under_the_same_name_adds_a_set_and_keeps_the_old_one(simulator, artifact, other_artifact):
    first = register(simulator, artifact)
    second = register(simulator, other_artifact)

    assert second.resource_id == first.resource_id and second.set_version != first.set_version
    assert maas.set_version_key(second.set_version) > maas.set_version_key(first.set_version)
    sets = uploaded_resource(simulator)["sets"]
    assert sets[first.set_version]["complete"]  # keep_old: the previous build is still there
    assert simulator.file_bytes(NAME) == other_artifact.data


def drop_second_chunk(simulator, appended: str = "received"):
    """Make the second chunk's connection drop midway, once."""
    fired = []

    def on_progress(fraction):
        if 0 < fraction < 1 and not fired:
            fired.append(simulator.inject("drop", after_bytes=300_000, appended=appended))

    return on_progress, fired


@modes("3.8", "3.5", "3.4")
@pytest.mark.parametrize("appended", ["none", "received", "all"])
def test_an_upload_dropped_midway_ends_the_attempt_and_the_next_one_registers(simulator, artifact, appended):
    on_progress, fired = drop_second_chunk(simulator, appended)

    with pytest.raises(MaasUnavailable) as raised:
        register(simulator, artifact, progress=on_progress)
    assert str(raised.value).startswith("connection dropped") and fired[0].fired == 1
    assert uploaded(simulator) == []  # the half-made resource was deleted, not left over
    assert requests(simulator, "PUT", "/upload/", status=400) == []

    registration = register(simulator, artifact)

    assert registration.sha256 == artifact.sha256 and registration.uploaded
    assert simulator.file_bytes(NAME) == artifact.data
    assert [r["id"] for r in uploaded(simulator)] == [registration.resource_id]
    # 3.8 keeps the partial shared file past the delete: the first re-upload gets `Too much data
    # received.`, and the attempt starts over by itself (a MAAS rule, not an outage)
    too_much = requests(simulator, "PUT", "/upload/", status=400)
    assert len(too_much) == (1 if simulator.mode == "3.8" else 0)


@modes("3.8", "3.5")
def test_a_failed_upload_of_a_new_build_leaves_the_old_image_usable(simulator, artifact, other_artifact):
    register(simulator, artifact)
    on_progress, _ = drop_second_chunk(simulator)

    with pytest.raises(MaasUnavailable, match="connection dropped"):
        register(simulator, other_artifact, progress=on_progress)
    assert simulator.file_bytes(NAME) == artifact.data

    registration = register(simulator, other_artifact)  # 3.8: `Too much data received.` once, then a fresh set
    assert simulator.file_bytes(NAME) == other_artifact.data
    assert uploaded_resource(simulator)["sets"][registration.set_version]["complete"]


def test_a_server_error_ends_the_attempt_at_once_unavailable(simulator, artifact):
    simulator.inject("status", status=500, count=1)

    with pytest.raises(MaasUnavailable) as raised:
        register(simulator, artifact)

    assert str(raised.value) == "HTTP 500"
    assert [r["status"] for r in simulator.requests] == [500]  # one attempt: no second call, no wait
    assert register(simulator, artifact).uploaded and simulator.file_bytes(NAME) == artifact.data


def test_a_503_on_a_chunk_ends_the_attempt_and_removes_the_half_made_image(simulator, artifact):
    simulator.inject("status", status=503, method="PUT", path="/upload/")

    with pytest.raises(MaasUnavailable, match="^HTTP 503$"):
        register(simulator, artifact)
    assert uploaded(simulator) == [] and len(requests(simulator, "PUT")) == 1

    register(simulator, artifact)
    assert simulator.file_bytes(NAME) == artifact.data and len(uploaded(simulator)) == 1


def test_a_wrong_key_fails_at_once(tmp_path, artifact):
    with MaasSimulator(tmp_path / "maas", mode="3.8") as simulator:
        wrong = "WrongConsumer:WrongTokenKey:WrongTokenSecret"
        with pytest.raises(MaasAuthError) as raised:
            register(simulator, artifact, api_key=wrong)
        assert "HTTP 401" in str(raised.value) and "maas apikey --username=" in str(raised.value)
        assert "Wrong" not in str(raised.value)
        assert len([r for r in simulator.requests if r["status"] == 401]) == 1
        assert requests(simulator, "POST") == []


@pytest.mark.parametrize("status", [401, 403])
def test_an_auth_refusal_on_create_raises_auth_error(simulator, artifact, status):
    simulator.inject("status", status=status, method="POST", path="/boot-resources/", count=5)
    with pytest.raises(MaasAuthError, match=f"HTTP {status}"):
        register(simulator, artifact)
    assert len(requests(simulator, "POST")) == 1


def test_a_refusal_names_the_reason(simulator, artifact):
    with pytest.raises(maas.MaasError, match="Unsupport operating system") as raised:
        register(simulator, artifact, name="vmware/8.0")
    assert not isinstance(raised.value, MaasUnavailable)
    assert requests(simulator, "POST", status=400)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_maas_down_raises_unavailable_with_a_one_line_reason(artifact):
    endpoint = maas.Endpoint(f"http://127.0.0.1:{free_port()}/MAAS/", KEY, request_timeout=5)
    with pytest.raises(MaasUnavailable) as raised:
        asyncio.run(maas.register_image(endpoint, name=NAME, title="t", architecture=ARCH,
                                        artifact=artifact.path, sha256=artifact.sha256, size=artifact.size))
    assert str(raised.value) == "connection refused"


PROXY_PAGE = "<html><body>Please log in to the proxy</body></html>"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_answer_that_is_not_maas_json_is_named_and_unavailable(simulator, artifact, method):
    # A proxy's login page or a web server that is not MAAS, with HTTP 200, then MAAS itself again.
    simulator.inject("status", status=200, body=PROXY_PAGE, method=method, path="/boot-resources/")
    with pytest.raises(MaasUnavailable) as raised:
        register(simulator, artifact)
    action = "listing boot resources" if method == "GET" else f"creating boot resource {NAME}"
    reason = str(raised.value)
    assert reason.startswith(f"the answer to {action} is not MAAS's JSON (bytes: '<html><body>Please log")
    assert "is maas.url the MAAS region API" in reason and "\n" not in reason
    assert requests(simulator, "PUT") == []

    registration = register(simulator, artifact)
    assert registration.uploaded and simulator.file_bytes(NAME) == artifact.data


def test_a_slow_maas_times_out_unavailable(simulator, artifact):
    simulator.inject("delay", seconds=4.0, method="GET", path="/boot-resources/")
    with pytest.raises(MaasUnavailable, match="^no answer within 1 s$"):
        register(simulator, artifact, request_timeout=1)
    register(simulator, artifact, request_timeout=10)
    assert simulator.file_bytes(NAME) == artifact.data


def test_waiting_for_completion_gives_up_without_uploading_again(simulator, artifact):
    def on_progress(fraction):
        if fraction == 1.0:  # every read after the upload fails: MAAS never says complete
            simulator.inject("status", status=503, method="GET", path="/boot-resources/", count=10_000)

    with pytest.raises(ImageNotComplete, match="HTTP 503"):
        register(simulator, artifact, progress=on_progress, complete_timeout=0.3)
    assert isinstance(ImageNotComplete("x"), MaasUnavailable)
    assert len(requests(simulator, "POST")) == 1
    simulator.clear_faults()
    assert register(simulator, artifact).uploaded is False


def test_the_newest_set_is_found_past_the_tenth_of_a_day(simulator, tmp_path):
    registrations = [register(simulator, Artifact(tmp_path / f"{seed}.dd.gz", mib=0.05, seed=seed))
                     for seed in range(12)]
    versions = [registration.set_version for registration in registrations]
    assert versions[10].endswith(".10") and versions[11].endswith(".11")
    assert simulator.file_bytes(NAME) == (tmp_path / "11.dd.gz").read_bytes()


def key_fragments(api_key: str, width: int = 8) -> set[str]:
    """Every `width`-character piece of each part of the key: a key cut short still shows."""
    return {part[start:start + width] for part in api_key.split(":") for start in range(len(part) - width + 1)}


def test_the_key_never_shows_in_errors_or_logs_even_when_a_proxy_echoes_it(simulator, artifact):
    from structlog.testing import capture_logs

    endpoint = maas.Endpoint(simulator.url, simulator.api_key)
    errors = []
    with capture_logs() as events:
        for method, path in (("GET", "/boot-resources/"), ("POST", "/boot-resources/"), ("PUT", "/upload/")):
            simulator.inject("echo", status=400, method=method, path=path, body="Bad Request")
            try:
                register(simulator, artifact)
            except maas.MaasError as error:
                errors.append(str(error))
        simulator.inject("echo", status=400, method="POST", path="/notifications/")
        try:
            asyncio.run(maas.post_banner(endpoint, ident="esxi-watcher-test", message=f"hello {simulator.api_key}",
                                         category="info"))
        except maas.MaasError as error:
            errors.append(str(error))
        asyncio.run(maas.post_banner(endpoint, ident="esxi-watcher-test", message=f"hi {simulator.api_key}",
                                     category="info"))
    echoed = [r for r in simulator.requests if r["status"] == 400]
    assert len(echoed) == 4 and len(errors) == 4
    assert all("Authorization: OAuth" in error for error in errors)  # the echo reached the error...
    assert [n["message"] for n in simulator.notifications()] == ["hi ********"]
    text = repr(events) + repr(errors) + repr(simulator.notifications())
    assert [piece for piece in key_fragments(simulator.api_key) if piece in text] == []  # ...the key did not


def test_post_banner_keeps_one_banner_per_ident(simulator):
    endpoint = maas.Endpoint(simulator.url, simulator.api_key)
    for message, category in (("first", "error"), ("second", "success")):
        asyncio.run(maas.post_banner(endpoint, ident="esxi-watcher-7", message=message, category=category))
    asyncio.run(maas.post_banner(endpoint, ident="esxi-watcher-8", message="other", category="info"))

    banners = [(n["ident"], n["message"], n["category"], n["admins"]) for n in simulator.notifications()]
    assert banners == [("esxi-watcher-7", "second", "success", True), ("esxi-watcher-8", "other", "info", True)]
    assert [r["status"] for r in requests(simulator, "DELETE", "/notifications/")] == [204]


def test_dismiss_banner_deletes_the_ident_and_none_is_fine(simulator):
    endpoint = maas.Endpoint(simulator.url, simulator.api_key)
    asyncio.run(maas.post_banner(endpoint, ident="esxi-watcher-7", message="m", category="error"))
    asyncio.run(maas.post_banner(endpoint, ident="esxi-watcher-8", message="m", category="error"))

    asyncio.run(maas.dismiss_banner(endpoint, ident="esxi-watcher-7"))
    asyncio.run(maas.dismiss_banner(endpoint, ident="esxi-watcher-7"))

    assert [n["ident"] for n in simulator.notifications()] == ["esxi-watcher-8"]


def test_banners_raise_like_registration_when_maas_is_away():
    endpoint = maas.Endpoint(f"http://127.0.0.1:{free_port()}/MAAS/", KEY)
    with pytest.raises(MaasUnavailable, match="^connection refused$"):
        asyncio.run(maas.post_banner(endpoint, ident="x", message="m", category="info"))
    with pytest.raises(MaasUnavailable, match="^connection refused$"):
        asyncio.run(maas.dismiss_banner(endpoint, ident="x"))


def test_server_version_reads_maas_version(simulator):
    assert asyncio.run(maas.server_version(maas.Endpoint(simulator.url, simulator.api_key))) == simulator.version


def test_a_url_without_a_maas_api_says_so(simulator, artifact):
    url = simulator.url.replace("/MAAS/", "/NotMAAS/")
    with pytest.raises(maas.MaasError, match="no MAAS API at"):
        register(simulator, artifact, url=url)


def test_the_default_chunks_are_64_mib_each_sent_once_in_order(simulator, tmp_path):
    big = Artifact(tmp_path / "big.dd.gz", mib=70)
    progress = []
    register(simulator, big, progress=progress.append, chunk_size=maas.CHUNK_SIZE)

    puts = requests(simulator, "PUT", "/upload/")
    assert [put["bytes"] for put in puts] == [64 * MiB, big.size - 64 * MiB]
    assert all(put["status"] == 200 for put in puts)
    assert simulator.file_bytes(NAME) == big.data
    assert progress == [0.0, 64 * MiB / big.size, 1.0]  # what MAAS acknowledged, chunk by chunk
