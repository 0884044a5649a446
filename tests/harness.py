"""A site for the daemon (config, drop dir, key file) and the daemon as a real child process.

Used by the tests and by the demo.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from esxi_watcher import store as store_states
from tests.paths import ROOT, TEMPLATES

FINAL_STATES = {str(state) for state in store_states.FINAL_STATES}
FILE_TEMPLATE = TEMPLATES / "file-builder" / "vmware-esxi"


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll until predicate() is truthy; return its value or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def write_config(folder: Path, simulator=None, **overrides) -> Path:
    """Write a daemon config under folder (drop/, state/, key file) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "maas-api-key"
    if simulator is not None and not key_file.exists():
        key_file.write_text(simulator.api_key + "\n")
        key_file.chmod(0o600)
    document = {
        "drop_dir": str(folder / "drop"),
        "state_dir": str(folder / "state"),
        "watch": {"settle": "1s", "rescan_interval": "1m"},
        # The site's own build lock: tests running side by side on one machine never wait for each other.
        "build": {"template_dir": str(FILE_TEMPLATE), "timeout": "60s", "retries": 0,
                  "lock_file": str(folder / "build.lock")},
        "maas": {"url": simulator.url if simulator else "http://127.0.0.1:9/MAAS/",
                 "api_key_file": str(key_file), "retry_max_wait": "2s", "notify": True},
        "log": {"format": "json", "level": "debug"},
    }
    for dotted, value in overrides.items():
        node = document
        *parents, leaf = dotted.split("__")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


class DaemonProcess:
    """`esxi-watcher run` as a child process, the way systemd runs it."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config = yaml.safe_load(config_path.read_text())
        self.drop_dir = Path(self.config["drop_dir"])
        self.state_dir = Path(self.config["state_dir"])
        self.log_path = config_path.parent / "daemon.log"
        self.process: subprocess.Popen | None = None
        self.notifications: list[str] = []  # what the daemon sent to "systemd" (READY=1, STATUS=...)
        self._notify_socket: socket.socket | None = None

    def _listen_like_systemd(self) -> str:
        path = tempfile.mktemp(prefix="esxi-notify-", dir="/tmp")
        self._notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify_socket.bind(path)

        def receive(sock: socket.socket) -> None:
            while True:
                try:
                    message = sock.recv(4096)
                except OSError:
                    return
                self.notifications.extend(message.decode().splitlines())
        threading.Thread(target=receive, args=(self._notify_socket,), daemon=True).start()
        return path

    def statuses(self) -> list[str]:
        return [line[len("STATUS="):] for line in list(self.notifications) if line.startswith("STATUS=")]

    def start(self) -> DaemonProcess:
        log = open(self.log_path, "ab")
        environment = {**os.environ, "NOTIFY_SOCKET": self._listen_like_systemd()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "esxi_watcher", "--config", str(self.config_path), "run"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=environment)
        log.close()
        wait_for(lambda: (self.state_dir / "jobs.sqlite3").exists() or self.process.poll() is not None,
                 30, "the daemon to open its store")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> float:
        """Signal the daemon; return how long it took to exit."""
        started = time.monotonic()
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=timeout)
        return time.monotonic() - started

    def marker(self, job_id: int) -> str:
        """The ESXI_WATCHER_JOB value the daemon gives this job's build processes."""
        import hashlib

        return hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8] + f"-{job_id}"

    def shut_down(self) -> None:
        """End the daemon and anything its builds left (tests kill daemons -9 on purpose)."""
        try:
            self.stop(signal.SIGTERM, timeout=20)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
        prefix = self.marker(0)[:-1]
        for pid in no_processes_of():
            if marker_of(pid).startswith(prefix):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._notify_socket is not None:
            self._notify_socket.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cli(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(self.config_path),
                               *arguments], capture_output=True, text=True, cwd=ROOT, timeout=60)

    def jobs(self) -> list[dict]:
        from esxi_watcher.status import job_rows
        from esxi_watcher.store import JobStore

        store = JobStore(self.state_dir / "jobs.sqlite3")
        try:
            return job_rows(store.jobs(), store.registrations())
        finally:
            store.close()

    def job_for(self, iso_name: str) -> dict | None:
        return next((job for job in self.jobs() if job["iso"] == iso_name), None)

    def wait_for_state(self, iso_name: str, states: set[str] | str, timeout: float = 60) -> dict:
        """Wait until the job of that ISO is in one of these states; a final state counts once the
        daemon has also moved the ISO out of the drop dir (it records the state first)."""
        wanted = {states} if isinstance(states, str) else states

        def reached():
            job = self.job_for(iso_name)
            if not job or job["state"] not in wanted:
                return None
            return job if job["state"] not in FINAL_STATES or self._moved_out(job) else None
        try:
            return wait_for(reached, timeout, f"{iso_name} to reach {sorted(wanted)}")
        except AssertionError:
            raise AssertionError(f"{iso_name}: {self.job_for(iso_name)}\n--- daemon log tail ---\n"
                                 + self.log_tail()) from None

    def wait_for_registration(self, iso_name: str, target: str, states: set[str] | str, timeout: float = 60) -> dict:
        """Wait until the job of that ISO has its registration on that target in one of these states."""
        wanted = {states} if isinstance(states, str) else states

        def reached():
            job = self.job_for(iso_name) or {"registrations": []}
            return next((record for record in job["registrations"]
                         if record["target"] == target and record["state"] in wanted), None)
        try:
            return wait_for(reached, timeout, f"{iso_name} to reach {sorted(wanted)} on {target}")
        except AssertionError:
            raise AssertionError(f"{iso_name}: {self.job_for(iso_name)}\n--- daemon log tail ---\n"
                                 + self.log_tail()) from None

    def _moved_out(self, job: dict) -> bool:
        path = Path(job["iso_path"])
        return path.parent != self.drop_dir or not os.path.lexists(path)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_events(self) -> list[dict]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events


def drop(source: Path, drop_dir: Path, name: str | None = None) -> Path:
    """Copy an ISO into the drop dir the way an admin would: cp."""
    target = drop_dir / (name or source.name)
    subprocess.run(["cp", "--", str(source), str(target)], check=True)
    return target


def no_processes_of(marker_value: str | None = None) -> list[int]:
    """Pids of processes carrying our build marker (for a job, or any)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for variable in environ:
            if variable.startswith(b"ESXI_WATCHER_JOB="):
                if marker_value is None or variable == f"ESXI_WATCHER_JOB={marker_value}".encode():
                    found.append(int(entry.name))
    return found



def holds_open(pid: int, path: Path) -> bool:
    """Whether process pid has path open (one of its /proc/PID/fd links points at it)."""
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) == str(path):
                return True
        except OSError:
            continue
    return False


def marker_of(pid: int) -> str:
    try:
        for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if variable.startswith(b"ESXI_WATCHER_JOB="):
                return variable.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return ""
