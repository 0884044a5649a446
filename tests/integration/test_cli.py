"""The command line as an admin runs it: inspect, status, retry, forget, config-example."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.harness import ROOT, write_config
from tests.isogen import make_esxi_iso, make_ubuntu_iso


def cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esxi_watcher", *arguments], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("version, joliet, expected", [
    ("6.7", False, {"version": "6.7.0", "major": 6, "minor": 7, "patch": 0, "update": None, "build": 8169922}),
    ("7.0U3", True, {"version": "7.0.3", "major": 7, "minor": 0, "patch": 3, "update": "U3", "build": 19482537}),
    ("8.0U2", False, {"version": "8.0.2", "major": 8, "minor": 0, "patch": 2, "update": "U2", "build": 22380479}),
    ("8.0U2", True, {"version": "8.0.2", "major": 8, "minor": 0, "patch": 2, "update": "U2", "build": 22380479}),
])
def test_inspect_json(tmp_path, version, joliet, expected):
    iso = make_esxi_iso(tmp_path / "x.iso", version=version, build=expected["build"], joliet_rr=joliet)
    result = cli("inspect", str(iso), "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["esxi"] is True and facts["vendor"] is None and facts["reason"] is None
    assert {key: facts[key] for key in expected} == expected


def test_inspect_refuses_ubuntu_with_one_line(tmp_path):
    iso = make_ubuntu_iso(tmp_path / "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")
    result = cli("inspect", str(iso), "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["esxi"] is False
    assert result.stderr.count("\n") == 1 and "not an ESXi installer ISO" in result.stderr
    plain = cli("inspect", str(iso))
    assert plain.returncode == 2 and plain.stdout == ""


def test_inspect_plain_text(tmp_path):
    iso = make_esxi_iso(tmp_path / "dell.iso", version="8.0U3b", build=24280767, vendor="Dell")
    result = cli("inspect", str(iso))
    assert result.returncode == 0
    assert result.stdout.strip() == "VMware ESXi 8.0U3b build 24280767 (version 8.0.3, Dell image)"


def test_status_before_the_daemon_ran(tmp_path):
    config = write_config(tmp_path / "site")
    result = cli("--config", str(config), "status", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    missing = cli("--config", str(config), "retry", "3")
    assert missing.returncode == 2 and "daemon has not run yet" in missing.stderr


def test_config_example_matches_the_shipped_file():
    result = cli("config-example")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "config.example.yaml").read_text()


def test_status_shows_jobs_at_work_and_the_newest_finished_and_all_on_request(tmp_path):
    from esxi_watcher.cli import STATUS_FINISHED_SHOWN
    from esxi_watcher.store import JobStore, State

    config = write_config(tmp_path / "site")
    (tmp_path / "site" / "state").mkdir(parents=True)
    store = JobStore(tmp_path / "site" / "state" / "jobs.sqlite3")
    for number in range(STATUS_FINISHED_SHOWN + 7):
        store.add(state=State.REJECTED, iso=f"old-{number}.iso", iso_path=f"/d/old-{number}.iso", error="no")
    queued = store.add(state=State.QUEUED, iso="waiting.iso", iso_path="/d/waiting.iso", sha256="4" * 64)
    store.close()
    table = cli("--config", str(config), "status").stdout.splitlines()
    assert len(table) == 1 + STATUS_FINISHED_SHOWN + 1 + 1  # header, finished, the queued job, footer
    assert any("waiting.iso" in line for line in table) and not any("old-0.iso" in line for line in table)
    assert table[-1] == "(7 older finished jobs not shown: `esxi-watcher status --all`)"
    rows = json.loads(cli("--config", str(config), "status", "--json").stdout)
    assert len(rows) == STATUS_FINISHED_SHOWN + 1 and rows[-1]["id"] == queued.id
    everything = json.loads(cli("--config", str(config), "status", "--json", "--all").stdout)
    assert len(everything) == STATUS_FINISHED_SHOWN + 8
