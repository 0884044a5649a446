"""The parts the benchmarks run for real: the MAAS simulator as its own process, the daemon, files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.common import PYTHON, ROOT
from tests.harness import DaemonProcess, write_config


class SimulatorProcess:
    """`python -m tests.maas_simulator` in its own process, so its CPU is not the client's."""

    def __init__(self, folder: Path, mode: str = "3.8", in_memory: bool = False):
        """in_memory: keep the region's files on tmpfs. This machine's disk writes new files at a few
        hundred MB/s: with the uploaded bytes on it, every client would measure the disk."""
        self.folder = Path(folder)
        self.mode = mode
        self.key_file = self.folder / "maas-api-key"
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.state_dir = self.folder / "state"
        if in_memory and shutil.disk_usage("/dev/shm").free > 6 << 30:
            self.state_dir = Path("/dev/shm") / f"esxi-watcher-bench-{os.getpid()}-{self.folder.name}"

    def __enter__(self) -> SimulatorProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [PYTHON, "-m", "tests.maas_simulator", "--state-dir", str(self.state_dir),
             "--mode", self.mode, "--api-key-file", str(self.key_file)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the MAAS simulator did not start")
        return self

    @property
    def api_key(self) -> str:
        return self.key_file.read_text().strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def state(self) -> dict:
        with urllib.request.urlopen(self.url + "_sim/state", timeout=30) as answer:
            return json.loads(answer.read())

    def __exit__(self, *exc_info) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.state_dir, ignore_errors=True)


class Site:
    """A daemon site (config, drop dir, state dir) and the daemon running it."""

    def __init__(self, folder: Path, simulator: SimulatorProcess | None = None, **overrides):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if simulator is not None:
            key_file = self.folder / "maas-api-key"
            key_file.write_text(simulator.api_key + "\n")
            key_file.chmod(0o600)
            overrides.setdefault("maas__url", simulator.url)
        overrides.setdefault("log__level", "info")
        self.config_path = write_config(self.folder, None, **overrides)
        self.daemon = DaemonProcess(self.config_path)

    @property
    def drop_dir(self) -> Path:
        return self.daemon.drop_dir

    @property
    def db_path(self) -> Path:
        return self.daemon.state_dir / "jobs.sqlite3"

    def start(self) -> Site:
        self.daemon.drop_dir.mkdir(parents=True, exist_ok=True)
        self.daemon.start()
        return self

    def wait_ready(self, timeout: float = 60) -> float:
        """Wait for READY=1; return the time it came (monotonic)."""
        deadline = time.monotonic() + timeout
        while "READY=1" not in self.daemon.notifications:
            if time.monotonic() > deadline or not self.daemon.alive():
                raise RuntimeError("the daemon never said READY=1:\n" + self.daemon.log_tail())
            time.sleep(0.005)
        return time.monotonic()

    @property
    def pid(self) -> int:
        return self.daemon.process.pid

    def query(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        connection = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            return connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()

    def stop(self) -> None:
        self.daemon.shut_down()


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()
