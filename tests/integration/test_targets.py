"""One build, several MAAS deployments: each target gets its own registration, waits for its own
MAAS and fails on its own, with its own banner; a target added later gets the images already
built; kill -9 at any step ends with each target registered exactly once."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest
import yaml

from esxi_watcher.config import parse_config
from esxi_watcher.daemon import targets
from esxi_watcher.daemon.activity import Activity
from esxi_watcher.daemon.context import Context
from esxi_watcher.daemon.register_step import wait_before_next_try
from esxi_watcher.store import JobStore, State, Step, Target
from tests.harness import drop, wait_for, write_config
from tests.integration.test_faults import HANGING, NAME, _iso, wait_until_hanging

# Seconds, not minutes: a MAAS outage of many tries, compressed.
FAST_WAITS = {"retry_min_wait": 0.2, "retry_max_wait": 1}


@pytest.fixture
def second_simulator(tmp_path):
    from tests.maas_simulator import MaasSimulator

    with MaasSimulator(tmp_path / "maas-b", mode="3.8") as running:
        yield running


def _key_file(site: Path, name: str, simulator) -> Path:
    path = site / f"{name}.key"
    path.write_text(simulator.api_key + "\n")
    path.chmod(0o600)
    return path


def _two_targets(site: Path, site_a, site_b, **overrides) -> Path:
    """A config whose `maas:` is a list of the two simulators (site-a, site-b)."""
    config = write_config(site, site_a, **overrides)
    document = yaml.safe_load(config.read_text())
    document["maas"] = [
        {"name": "site-a", "url": site_a.url, "api_key_file": str(_key_file(site, "site-a", site_a)), **FAST_WAITS},
        {"name": "site-b", "url": site_b.url, "api_key_file": str(_key_file(site, "site-b", site_b)), **FAST_WAITS},
    ]
    config.write_text(yaml.safe_dump(document))
    return config


def _creates(simulator) -> int:
    """How many boot resources MAAS was asked to create (POSTs it answered 201)."""
    return len([r for r in simulator.requests if r["method"] == "POST" and r["path"].endswith("/boot-resources/")
                and r["status"] == 201])


def _held_once(simulator, name: str = NAME) -> bytes:
    [resource] = [r for r in simulator.resources() if r["name"] == name]
    assert len(resource["sets"]) == 1, resource["sets"]
    assert _creates(simulator) == 1
    return simulator.file_bytes(name)


def _registrations(daemon, iso_name: str) -> dict[str, dict]:
    job = daemon.job_for(iso_name) or {"registrations": []}
    return {record["target"]: record for record in job["registrations"]}


def _events(daemon, name: str) -> list[dict]:
    return [event for event in daemon.log_events() if event.get("event") == name]


# ----- the whole daemon, two simulators -------------------------------------------------------

def test_an_iso_is_built_once_and_registered_on_both_targets(tmp_path, simulator, second_simulator,
                                                                daemon_factory):
    daemon = daemon_factory(_two_targets(tmp_path / "site", simulator, second_simulator))
    iso = drop(_iso(tmp_path, "both"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "registered")
    assert _held_once(simulator) == _held_once(second_simulator)
    assert len(_events(daemon, "job.building")) == 1
    assert (daemon.drop_dir / "done" / iso.name).exists()
    rows = json.loads(daemon.cli("status", "--json").stdout)
    assert [(r["target"], r["state"], r["resource"]) for r in rows[0]["registrations"]] == [
        ("site-a", "registered", NAME), ("site-b", "registered", NAME)]
    table = daemon.cli("status").stdout
    assert "site-a registered" in table and "site-b registered" in table
    assert (daemon.state_dir / "artifacts" / f"{job['id']}.dd.gz").is_file()  # kept for a target added later


def test_one_target_away_for_many_tries_never_holds_the_other_and_registers_by_itself(
        tmp_path, simulator, second_simulator, daemon_factory):
    second_simulator.stop()
    daemon = daemon_factory(_two_targets(tmp_path / "site", simulator, second_simulator))
    iso = drop(_iso(tmp_path, "away"), daemon.drop_dir)
    daemon.wait_for_registration(iso.name, "site-a", "registered")
    assert _held_once(simulator)
    # Far more tries than the old budget (9) allowed, and the ISO stays until every target has it.
    waiting = wait_for(lambda: (_registrations(daemon, iso.name)["site-b"]["attempts"] >= 15
                                and _registrations(daemon, iso.name)["site-b"]), 60, "15 tries on site-b")
    assert waiting["state"] in ("pending", "uploading") and waiting["since"] is not None
    assert "connection refused" in waiting["error"].lower()
    job = daemon.job_for(iso.name)
    assert job["state"] == "built" and (daemon.drop_dir / iso.name).exists()
    assert not (daemon.drop_dir / "done" / iso.name).exists()
    wait_for(lambda: any(s.startswith("waiting for MAAS site-b since ") and " tries: " in s
                         for s in daemon.statuses()), 10, "the status line to say since when and how many tries")
    table = daemon.cli("status").stdout
    assert "site-a registered" in table and "waiting for MAAS since" in table
    second_simulator.start()  # the MAAS upgrade is over; nobody types `retry`
    daemon.wait_for_state(iso.name, "registered", timeout=60)
    assert _held_once(second_simulator) == _held_once(simulator)
    assert (daemon.drop_dir / "done" / iso.name).exists()
    done = {event["target"]: event for event in _events(daemon, "register.done")}
    assert done["site-a"]["tries"] == 1 and done["site-b"]["tries"] > 15


@pytest.mark.parametrize("stage", ["building", "one uploading", "one registered, the other waiting"])
def test_kill9_at_each_step_of_a_two_target_job_registers_each_once(tmp_path, simulator, second_simulator,
                                                                     daemon_factory, stage):
    site = tmp_path / "site"
    config = _two_targets(site, simulator, second_simulator,
                          **({"build__command": HANGING} if stage == "building" else {}))
    if stage == "one uploading":
        simulator.inject("delay", seconds=4, method="PUT", path="/upload/")
    if stage == "one registered, the other waiting":
        second_simulator.stop()
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "kill"), daemon.drop_dir)
    if stage == "building":
        job = daemon.wait_for_state(iso.name, "building")
        wait_until_hanging(daemon, job["id"])
    elif stage == "one uploading":
        daemon.wait_for_registration(iso.name, "site-a", "uploading")
        wait_for(lambda: [r for r in simulator.requests if r["method"] == "PUT"], 20, "a chunk on its way")
    else:
        daemon.wait_for_registration(iso.name, "site-a", "registered")
        wait_for(lambda: _registrations(daemon, iso.name)["site-b"]["since"], 20, "site-b to wait for MAAS")
    daemon.stop(signal.SIGKILL)
    if stage == "building":
        _two_targets(site, simulator, second_simulator)  # the next build finishes
    second_simulator.start()
    restarted = daemon_factory(config)
    restarted.wait_for_state(iso.name, "registered", timeout=90)
    assert _held_once(simulator) == _held_once(second_simulator)
    assert (restarted.drop_dir / "done" / iso.name).exists()
    wait_for(lambda: not list((restarted.state_dir / "work").iterdir()), 10, "the work dir to go")


def test_a_refused_key_fails_that_target_only_with_a_banner_there_and_retry_target_registers_it(
        tmp_path, simulator, second_simulator, daemon_factory):
    second_simulator.inject("status", status=401, path="/boot-resources/", count=1000)
    daemon = daemon_factory(_two_targets(tmp_path / "site", simulator, second_simulator))
    iso = drop(_iso(tmp_path, "refused"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "failed")
    assert job["error"].startswith("MAAS site-b: MAAS rejected the API key (HTTP 401)")
    records = _registrations(daemon, iso.name)
    assert records["site-a"]["state"] == "registered" and records["site-b"]["state"] == "failed"
    assert _held_once(simulator)
    reason = (daemon.drop_dir / "failed" / f"{iso.name}.reason.txt").read_text()
    assert reason.startswith("MAAS site-b: MAAS rejected the API key")
    ident = f"esxi-watcher-{job['id']}"
    [banner] = wait_for(lambda: [n for n in second_simulator.notifications() if n["ident"] == ident], 20,
                        "the failure banner on site-b")
    assert banner["category"] == "error"
    assert f"esxi-watcher retry {job['id']} --target site-b" in banner["message"]
    assert [n["category"] for n in simulator.notifications() if n["ident"] == ident] == ["success"]

    second_simulator.clear_faults()  # the admin fixed the key
    result = daemon.cli("retry", str(job["id"]), "--target", "site-b")
    assert result.returncode == 0, result.stderr
    daemon.wait_for_state(iso.name, "registered", timeout=60)
    assert _held_once(second_simulator) == _held_once(simulator)
    assert (daemon.drop_dir / "done" / iso.name).exists()
    assert not (daemon.drop_dir / "failed" / f"{iso.name}.reason.txt").exists()
    [replaced] = wait_for(lambda: [n for n in second_simulator.notifications()
                                   if n["ident"] == ident and n["category"] == "success"], 20,
                          "the success banner replacing the failure one")
    assert [n["category"] for n in second_simulator.notifications() if n["ident"] == ident] == ["success"]
    assert len(_events(daemon, "job.building")) == 1
    wrong = daemon.cli("retry", str(job["id"]), "--target", "site-c")
    assert wrong.returncode == 2 and "no registration on target site-c" in wrong.stderr


def test_a_target_added_on_sighup_gets_the_images_already_registered_without_a_rebuild(
        tmp_path, simulator, second_simulator, daemon_factory):
    site = tmp_path / "site"
    config = write_config(site, simulator)
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "later"), daemon.drop_dir)
    daemon.wait_for_state(iso.name, "registered")
    assert [r["target"] for r in daemon.job_for(iso.name)["registrations"]] == ["default"]
    document = yaml.safe_load(config.read_text())
    document["maas"] = [{"name": "default", **document["maas"]},
                        {"name": "site-b", "url": second_simulator.url,
                         "api_key_file": str(_key_file(site, "site-b", second_simulator))}]
    config.write_text(yaml.safe_dump(document))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_registration(iso.name, "site-b", "registered", timeout=60)
    daemon.wait_for_state(iso.name, "registered")
    assert _held_once(second_simulator) == _held_once(simulator)
    assert len(_events(daemon, "job.building")) == 1
    [reloaded] = _events(daemon, "config.reloaded")
    assert "maas[site-b]" in reloaded["changed"]


def test_the_status_line_is_idle_soon_after_every_build(tmp_path, simulator, daemon_factory):
    """Only the build step writes its status slot, and nothing it started can write it once it is over."""
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    for number in range(4):
        iso = drop(_iso(tmp_path, f"idle{number}"), daemon.drop_dir)
        daemon.wait_for_state(iso.name, "registered")
        wait_for(lambda: daemon.statuses()[-1].startswith(f"idle: {number + 1} registered"), 3,
                 f"an idle status line after build {number + 1} (it says {daemon.statuses()[-1:]})")


def test_an_old_config_with_maas_retries_loads_with_one_notice(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, maas__retries=8))
    wait_for(lambda: "READY=1" in daemon.notifications, 30, "READY=1")
    [notice] = _events(daemon, "config.key_not_used")
    assert notice["level"] == "warning" and notice["notice"].startswith("At 'maas.retries': no longer used")


# ----- the parts, without a daemon --------------------------------------------------------------

def test_waits_double_from_the_minimum_to_the_maximum_and_spread():
    [target] = parse_config({"maas": {"retry_min_wait": "30s", "retry_max_wait": "10m"}}).targets
    longest = [wait_before_next_try(tries, target, chooser=lambda: 0.0) for tries in (1, 2, 3, 5, 6, 50, 10**6)]
    assert longest == [30, 60, 120, 480, 600, 600, 600]
    assert wait_before_next_try(2, target, chooser=lambda: 1.0) == 45  # a quarter shorter at most


def test_a_lease_that_ended_cannot_write_its_slot():
    activity = Activity()
    slot = activity.slot("builder")
    with slot.lease() as lease:
        lease.show("building x (3 min, installing)")
        assert activity.texts() == ["building x (3 min, installing)"]
    lease.show("building x (4 min, installing)")  # a console poll that comes late
    assert activity.texts() == []
    slot.show("waiting: no KVM")
    assert activity.texts() == ["waiting: no KVM"]


def _context(tmp_path, *names: str) -> Context:
    document = {"drop_dir": str(tmp_path / "drop"), "state_dir": str(tmp_path / "state"),
                "maas": [{"name": name, "url": f"http://{name}/MAAS/", "api_key_file": f"/etc/{name}.key"}
                         for name in names]}
    config = parse_config(document)
    config.drop_dir.mkdir(parents=True)
    config.state_dir.mkdir(parents=True)
    return Context(store=JobStore(config.db_path), config=config, stop_event=None)


def _built_job(context: Context, tmp_path, sha: str = "a" * 64):
    iso = context.config.drop_dir / f"{sha[:4]}.iso"
    iso.write_bytes(b"iso")
    artifact = tmp_path / f"{sha[:4]}.dd.gz"
    artifact.write_bytes(b"image")
    facts = {"esxi": True, "version": "8.0.2", "major": 8, "minor": 0, "patch": 2, "update": "U2",
             "build": 22380479, "vendor": None, "reason": None}
    job = context.store.add(state=State.QUEUED, iso=iso.name, iso_path=str(iso), sha256=sha, facts=facts)
    targets.plan(context, job)
    return context.store.update(job.id, state=State.BUILT, artifact=str(artifact))


def test_a_job_is_registered_once_every_target_holds_it_and_failed_only_when_none_still_works(tmp_path):
    context = _context(tmp_path, "site-a", "site-b")
    store = context.store
    job = _built_job(context, tmp_path)
    store.update_registration(job.id, "site-b", state=Target.FAILED, error="MAAS rejected the API key")
    assert targets.settle(context, job.id).state is State.BUILT  # site-a still works on it
    store.update_registration(job.id, "site-a", state=Target.REGISTERED)
    failed = targets.settle(context, job.id)
    assert failed.state is State.FAILED and failed.failed_stage is Step.REGISTER
    assert failed.error == "MAAS site-b: MAAS rejected the API key"
    assert Path(failed.iso_path).parent.name == "failed"
    store.update_registration(job.id, "site-b", state=Target.REGISTERED, error=None)
    registered = targets.settle(context, job.id)
    assert registered.state is State.REGISTERED


def test_names_are_decided_per_target_and_a_new_target_gets_the_kept_images(tmp_path):
    context = _context(tmp_path, "site-a")
    first = _built_job(context, tmp_path, "a" * 64)
    context.store.update_registration(first.id, "site-a", state=Target.REGISTERED)
    targets.settle(context, first.id)
    second = _built_job(context, tmp_path, "b" * 64)  # another ISO of the same version
    assert [r.resource for r in context.store.registrations(second.id)] == [f"{NAME}-bbbbbbbb"]
    more = parse_config({"maas": [{"name": name, "url": f"http://{name}/MAAS/", "api_key_file": f"/etc/{name}.key"}
                                  for name in ("site-a", "site-c")]})
    context.config = dataclasses.replace(context.config, targets=more.targets)  # what a SIGHUP does
    targets.plan_all(context)
    planned = {(r.job, r.target): r for r in context.store.registrations()}
    assert planned[(first.id, "site-c")].resource == NAME and planned[(first.id, "site-c")].state is Target.PENDING
    assert planned[(second.id, "site-c")].resource == f"{NAME}-bbbbbbbb"
    assert context.store.get(first.id).state is State.BUILT  # registering on site-c
