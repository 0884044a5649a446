"""Configuration: every problem reported at once by dotted key; the example file is generated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from esxi_watcher.config import example_yaml, load_config, parse_config, parse_duration, parse_size
from esxi_watcher.errors import ConfigError
from tests.paths import ROOT


@pytest.mark.parametrize("text, seconds", [(90, 90), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("2h", 7200)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", -5, 0, True, "5m garbage"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sizes():
    assert parse_size("64GiB") == 64 << 30
    assert parse_size("500M") == 500 << 20
    assert parse_size(1024) == 1024


def test_defaults_fill_everything():
    config = parse_config({})
    assert config.drop_dir == Path("/var/lib/esxi-drop")
    assert config.build.artifact == "vmware-esxi.dd.gz"
    assert config.build.timeout == 7200
    [target] = config.targets
    assert target.name == "default" and target.name_template == "esxi/{version}-{build}{vendor_suffix}"
    assert target.architecture == "amd64/generic" and target.retry_max_wait == 600


def test_every_problem_is_reported_at_once_by_dotted_key():
    document = {
        "drop_dir": "relative/path",
        "bogus": 1,
        "build": {"timeout": "forever", "command": "make ISO=x", "colour": "red"},
        "maas": {"url": "localhost", "name_template": "vmware-esxi-{version}", "colour": "blue"},
        "log": {"format": "xml"},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(document, "test.yaml")
    problems = raised.value.problems
    keys = [problem.split("'")[1] for problem in problems]
    assert keys == ["bogus", "build.colour", "drop_dir", "build.command", "build.timeout", "log.format",
                    "maas.colour", "maas.url", "maas.name_template"]
    assert any("esxi/<release>" in problem for problem in problems)


def test_command_must_be_an_argv_list_with_iso():
    config = parse_config({"build": {"command": ["make", "ISO={iso}"]}})
    assert config.build.command == ("make", "ISO={iso}")
    with pytest.raises(ConfigError, match="placeholder"):
        parse_config({"build": {"command": ["make"]}})


def test_unreadable_or_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("drop_dir: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_example_file_is_generated_and_loads():
    assert (ROOT / "config.example.yaml").read_text() == example_yaml(), \
        "regenerate: esxi-watcher config-example > config.example.yaml"
    assert parse_config(yaml.safe_load(example_yaml())) == parse_config({})


def test_a_list_of_targets_each_with_its_own_keys():
    config = parse_config({"maas": [
        {"name": "site-a", "url": "http://a:5240/MAAS", "api_key_file": "/etc/a.key"},
        {"name": "site-b", "url": "http://b:5240/MAAS/", "api_key_file": "/etc/b.key", "retry_max_wait": "30m",
         "name_template": "esxi/{version}-{build}-b"}]})
    assert [(t.name, t.url, t.api_key_file, t.retry_max_wait) for t in config.targets] == [
        ("site-a", "http://a:5240/MAAS/", Path("/etc/a.key"), 600),
        ("site-b", "http://b:5240/MAAS/", Path("/etc/b.key"), 1800)]
    assert config.target("site-b").name_template == "esxi/{version}-{build}-b"


def test_targets_are_checked_by_dotted_key_and_their_names_are_unique_and_safe():
    document = {"maas": [
        {"name": "site-a", "url": "http://a/MAAS/", "api_key_file": "/etc/a.key"},
        {"name": "site-b", "url": "ftp://b", "api_key_file": "/etc/b.key", "notify": "yes"},
        {"name": "site-a", "url": "http://c/MAAS/", "api_key_file": "/etc/c.key"},
        {"name": "../etc", "url": "http://d/MAAS/"},
        "site-e"]}
    with pytest.raises(ConfigError) as raised:
        parse_config(document, "test.yaml")
    assert raised.value.problems == [
        "At 'maas[site-b].url': 'ftp://b' is not an http(s) URL",
        "At 'maas[site-b].notify': must be true or false",
        "At 'maas[3].name': '../etc' is not a target name: 1 to 63 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
        "At 'maas[3].api_key_file': required in each item of a list of targets",
        "At 'maas[4]': must be a mapping with name, url and api_key_file",
        "At 'maas[site-a].name': 'site-a' names another target too: each target needs its own name"]
    with pytest.raises(ConfigError, match="At 'maas': must be a mapping"):
        parse_config({"maas": "http://a/MAAS/"})


def test_maas_retries_still_loads_with_one_notice():
    config = parse_config({"maas": {"retries": 8, "url": "http://a/MAAS/"}})
    assert config == parse_config({"maas": {"url": "http://a/MAAS/"}})
    [notice] = config.notices
    assert notice.startswith("At 'maas.retries': no longer used: a registration waits for MAAS as long as it takes")


def test_a_reload_names_the_targets_added_removed_and_changed():
    from esxi_watcher.config import reloaded

    site = {"name": "site-a", "url": "http://a/MAAS/", "api_key_file": "/etc/a.key"}
    running = parse_config({"maas": [site, {**site, "name": "site-b"}]})
    loaded = parse_config({"maas": [{**site, "notify": False}, {**site, "name": "site-c"}]})
    config, kept, changed = reloaded(running, loaded)
    assert kept == [] and changed == ["maas[site-b]", "maas[site-a].notify", "maas[site-c]"]
    assert [target.name for target in config.targets] == ["site-a", "site-c"]
