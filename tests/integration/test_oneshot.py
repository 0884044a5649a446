"""`esxi-watcher build ISO`: the real CLI as a child process, real packer with the test templates,
real HTTP to the MAAS simulator; beside a real daemon on the same configuration."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import drop, marker_of, no_processes_of, wait_for, write_config
from tests.isogen import make_esxi_iso, make_ubuntu_iso
from tests.paths import ROOT, TEMPLATES

BUILD = 22380479
NAME = f"esxi/8.0.2-{BUILD}"
SLOW_TEMPLATE = TEMPLATES / "slow-builder" / "vmware-esxi"
HANGING = ["packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "hang=1", "vmware-esxi.json"]


@pytest.fixture
def esxi_iso(tmp_path):
    (tmp_path / "src").mkdir()
    return make_esxi_iso(tmp_path / "src" / f"VMware-VMvisor-Installer-8.0U2-{BUILD}.x86_64.iso",
                         version="8.0U2", build=BUILD, payload_size=1 << 20)


def _site(tmp_path, simulator=None, **overrides) -> Path:
    return write_config(tmp_path / "site", simulator, **overrides)


def _command(config: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "esxi_watcher", "--config", str(config), "build", *arguments]


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def oneshot(config: Path, *arguments: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_command(config, *arguments), capture_output=True, text=True, cwd=cwd or ROOT,
                          env=_environment(), timeout=timeout, stdin=subprocess.DEVNULL)


def _state_dir(config: Path) -> Path:
    return config.parent / "state"


def _esxi_resources(simulator) -> list[str]:
    return [resource["name"] for resource in simulator.resources() if resource["name"].startswith("esxi/")]


def _nothing_left(config: Path, pid: int) -> None:
    """No process with the run's marker, no work dir or log of it."""
    assert no_processes_of(f"oneshot-{pid}") == []
    assert not (_state_dir(config) / "oneshot").exists()


def test_an_iso_is_built_and_registered_with_plain_lines_off_a_terminal(tmp_path, simulator, esxi_iso):
    config = _site(tmp_path, simulator)
    before = esxi_iso.read_bytes()
    result = oneshot(config, str(esxi_iso))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(f" registered {NAME} on default (boot resource " in line for line in lines), result.stdout
    assert any("(0 min, post-processing)" in line for line in lines)
    assert any(f"uploading {NAME} to default: 100%" in line for line in lines)
    assert "\r" not in result.stdout and "\x1b" not in result.stdout  # no terminal: plain lines
    disk = gzip.decompress(simulator.file_bytes(NAME))
    assert f"iso_sha256={hashlib.sha256(before).hexdigest()}".encode() in disk
    assert esxi_iso.read_bytes() == before  # the ISO is only read
    assert not (_state_dir(config) / "oneshot").exists()
    assert not (_state_dir(config) / "jobs.sqlite3").exists()  # no job recorded


def test_on_a_terminal_one_line_is_drawn_again(tmp_path, simulator, esxi_iso):
    config = _site(tmp_path, simulator)
    command = " ".join(_command(config, str(esxi_iso)))  # script(1) takes a command line; no spaces in these paths
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, cwd=ROOT,
                            env=_environment(), timeout=120, stdin=subprocess.DEVNULL)
    screen = result.stdout.decode()  # bytes: universal newlines would turn each \r into a line
    assert result.returncode == 0, screen
    assert "\r\x1b[K[0:00] building VMware-VMvisor-Installer-8.0U2-22380479.x86_64 (0 min, starting)" in screen
    assert f"[####################] uploading {NAME} to default: 100% (" in screen
    assert f"\r\x1b[Kregistered {NAME} on default" in screen


def test_no_register_keeps_the_image_here_and_never_overwrites(tmp_path, esxi_iso):
    config = _site(tmp_path)  # a MAAS nobody answers at: never asked
    here = tmp_path / "here"
    here.mkdir()
    result = oneshot(config, "--no-register", str(esxi_iso), cwd=here)
    assert result.returncode == 0, result.stdout + result.stderr
    image = here / "esxi-8.0.2-22380479.dd.gz"
    assert f"image kept (not registered): {image}" in result.stdout
    assert b"iso_sha256=" in gzip.decompress(image.read_bytes())
    assert os.listdir(here) == [image.name]

    again = oneshot(config, "--no-register", str(esxi_iso), cwd=here)
    assert again.returncode == 2
    assert again.stderr.strip() == (f"esxi-watcher: {image} exists: esxi-watcher never overwrites a file; remove it "
                                    "or give --output")
    assert b"iso_sha256=" in gzip.decompress(image.read_bytes())

    elsewhere = tmp_path / "out.dd.gz"
    assert oneshot(config, "--no-register", "--output", str(elsewhere), str(esxi_iso)).returncode == 0
    assert elsewhere.is_file()


def test_bad_input_exits_2_with_the_reason_and_changes_nothing(tmp_path, simulator, esxi_iso):
    config = _site(tmp_path, simulator)
    ubuntu = make_ubuntu_iso(tmp_path / "ubuntu.iso")
    before = ubuntu.read_bytes()
    result = oneshot(config, str(ubuntu))
    assert result.returncode == 2
    assert result.stderr.startswith(f"esxi-watcher: {ubuntu}: not an ESXi installer ISO: ")
    assert ubuntu.read_bytes() == before

    unknown = oneshot(config, "--target", "nowhere", str(esxi_iso))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "esxi-watcher: no MAAS target named 'nowhere' in the configuration (known: default)"
    assert oneshot(config, "--output", str(tmp_path / "x.dd.gz"), str(esxi_iso)).returncode == 2
    assert _esxi_resources(simulator) == []


def test_maas_away_says_so_and_exits_1(tmp_path, esxi_iso):
    config = _site(tmp_path, None)  # the key file: any key; nobody listens at the URL
    key_file = tmp_path / "site" / "maas-api-key"
    key_file.write_text("aaaaaaaaaaaaaaaaaa:bbbbbbbbbbbbbbbbbb:cccccccccccccccccccccccccccccccc\n")
    key_file.chmod(0o600)
    result = oneshot(config, str(esxi_iso))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MAAS default is away: " in result.stdout and "run again once it answers" in result.stdout
    assert "cccccccccccccccccccccccccccccccc" not in result.stdout + result.stderr


def test_sigint_mid_build_leaves_nothing_behind(tmp_path, simulator, esxi_iso):
    config = _site(tmp_path, simulator, build__command=HANGING)
    process = subprocess.Popen(_command(config, str(esxi_iso)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT, env=_environment(), stdin=subprocess.DEVNULL)
    marker = f"oneshot-{process.pid}"
    build_log = _state_dir(config) / "oneshot" / f"{marker}.log"
    wait_for(lambda: build_log.exists() and "shape-disk: hanging" in build_log.read_text(), 60, "the build to hang")
    assert no_processes_of(marker)  # the build runs, with the run's marker
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "interrupted" in output
    _nothing_left(config, process.pid)
    assert _esxi_resources(simulator) == []
    assert esxi_iso.exists()


def test_the_next_run_cleans_up_after_a_run_killed_9(tmp_path, simulator, esxi_iso):
    killed_config = _site(tmp_path, simulator, build__command=HANGING)
    killed = subprocess.Popen(_command(killed_config, str(esxi_iso)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=ROOT, env=_environment(), stdin=subprocess.DEVNULL)
    marker = f"oneshot-{killed.pid}"
    build_log = _state_dir(killed_config) / "oneshot" / f"{marker}.log"
    wait_for(lambda: build_log.exists() and "shape-disk: hanging" in build_log.read_text(), 60, "the build to hang")
    killed.kill()
    killed.wait()
    assert no_processes_of(marker) and (_state_dir(killed_config) / "oneshot" / marker).is_dir()

    config = write_config(tmp_path / "site", simulator, build__template_dir=str(TEMPLATES / "file-builder" /
                                                                                "vmware-esxi"))
    result = oneshot(config, str(esxi_iso))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"cleaned up after killed runs: {marker}" in result.stdout
    assert no_processes_of(marker) == []
    assert os.listdir(_state_dir(config) / "oneshot") == [f"{marker}.log"]  # its log stays, to read


def test_sigterm_mid_upload_deletes_the_resource_it_made(tmp_path, simulator, esxi_iso):
    config = _site(tmp_path, simulator)
    simulator.inject("delay", method="PUT", path="/upload/", seconds=8)
    process = subprocess.Popen(_command(config, str(esxi_iso)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT, env=_environment(), stdin=subprocess.DEVNULL)
    wait_for(lambda: any(r["name"] == NAME for r in simulator.resources()), 60, "the resource to be created")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert _esxi_resources(simulator) == []
    _nothing_left(config, process.pid)


def test_a_daemon_and_a_oneshot_on_one_host_build_one_at_a_time_and_both_finish(tmp_path, simulator,
                                                                                  daemon_factory, esxi_iso):
    config = _site(tmp_path, simulator, build__template_dir=str(SLOW_TEMPLATE))
    daemon = daemon_factory(config)
    other = make_esxi_iso(tmp_path / "src" / "other.iso", version="8.0U3", build=24022510, payload_size=1 << 16)
    dropped = drop(other, daemon.drop_dir)
    wait_for(lambda: (daemon.job_for(dropped.name) or {}).get("state") == "building", 30, "the daemon's build")
    daemon_builders = no_processes_of()
    assert daemon_builders and all(not marker_of(pid).startswith("oneshot-") for pid in daemon_builders)

    result = oneshot(config, str(esxi_iso), timeout=180)  # while the daemon holds its folder locks and store
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"waiting for the build of esxi-watcher pid {daemon.process.pid} to finish" in result.stdout
    job = daemon.wait_for_state(dropped.name, "registered", timeout=120)
    assert job["build_attempts"] == 1  # the one-shot never ended the daemon's build
    names = {r["name"] for r in simulator.resources()}
    assert {NAME, "esxi/8.0.3-24022510"} <= names
    assert not (_state_dir(config) / "oneshot").exists()
