"""Signals: SIGHUP re-reads the configuration, SIGQUIT stops cleanly, signals that would kill by
default are ignored; none of them orphans a running build."""

from __future__ import annotations

import signal
import time

import yaml

from tests.harness import drop, no_processes_of, wait_for, write_config
from tests.test_faults import NAME, _iso, assert_registered_once

# The test template's build, three seconds slower: time to signal the daemon while it runs.
SLOW = ["sh", "-c", 'sleep 3 && exec packer build -var "vmware_esxi_iso_path=$1" vmware-esxi.json',
        "slow-build", "{iso}"]


def _ready(daemon) -> None:
    wait_for(lambda: "READY=1" in daemon.notifications, 30, "the daemon to tell systemd it is ready")


def _events(daemon, name: str) -> list[dict]:
    return [event for event in daemon.log_events() if event.get("event") == name]


def _rewrite(config, **changes) -> None:
    document = yaml.safe_load(config.read_text())
    for dotted, value in changes.items():
        node = document
        *parents, leaf = dotted.split("__")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    config.write_text(yaml.safe_dump(document))


def test_sighup_while_idle_and_while_building_keeps_the_daemon_and_the_build(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__command=SLOW))
    _ready(daemon)
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _events(daemon, "config.reloaded"), 10, "the reload to be logged")
    assert daemon.alive()
    iso = drop(_iso(tmp_path, "hup"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "building")
    wait_for(lambda: no_processes_of(daemon.marker(job["id"])), 10, "the build to start")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(_events(daemon, "config.reloaded")) == 2, 10, "the second reload to be logged")
    assert daemon.alive() and no_processes_of(daemon.marker(job["id"]))
    assert_registered_once(simulator, daemon, iso)
    assert daemon.alive()
    reloads = [line for line in daemon.notifications if line in ("RELOADING=1", "READY=1")]
    assert reloads[-4:] == ["RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]


def test_sighup_applies_a_changed_config_from_the_next_iso_on(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    first = drop(_iso(tmp_path, "before"), daemon.drop_dir)
    assert_registered_once(simulator, daemon, first)
    _rewrite(config, maas__name_template="esxi/{version}-{build}-lab", build__timeout="90s",
             state_dir=str(tmp_path / "elsewhere"))
    daemon.process.send_signal(signal.SIGHUP)
    [reloaded] = wait_for(lambda: _events(daemon, "config.reloaded"), 10, "the reload to be logged")
    assert "maas.name_template" in reloaded["changed"] and "build.timeout" in reloaded["changed"]
    assert "state_dir" not in reloaded["changed"]
    [restart] = _events(daemon, "config.restart_needed")
    assert restart["keys"] == ["state_dir"]
    second = drop(_iso(tmp_path, "after"), daemon.drop_dir)
    job = daemon.wait_for_state(second.name, "registered", timeout=90)
    assert job["resource"] == "esxi/8.0.2-22380479-lab"
    assert not (tmp_path / "elsewhere").exists()  # the old state dir is still the one in use


def test_sighup_with_a_broken_config_logs_one_error_and_keeps_going(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    _ready(daemon)
    good = config.read_text()
    config.write_text(good + "build:\n  timeout: [unclosed\n")
    daemon.process.send_signal(signal.SIGHUP)
    [failed] = wait_for(lambda: _events(daemon, "config.reload_failed"), 10, "the failed reload to be logged")
    assert failed["level"] == "error" and str(config) in failed["error"]
    config.write_text(good.replace("timeout: 60s", "timeout: 0"))  # valid YAML, an invalid value
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(_events(daemon, "config.reload_failed")) == 2, 10, "the second failed reload")
    assert "At 'build.timeout'" in _events(daemon, "config.reload_failed")[1]["error"]
    assert daemon.alive() and not _events(daemon, "config.reloaded")
    iso = drop(_iso(tmp_path, "still"), daemon.drop_dir)
    assert_registered_once(simulator, daemon, iso)


def test_sigusr1_sigusr2_and_sigalrm_are_ignored(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    _ready(daemon)
    for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        daemon.process.send_signal(number)
    wait_for(lambda: len(_events(daemon, "signal.ignored")) == 3, 10, "the signals to be logged")
    assert {event["signal"] for event in _events(daemon, "signal.ignored")} == {"SIGUSR1", "SIGUSR2", "SIGALRM"}
    iso = drop(_iso(tmp_path, "usr"), daemon.drop_dir)
    assert_registered_once(simulator, daemon, iso, NAME)


def test_sigquit_mid_build_stops_cleanly_with_no_build_left(tmp_path, simulator, daemon_factory):
    hanging = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]
    config = write_config(tmp_path / "site", simulator, build__command=hanging)
    daemon = daemon_factory(config)
    iso = drop(_iso(tmp_path, "quit"), daemon.drop_dir)
    job = daemon.wait_for_state(iso.name, "building")
    marker = daemon.marker(job["id"])
    wait_for(lambda: no_processes_of(marker), 30, "the build to start")
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGQUIT)
    assert daemon.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 20
    assert no_processes_of(marker) == []
    assert daemon.job_for(iso.name)["state"] == "queued"  # built again on the next start


def test_reloaded_keeps_the_folders_and_takes_the_rest():
    from esxi_watcher.config import parse_config, reloaded

    running = parse_config({"drop_dir": "/srv/drop", "state_dir": "/srv/state"})
    loaded = parse_config({"drop_dir": "/srv/new-drop", "state_dir": "/srv/state",
                           "watch": {"settle": "9s", "rescan_interval": "1m"},
                           "maas": {"name_template": "esxi/{version}-lab"}, "log": {"level": "debug"}})
    config, kept, changed = reloaded(running, loaded)
    assert kept == ["drop_dir", "watch.settle"]
    assert changed == ["watch.rescan_interval", "maas.name_template", "log.level"]
    assert config.drop_dir == running.drop_dir and config.watch.settle == running.watch.settle
    assert config.targets[0].name_template == "esxi/{version}-lab" and config.log.level == "debug"
