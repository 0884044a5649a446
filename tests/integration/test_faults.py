"""Fault injection: the daemon killed (-9) at each stage, and every MAAS fault, with nothing lost.

Every test ends with each ISO either registered exactly once with the right bytes, or in failed/
with its reason; no build process and no work dir left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.harness import drop, holds_open, marker_of, no_processes_of, wait_for, write_config
from tests.isogen import make_esxi_iso

NAME = "esxi/8.0.2-22380479"


def _iso(tmp_path: Path, salt: str, payload: int = 0) -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / f"{salt}.iso", salt=salt.encode(), payload_size=payload)


def assert_registered_once(simulator, daemon, iso: Path, name: str = NAME) -> None:
    """MAAS holds one complete set of `name`, built from this ISO; nothing is left behind."""
    job = daemon.wait_for_state(iso.name, "registered", timeout=90)
    assert job["resource"] == name
    [resource] = [r for r in simulator.resources() if r["name"] == name]
    complete = [s for s in resource["sets"].values() if all(f["complete"] for f in s["files"].values())]
    assert len(complete) == 1, resource["sets"]
    held = simulator.file_bytes(name)
    [image] = complete[0]["files"].values()
    assert hashlib.sha256(held).hexdigest() == image["sha256"]
    iso_sha = hashlib.sha256((daemon.drop_dir / "done" / iso.name).read_bytes()).hexdigest()
    assert f"iso_sha256={iso_sha}".encode() in gzip.decompress(held)
    wait_for(lambda: not list((daemon.state_dir / "work").iterdir()), 10, "the work dir to go")
    assert [pid for pid in no_processes_of() if marker_of(pid).startswith(daemon.marker(0)[:9])] == []


HANGING = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]


def wait_until_hanging(daemon, job_id: int) -> None:
    """Wait until the HANGING build sleeps (its script said so): from then on, nothing it runs writes
    to the daemon's pipe, so a daemon killed now leaves it running (a Packer still starting would
    die of the broken pipe at its next line)."""
    build_log = daemon.state_dir / "logs" / f"{job_id}.log"
    wait_for(lambda: build_log.exists() and "shape-disk: hanging" in build_log.read_text(), 30,
             "the build to hang")


# ----- kill -9 at each stage ------------------------------------------------------------------

def test_kill9_while_inspecting(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    iso = _iso(tmp_path, "inspect", payload=300 << 20)  # hashing 300 MiB takes a while
    dropped = drop(iso, daemon.drop_dir)
    wait_for(lambda: holds_open(daemon.process.pid, dropped), 30, "intake to read the ISO", interval=0.02)
    daemon.stop(signal.SIGKILL)
    restarted = daemon_factory(config)
    assert_registered_once(simulator, restarted, iso)


def test_kill9_while_building_ends_the_dead_build(tmp_path, simulator, daemon_factory):
    site = tmp_path / "site"
    config = write_config(site, simulator, build__command=HANGING)
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "build"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "building")
    marker = daemon.marker(job["id"])
    wait_until_hanging(daemon, job["id"])
    daemon.stop(signal.SIGKILL)
    orphans = no_processes_of(marker)
    assert orphans, "the dead daemon's build keeps running until someone ends it"
    write_config(site, simulator)  # the next build finishes
    restarted = daemon_factory(config)
    assert_registered_once(simulator, restarted, iso)
    assert no_processes_of(marker) == []


def test_kill9_leaves_a_stubborn_build_that_the_restart_ends(tmp_path, simulator, daemon_factory):
    # A build step that survives its parent's death (as qemu or qemu-nbd can): it ignores SIGHUP
    # and SIGPIPE and never writes, so nothing but our clean-up ends it.
    stubborn = ["python3", "-c", "import signal, sys, time\n"
                "signal.signal(signal.SIGHUP, signal.SIG_IGN); signal.signal(signal.SIGPIPE, signal.SIG_IGN)\n"
                "print('installing', sys.argv[1], flush=True); time.sleep(3600)", "{iso}"]
    site = tmp_path / "site"
    config = write_config(site, simulator, build__command=stubborn)
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "stubborn"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "building")
    marker = daemon.marker(job["id"])
    build_log = daemon.state_dir / "logs" / f"{job['id']}.log"
    wait_for(lambda: build_log.exists() and "\ninstalling /" in build_log.read_text(), 30,
             "the build to print its first line")  # later it never writes, so never meets EPIPE
    daemon.stop(signal.SIGKILL)
    time.sleep(1)
    orphans = no_processes_of(marker)
    assert orphans, "the stubborn build outlives the daemon"
    write_config(site, simulator)
    restarted = daemon_factory(config)
    assert_registered_once(simulator, restarted, iso)
    assert no_processes_of(marker) == []
    ended = sum(e["processes_ended"] for e in restarted.log_events()
                if e.get("event") == "recover.host_cleaned")
    assert ended >= len(orphans)


def test_kill9_while_uploading(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    delay = simulator.inject("delay", seconds=4, method="PUT", path="/upload/")
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "upload"), daemon.drop_dir)
    daemon.wait_for_registration(iso.name, "default", "uploading")
    wait_for(lambda: delay.fired, 30, "the simulator to hold the first chunk")
    daemon.stop(signal.SIGKILL)
    restarted = daemon_factory(config)
    assert_registered_once(simulator, restarted, iso)


def test_crash_after_registration_before_the_move(tmp_path, simulator, daemon_factory):
    """The state a kill -9 leaves between 'registered' and the ISO's move to done/."""
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "move"), daemon.drop_dir)
    daemon.wait_for_state(iso.name, "registered")
    daemon.stop(signal.SIGKILL)
    done = daemon.drop_dir / "done" / iso.name
    shutil.move(done, iso)  # as if the rename had not happened yet
    with sqlite3.connect(daemon.state_dir / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET iso_path = ?", (str(iso),))
    restarted = daemon_factory(config)
    wait_for(done.exists, 20, "the ISO to reach done/")
    assert not iso.exists()
    assert len([j for j in restarted.jobs()]) == 1
    assert_registered_once(simulator, restarted, iso)


# ----- MAAS faults ----------------------------------------------------------------------------

def test_maas_down_the_job_waits_and_completes_when_it_is_back(tmp_path, simulator, daemon_factory):
    simulator.stop()
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, maas__retries=50))
    iso = drop(_iso(tmp_path, "down"), daemon.drop_dir)
    # Between its tries the job waits in `built`; while it tries again it is `uploading`.
    def waiting_job():
        job = daemon.job_for(iso.name) or {}
        return job if "waiting for MAAS" in (job.get("stage") or "") else None

    job = wait_for(waiting_job, 60, "the job to say it waits for MAAS")
    assert job["state"] == "built" and "connection refused" in job["error"].lower()
    wait_for(lambda: any("waiting for MAAS" in status for status in daemon.statuses()),
             10, "the status line to say it waits for MAAS")
    wait_for(lambda: "waiting for MAAS" in daemon.cli("status").stdout, 60, "`status` to say it waits for MAAS")
    simulator.start()
    assert_registered_once(simulator, daemon, iso)


@pytest.mark.parametrize("status_code", [500, 502, 503])
def test_5xx_answers_are_retried(tmp_path, simulator, daemon_factory, status_code):
    simulator.inject("status", status=status_code, count=3)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = drop(_iso(tmp_path, f"e{status_code}"), daemon.drop_dir)
    assert_registered_once(simulator, daemon, iso)
    assert [r for r in simulator.requests if r["status"] == status_code]


def test_timeouts_are_retried(tmp_path, simulator, daemon_factory):
    simulator.inject("delay", seconds=3, count=2, path="/boot-resources/")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, maas__request_timeout="1s"))
    iso = drop(_iso(tmp_path, "slow"), daemon.drop_dir)
    assert_registered_once(simulator, daemon, iso)


@pytest.mark.parametrize("appended", ["none", "received", "all"])
def test_connection_dropped_mid_upload(tmp_path, simulator, daemon_factory, appended):
    simulator.inject("drop", after_bytes=100, appended=appended)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = drop(_iso(tmp_path, f"drop-{appended}"), daemon.drop_dir)
    assert_registered_once(simulator, daemon, iso)


@pytest.mark.parametrize("status_code", [401, 403])
def test_rejected_key_fails_at_once_and_retry_works_after_the_fix(tmp_path, simulator, daemon_factory,
                                                                    status_code):
    simulator.inject("status", status=status_code, count=1000)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = drop(_iso(tmp_path, f"auth{status_code}"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed")
    assert job["error"].startswith("MAAS default: MAAS rejected the API key")
    time.sleep(3)
    refused = [r for r in simulator.requests if r["status"] == status_code]
    assert len(refused) <= 2, f"a retry storm: {len(refused)} refused calls"
    assert (daemon.drop_dir / "failed" / f"{iso.name}.reason.txt").exists()
    simulator.clear_faults()  # the admin fixed the key
    result = daemon.cli("retry", str(job["id"]))
    assert result.returncode == 0, result.stderr
    assert_registered_once(simulator, daemon, iso)


def test_an_answer_nobody_planned_for_fails_the_job_with_a_reason_and_the_daemon_goes_on(
        tmp_path, simulator, daemon_factory):
    # Another service's JSON where MAAS lists its boot resources: objects without an "id".
    simulator.inject("status", status=200, body='[{"name": "esxi/8.0.2-22380479", "type": "Uploaded"}]',
                     content_type="application/json", method="GET", path="/boot-resources/", count=1000)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = drop(_iso(tmp_path, "odd"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed")
    assert job["error"].startswith("MAAS default: unexpected error while registering: KeyError: 'id' (the "
                                   "traceback is in")
    assert f"esxi-watcher retry {job['id']} --target default" in job["error"]
    reason = (daemon.drop_dir / "failed" / f"{iso.name}.reason.txt").read_text()
    assert reason.startswith("MAAS default: unexpected error while registering: KeyError")
    assert [e["job"] for e in daemon.log_events() if e.get("event") == "job.internal_error"] == [job["id"]]
    assert daemon.alive()

    simulator.clear_faults()  # MAAS answers as MAAS again
    second = drop(_iso(tmp_path, "after"), daemon.drop_dir)
    daemon.wait_for_state(second.name, "registered")
    assert daemon.cli("retry", str(job["id"])).returncode == 0
    started_before = _builds_started(daemon)
    daemon.wait_for_state(iso.name, "registered")
    assert _builds_started(daemon) == started_before  # the built image was kept: registered, not rebuilt


def _builds_started(daemon) -> list[str]:
    return sorted(event["job"] for event in daemon.log_events() if event.get("event") == "job.building")


def key_fragments(api_key: str, width: int = 8) -> set[str]:
    """Every `width`-character piece of each part of the key: a key cut short still shows."""
    return {part[start:start + width] for part in api_key.split(":") for start in range(len(part) - width + 1)}


def banners(simulator, job_id: int) -> list[dict]:
    return [n for n in simulator.notifications() if n["ident"] == f"esxi-watcher-{job_id}"]


def test_the_api_key_never_shows_even_when_a_proxy_echoes_it(tmp_path, simulator, daemon_factory):
    # A badly configured proxy answers with the request's Authorization header: the key's parts.
    simulator.inject("echo", status=400, method="POST", path="/boot-resources/", body="Bad Request")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, log__level="debug"))
    iso = drop(_iso(tmp_path, "secret"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed")
    assert "Authorization: OAuth" in job["error"]  # the echo reached the job's error...
    [banner] = wait_for(lambda: banners(simulator, job["id"]), 20, "the failure banner")
    seen = [job["error"], banner["message"], daemon.cli("status", "--json").stdout, daemon.cli("status").stdout,
            (daemon.drop_dir / "failed" / f"{iso.name}.reason.txt").read_text()]

    simulator.inject("status", status=503, count=2)
    simulator.inject("drop", after_bytes=10, appended="received")
    assert daemon.cli("retry", str(job["id"])).returncode == 0
    assert_registered_once(simulator, daemon, iso)
    daemon.stop()
    seen += [daemon.log_path.read_text(), daemon.cli("status", "--json").stdout, daemon.cli("status").stdout,
             "\n".join(daemon.notifications), repr(simulator.notifications())]
    seen += [p.read_text() for p in (daemon.state_dir / "logs").glob("*.log")]
    text = "\n".join(seen)
    assert [piece for piece in key_fragments(simulator.api_key) if piece in text] == []  # ...the key did not
    assert "********" in job["error"]


def test_a_registration_refused_posts_one_banner_that_success_replaces(tmp_path, simulator, daemon_factory):
    simulator.inject("status", status=401, path="/boot-resources/", count=1000)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    iso = drop(_iso(tmp_path, "banner"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed")
    [failed] = wait_for(lambda: banners(simulator, job["id"]), 20, "the failure banner")
    assert failed["category"] == "error" and failed["admins"]
    assert "MAAS rejected the API key (HTTP 401)" in failed["message"]
    assert f"`esxi-watcher retry {job['id']} --target default`" in failed["message"]
    assert "\n" not in failed["message"]

    simulator.clear_faults()  # the admin fixed the key
    assert daemon.cli("retry", str(job["id"])).returncode == 0
    assert_registered_once(simulator, daemon, iso)
    [done] = wait_for(lambda: [b for b in banners(simulator, job["id"]) if b["category"] == "success"], 20,
                      "the success banner")
    assert banners(simulator, job["id"]) == [done]  # replaced: one banner for the job
    assert NAME in done["message"]


def test_key_file_readable_by_others_is_refused(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    (tmp_path / "site" / "maas-api-key").chmod(0o644)
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "perm"), daemon.drop_dir)
    wait_for(lambda: "readable by others" in ((daemon.job_for(iso.name) or {}).get("error") or ""), 60,
             "the job to name the key file problem")
    assert daemon.job_for(iso.name)["state"] == "built"
    (tmp_path / "site" / "maas-api-key").chmod(0o600)
    assert_registered_once(simulator, daemon, iso)
