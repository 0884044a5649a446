"""Prometheus metrics as a node_exporter textfile (metrics.textfile), rewritten when jobs change.

render() is pure: figures in, the text exposition format out. write_textfile() replaces the file
atomically (a temp file in the same folder, fsync, rename), so node_exporter never reads half a
file. The daemon's MetricsWriter thread writes it once at start, then at most every few seconds
while the store changes, and a last time with esxi_watcher_up 0 when it stops.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import structlog

from esxi_watcher import __version__
from esxi_watcher.store import JobStore, State

log = structlog.get_logger(__name__)

MIN_INTERVAL = 5.0  # seconds between two writes while jobs change
RECHECK = 60.0  # written this often anyway (a registration's "last success" never changes by itself)


@dataclass
class TargetFigures:
    name: str
    last_success: float | None = None  # time of the newest registration there (Unix seconds)
    failures: int = 0  # registrations failed there now
    attempts: int = 0  # tries made there, by every registration in the store
    uploaded_bytes: int = 0  # the sizes of the images registered there


@dataclass
class Figures:
    """What the textfile tells, read from the store in one go."""

    jobs: dict[str, int] = field(default_factory=dict)
    targets: list[TargetFigures] = field(default_factory=list)
    last_build_seconds: float | None = None
    up: bool = True
    version: str = __version__


def figures(store: JobStore, target_names: Iterable[str], up: bool = True) -> Figures:
    """Given the store and the configured targets' names, return the figures to render."""
    found = store.target_figures()
    names = list(dict.fromkeys([*target_names, *sorted(found)]))
    targets = {name: TargetFigures(name) for name in names}
    for name, row in found.items():
        targets[name].last_success = row["last_registered"]
        targets[name].failures = row["failed"]
        targets[name].attempts = row["attempts"]
    for target, artifact, provenance in store.registered_images():
        targets[target].uploaded_bytes += _image_size(artifact, provenance)
    return Figures(jobs=store.counts(), targets=list(targets.values()),
                   last_build_seconds=_last_build_seconds(store.newest_provenances()), up=up)


def _image_size(artifact: str | None, provenance: dict | None) -> int:
    """The bytes of a registered image: as its provenance recorded them, else the kept file's size."""
    size = ((provenance or {}).get("artifact") or {}).get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    try:
        return os.stat(artifact).st_size if artifact else 0
    except OSError:
        return 0


def _last_build_seconds(provenances: list[dict]) -> float | None:
    """The build duration of the newest job that recorded one."""
    for provenance in provenances:
        seconds = (provenance.get("durations") or {}).get("build")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            return float(seconds)
    return None


def render(figures: Figures) -> str:
    """Given the figures, return them in Prometheus's text exposition format (0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)

    family("esxi_watcher_up", "gauge", "1 while the daemon runs, 0 once it stopped.", [({}, 1 if figures.up else 0)])
    family("esxi_watcher_info", "gauge", "The esxi-watcher version, as a label.",
           [({"version": figures.version}, 1)])
    family("esxi_watcher_jobs", "gauge", "Jobs in the store by state.",
           [({"state": str(state)}, figures.jobs.get(str(state), 0)) for state in State])
    family("esxi_watcher_registration_last_success_timestamp_seconds", "gauge",
           "When the newest image registered on the target was registered (Unix time).",
           [({"target": t.name}, t.last_success) for t in figures.targets if t.last_success is not None])
    family("esxi_watcher_registration_failures", "gauge", "Registrations failed on the target now.",
           [({"target": t.name}, t.failures) for t in figures.targets])
    family("esxi_watcher_registration_attempts_total", "counter",
           "Registration tries made on the target, by the jobs in the store.",
           [({"target": t.name}, t.attempts) for t in figures.targets])
    family("esxi_watcher_uploaded_bytes_total", "counter",
           "Bytes of the images registered on the target (those retention removed since included), by the jobs in the store.",
           [({"target": t.name}, t.uploaded_bytes) for t in figures.targets])
    if figures.last_build_seconds is not None:
        family("esxi_watcher_last_build_duration_seconds", "gauge", "How long the newest build took.",
               [({}, figures.last_build_seconds)])
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + ",".join(escaped) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_textfile(path: Path, text: str) -> None:
    """Replace the file at path with text atomically (a temp file in the same folder, fsync, rename),
    mode 0644. Raises OSError."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fchmod(stream.fileno(), 0o644)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class MetricsWriter:
    """The daemon's metrics thread: writes the textfile at start, after store changes (at most every
    MIN_INTERVAL seconds) and with up=0 at the end. A file that cannot be written is one warning
    (again only once it was written in between); the daemon goes on."""

    def __init__(self, store: JobStore, settings: Callable[[], tuple[Path | None, list[str]]],
                 stop_event: threading.Event) -> None:
        self.store = store
        self.settings = settings  # the textfile's path (None: off) and the targets' names, as configured now
        self.stop_event = stop_event
        self._failing: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self.write(up=False)

    def _run(self) -> None:
        changes = self.store.changes
        while not self.stop_event.is_set():
            seen = changes.generation
            self.write()
            if self.stop_event.wait(MIN_INTERVAL):
                return
            if changes.generation == seen:
                changes.wait(seen, RECHECK)

    def write(self, up: bool = True) -> None:
        path, targets = self.settings()
        if path is None:
            return
        try:
            write_textfile(path, render(figures(self.store, targets, up=up)))
        except OSError as error:
            reason = f"{error.strerror or error}"
            if reason != self._failing:
                log.warning("metrics.not_written", textfile=str(path), reason=reason)
                self._failing = reason
            return
        except Exception:  # noqa: BLE001 - metrics are a courtesy: the daemon goes on
            log.exception("metrics.failed", textfile=str(path))
            return
        if self._failing is not None:
            log.info("metrics.written_again", textfile=str(path))
            self._failing = None
