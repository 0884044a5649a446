"""What SIGHUP takes from a changed configuration."""

from __future__ import annotations


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
