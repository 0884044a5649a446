"""Retention (`maas.keep`) through the whole daemon and the MAAS simulator: per release line the
newest images stay, an older one goes once a newer one is complete, and never a resource made by
hand, one MAAS reports recently deployed, or anything when keep is unset."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from esxi_watcher import maas
from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso

TARGET = "default"
OLD, NEW, HAND = "esxi/7.0.3-19482537", "esxi/7.0.3-21424296", "esxi/7.0.3-99999999"


def _iso(tmp_path: Path, version: str, build: int, vendor: str | None = None) -> Path:
    folder = tmp_path / "src" / f"{version}-{build}-{vendor}"
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / f"ESXi-{version}-{build}{'-' + vendor if vendor else ''}.iso", version=version,
                         build=build, vendor=vendor)


def _names(simulator) -> set[str]:
    return {resource["name"] for resource in simulator.resources()}


def _events(daemon, name: str) -> list[dict]:
    return [event for event in daemon.log_events() if event.get("event") == name]


def _registration(daemon, iso: Path) -> dict:
    [record] = daemon.job_for(iso.name)["registrations"]
    return record


def _registered(daemon, iso: Path) -> dict:
    daemon.wait_for_state(iso.name, "registered", timeout=90)
    return _registration(daemon, iso)


def _upload_by_hand(tmp_path: Path, simulator, name: str) -> None:
    """An admin's own image, uploaded outside the daemon (its store knows nothing of it)."""
    image = tmp_path / "by-hand.dd.gz"
    image.write_bytes(b"\x1f\x8b an image made by hand\n")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    endpoint = maas.Endpoint(url=simulator.url, api_key=simulator.api_key)
    asyncio.run(maas.register_image(endpoint, name=name, title="by hand", architecture="amd64/generic",
                                    artifact=image, sha256=digest, size=image.stat().st_size))


def _creates(simulator) -> int:
    return len([r for r in simulator.requests if r["method"] == "POST" and r["path"].endswith("/boot-resources/")])


def _passes(daemon) -> int:
    return len(_events(daemon, "retention.pass"))


def _reload(daemon, config: Path, **maas_keys) -> None:
    document = yaml.safe_load(config.read_text())
    document["maas"].update(maas_keys)
    config.write_text(yaml.safe_dump(document))
    daemon.process.send_signal(signal.SIGHUP)



def _register_old_and_new(tmp_path: Path, daemon) -> tuple[Path, Path]:
    """Drop the older 7.0 ISO, then the newer one, each registered before the next."""
    old, new = _iso(tmp_path, "7.0U3", 19482537), _iso(tmp_path, "7.0U3", 21424296)
    for iso in (old, new):
        drop(iso, daemon.drop_dir)
        _registered(daemon, iso)
    return old, new

def test_keep_1_deletes_the_older_70_only_once_the_newer_is_complete_and_never_a_hand_made_one(
        tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, maas__keep=1)
    daemon = daemon_factory(config)
    old = _iso(tmp_path, "7.0U3", 19482537)
    drop(old, daemon.drop_dir)
    assert _registered(daemon, old)["created_resource"] is True
    _upload_by_hand(tmp_path, simulator, HAND)  # a similar name, newer build: still not ours

    simulator.inject("delay", seconds=6, method="PUT", path="/upload/")
    new = _iso(tmp_path, "7.0U3", 21424296)
    drop(new, daemon.drop_dir)
    daemon.wait_for_registration(new.name, TARGET, "uploading", timeout=90)
    wait_for(lambda: NEW in _names(simulator), 30, "the newer image's resource in MAAS")
    [incomplete] = [r for r in simulator.resources() if r["name"] == NEW]
    assert not any(s["complete"] for s in incomplete["sets"].values())
    assert OLD in _names(simulator)  # the newer one is not complete yet: the older stays

    _registered(daemon, new)
    removed = daemon.wait_for_registration(old.name, TARGET, "removed", timeout=60)
    assert _names(simulator) >= {NEW, HAND} and OLD not in _names(simulator)
    assert removed["removal"].startswith(f"deleted resource {removed['resource_id']} ({OLD} set ")
    assert removed["removal"].endswith(f": keep 1 of ESXi 7.0 on {TARGET}, newer: {NEW}")
    [deleted] = _events(daemon, "retention.deleted")
    assert deleted["resource"] == OLD and deleted["removal"] == removed["removal"]
    assert daemon.job_for(old.name)["state"] == "registered"  # the job's outcome stays
    assert "removed: deleted resource" in daemon.cli("status").stdout
    # Removed from its only target: its kept image file goes too; the newer one's stays.
    old_image = daemon.state_dir / "artifacts" / f"{daemon.job_for(old.name)['id']}.dd.gz"
    wait_for(lambda: daemon.job_for(old.name)["artifact"] is None, 20, "the removed image's file deleted")
    assert not old_image.exists() and Path(daemon.job_for(new.name)["artifact"]).is_file()

    # A restart neither uploads the removed image again nor touches the hand-made one.
    creates, passes = _creates(simulator), len(_events(daemon, "retention.pass"))
    daemon.stop()
    daemon = daemon_factory(config)
    wait_for(lambda: len(_events(daemon, "retention.pass")) > passes, 30, "a pass after the restart")
    assert _creates(simulator) == creates
    assert _registration(daemon, old)["state"] == "removed"
    assert _names(simulator) >= {NEW, HAND} and OLD not in _names(simulator)
    retry = daemon.cli("retry", str(daemon.job_for(old.name)["id"]), "--target", TARGET)
    assert retry.returncode != 0 and "removed from target default by retention" in retry.stderr


def test_an_older_image_deployed_recently_is_kept_until_the_mark_is_old(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, maas__keep=1)
    daemon = daemon_factory(config)
    old = _iso(tmp_path, "7.0U3", 19482537)
    drop(old, daemon.drop_dir)
    _registered(daemon, old)
    assert simulator.mark_deployed(OLD) == 1
    new = _iso(tmp_path, "7.0U3", 21424296)
    drop(new, daemon.drop_dir)
    _registered(daemon, new)

    kept = wait_for(lambda: _registration(daemon, old)["kept"], 30, "the reason the older image is kept")
    assert "MAAS reports it deployed at" in kept and "within keep_deployed_within (30d)" in kept
    assert _registration(daemon, old)["state"] == "registered" and OLD in _names(simulator)

    passes = _passes(daemon)
    _reload(daemon, config)  # another pass, same answer: recorded and logged once
    wait_for(lambda: _passes(daemon) > passes, 30, "another pass")
    wait_for(lambda: _events(daemon, "retention.kept"), 30, "the log of the kept image")
    assert len(_events(daemon, "retention.kept")) == 1

    simulator.mark_deployed(OLD, when=datetime.now(timezone.utc) - timedelta(days=31))
    _reload(daemon, config)
    removed = daemon.wait_for_registration(old.name, TARGET, "removed", timeout=60)
    assert OLD not in _names(simulator) and removed["kept"] is None


def test_a_shorter_window_lets_a_deployed_image_go(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, maas__keep=1)
    daemon = daemon_factory(config)
    old, new = _iso(tmp_path, "7.0U3", 19482537), _iso(tmp_path, "7.0U3", 21424296)
    drop(old, daemon.drop_dir)
    _registered(daemon, old)
    simulator.mark_deployed(OLD, when=datetime.now(timezone.utc) - timedelta(hours=2))
    drop(new, daemon.drop_dir)
    _registered(daemon, new)
    wait_for(lambda: _registration(daemon, old)["kept"], 30, "the older image kept as deployed")
    _reload(daemon, config, keep_deployed_within="1h")
    daemon.wait_for_registration(old.name, TARGET, "removed", timeout=60)
    assert OLD not in _names(simulator)


def test_lines_are_major_minor_and_vendor(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, maas__keep=1)
    daemon = daemon_factory(config)
    isos = [_iso(tmp_path, "7.0U3", 19482537), _iso(tmp_path, "8.0U2", 22380479),
            _iso(tmp_path, "7.0U3", 18644231, vendor="Dell"), _iso(tmp_path, "7.0U3", 21424296)]
    for iso in isos:
        drop(iso, daemon.drop_dir)
        _registered(daemon, iso)
    daemon.wait_for_registration(isos[0].name, TARGET, "removed", timeout=60)
    assert [_registration(daemon, iso)["state"] for iso in isos[1:]] == ["registered"] * 3
    assert _names(simulator) >= {"esxi/8.0.2-22380479", "esxi/7.0.3-18644231-dell", NEW}
    assert OLD not in _names(simulator)
    assert len(_events(daemon, "retention.deleted")) == 1


def test_keep_unset_deletes_nothing(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    old, new = _register_old_and_new(tmp_path, daemon)
    _reload(daemon, config)
    wait_for(lambda: _events(daemon, "config.reloaded"), 30, "the reload")
    assert _names(simulator) >= {OLD, NEW}
    assert _registration(daemon, old)["state"] == "registered"
    assert not [event for event in daemon.log_events() if str(event.get("event", "")).startswith("retention.")]


def test_maas_away_during_the_pass_changes_nothing_and_the_next_pass_deletes(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, maas__keep=1)
    daemon = daemon_factory(config)
    old, new = _iso(tmp_path, "7.0U3", 19482537), _iso(tmp_path, "7.0U3", 21424296)
    drop(old, daemon.drop_dir)
    _registered(daemon, old)
    simulator.inject("status", status=503, count=50, method="DELETE")
    drop(new, daemon.drop_dir)
    _registered(daemon, new)
    wait_for(lambda: _events(daemon, "retention.waiting_for_maas"), 30, "the pass to meet MAAS away")
    assert _registration(daemon, old)["state"] == "registered" and OLD in _names(simulator)
    assert daemon.job_for(new.name)["state"] == "registered"
    simulator.clear_faults()
    _reload(daemon, config)
    daemon.wait_for_registration(old.name, TARGET, "removed", timeout=60)
    assert OLD not in _names(simulator)


def test_an_image_added_to_a_resource_made_by_hand_under_its_name_is_never_deleted(tmp_path, simulator,
                                                                                   daemon_factory):
    """The name was in MAAS before our upload (an admin's resource): our set went into it, the
    store records that we did not create it, and retention leaves the resource alone."""
    _upload_by_hand(tmp_path, simulator, OLD)
    config = write_config(tmp_path / "site", simulator, maas__keep=1)
    daemon = daemon_factory(config)
    old, new = _iso(tmp_path, "7.0U3", 19482537), _iso(tmp_path, "7.0U3", 21424296)
    drop(old, daemon.drop_dir)
    assert _registered(daemon, old)["created_resource"] is False
    drop(new, daemon.drop_dir)
    assert _registered(daemon, new)["created_resource"] is True
    kept = wait_for(lambda: _registration(daemon, old)["kept"], 30, "the reason the older image is kept")
    assert "was not created by esxi-watcher" in kept
    [resource] = [r for r in simulator.resources() if r["name"] == OLD]
    assert len(resource["sets"]) == 2 and not _events(daemon, "retention.deleted")


def test_keep_2_of_three_dropped_at_once_removes_only_the_oldest_build(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, maas__keep=2)
    daemon = daemon_factory(config)
    builds = (21424296, 19482537, 24022510)  # dropped out of order: newness is the build, not the drop
    isos = [_iso(tmp_path, "7.0U3", build) for build in builds]
    for iso in isos:
        drop(iso, daemon.drop_dir)
    for iso in isos:
        _registered(daemon, iso)
    removed = daemon.wait_for_registration(isos[1].name, TARGET, "removed", timeout=60)
    assert removed["resource"] == OLD and "keep 2 of ESXi 7.0" in removed["removal"]
    assert [_registration(daemon, iso)["state"] for iso in (isos[0], isos[2])] == ["registered"] * 2
    assert _names(simulator) >= {NEW, "esxi/7.0.3-24022510"} and OLD not in _names(simulator)


def test_nothing_older_goes_while_the_newest_is_missing_from_maas(tmp_path, simulator, daemon_factory):
    """An admin deleted the newest image by hand: the older one is all that is left, and stays."""
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    old, new = _register_old_and_new(tmp_path, daemon)
    simulator.store.delete_resource(_registration(daemon, new)["resource_id"])
    _reload(daemon, config, keep=1)
    kept = wait_for(lambda: _registration(daemon, old)["kept"], 30, "the reason the older image is kept")
    assert f"{NEW} (resource" in kept and "is not complete in MAAS" in kept
    assert OLD in _names(simulator) and not _events(daemon, "retention.deleted")


def test_only_the_target_with_keep_deletes(tmp_path, simulator, daemon_factory):
    from tests.maas_simulator import MaasSimulator

    with MaasSimulator(tmp_path / "maas-b", mode="3.8") as site_b:
        config = write_config(tmp_path / "site", simulator)
        document = yaml.safe_load(config.read_text())
        key_b = tmp_path / "site" / "site-b.key"
        key_b.write_text(site_b.api_key + "\n")
        key_b.chmod(0o600)
        document["maas"] = [{**document["maas"], "name": "site-a", "keep": 1},
                            {"name": "site-b", "url": site_b.url, "api_key_file": str(key_b)}]
        config.write_text(yaml.safe_dump(document))
        daemon = daemon_factory(config)
        old, new = _iso(tmp_path, "7.0U3", 19482537), _iso(tmp_path, "7.0U3", 21424296)
        for iso in (old, new):
            drop(iso, daemon.drop_dir)
            daemon.wait_for_state(iso.name, "registered", timeout=90)
        daemon.wait_for_registration(old.name, "site-a", "removed", timeout=60)
        assert OLD not in _names(simulator) and _names(site_b) >= {OLD, NEW}
        assert daemon.wait_for_registration(old.name, "site-b", "registered")["kept"] is None
        assert daemon.job_for(old.name)["state"] == "registered"
        assert Path(daemon.job_for(old.name)["artifact"]).is_file()  # site-b still holds it
