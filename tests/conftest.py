"""Shared fixtures: a MAAS simulator and the daemon as a real child process (see tests/harness.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import DaemonProcess

os.environ.setdefault("CHECKPOINT_DISABLE", "1")


@pytest.fixture
def simulator(tmp_path):
    from tests.maas_simulator import MaasSimulator

    with MaasSimulator(tmp_path / "maas", mode="3.8") as running:
        yield running


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[DaemonProcess] = []

    def make(config_path: Path) -> DaemonProcess:
        daemon = DaemonProcess(config_path).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.shut_down()


@pytest.fixture
def small_state_dir(tmp_path):
    """The site's state dir on an 8 MiB tmpfs: too small for a build (tests/harness.write_config's layout)."""
    state = tmp_path / "site" / "state"
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], check=True)
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)
