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
    assert config.maas.name_template == "esxi/{version}-{build}{vendor_suffix}"
    assert config.maas.architecture == "amd64/generic"


def test_every_problem_is_reported_at_once_by_dotted_key():
    document = {
        "drop_dir": "relative/path",
        "bogus": 1,
        "build": {"timeout": "forever", "command": "make ISO=x", "colour": "red"},
        "maas": {"url": "localhost", "name_template": "vmware-esxi-{version}", "retries": -1},
        "log": {"format": "xml"},
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(document, "test.yaml")
    problems = raised.value.problems
    keys = [problem.split("'")[1] for problem in problems]
    assert keys == ["bogus", "build.colour", "drop_dir", "build.command", "build.timeout", "maas.url",
                    "maas.name_template", "maas.retries", "log.format"]
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
