"""Where a running build is, from Packer's output and the installer's serial console.

BuildProgress is pure: it is fed lines and never reads or runs anything. Packer's lines (its
`-machine-readable` CSV or the plain `==> qemu: ...` lines `make` shows) move it through the
builder's steps; the serial console (read with SerialTail while the build runs, or found in
Packer's debug log when PACKER_LOG=1 and the template says `-serial stdio` as packer-maas's does)
tells what Packer cannot see: the installer running, finishing, or stopping at an error. ESXi's installer shows
errors as "An error has occurred while parsing the installation script" and the detail on the next
lines; packer-maas's template puts ESXi's console on COM1 (tty2Port=com1).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Callable

STAGES = ("starting", "iso loaded", "boot command typed", "installing", "waiting for shutdown",
          "post-processing", "compressing", "done")

# Packer's human text (after the "==> qemu: " prefix) that starts each stage.
_PACKER_STAGES = tuple((stage, re.compile(pattern, re.IGNORECASE)) for stage, pattern in (
    ("iso loaded", r"booting from cd-?rom|starting vm"),
    ("boot command typed", r"typing the boot command"),
    # With communicator "none" Packer says this right after typing, and the whole install runs
    # while it waits for the guest to halt.
    ("installing", r"waiting for shutdown"),
    ("post-processing", r"running post-processor.*shell-local"),
    ("compressing", r"running post-processor.*compress"),
    ("done", r"builds finished|build '[^']*' finished"),
))
# Serial console lines that tell the installer finished and the guest is going down.
_SHUTDOWN_MARKERS = ("powering off", "reboot: power down", "installation complete",
                     "esxi installation completed", "halting the system", "system halted")
_ERROR_MARKERS = re.compile(r"^(an error has occurred\b|error:|installer: error\b)", re.IGNORECASE)
_ANSI_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_PACKER_PREFIX = re.compile(r"^\s*(==>|-->)?\s*[\w.-]+(\s*\([\w-]+\))?:\s?")
_QEMU_STDOUT = re.compile(r" plugin: Qemu stdout: (.*)$")
_KERNEL_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
ERROR_DETAIL_LINES = 3


class BuildProgress:
    """Fed Packer and serial console lines; exposes `stage` (one of STAGES, never going back) and
    `installer_error` (the installer's error text, once it printed one)."""

    def __init__(self) -> None:
        self.stage = STAGES[0]
        self.installer_error: str | None = None
        self._error_lines: list[str] = []
        self._collecting_error = False

    def feed_packer(self, line: str) -> None:
        """Given one line of Packer's output (machine-readable CSV or plain), advance the stage.

        With PACKER_LOG=1 and packer-maas's `-serial stdio`, the guest's console shows up in
        Packer's debug log as "... plugin: Qemu stdout: <line>": those go to feed_serial.
        """
        console = _QEMU_STDOUT.search(line)
        if console:
            self.feed_serial(console.group(1))
            return
        text = packer_text(line)
        if text is None:
            return
        for stage, pattern in _PACKER_STAGES:
            if pattern.search(text):
                self._advance(stage)

    def feed_serial(self, line: str) -> None:
        """Given one line of the guest's serial console, note the installer's progress or error."""
        text = clean_console_line(line)
        if self._collecting_error:
            self._collect_error_detail(text)
            return
        if not text:
            return
        if _ERROR_MARKERS.match(text):
            self._error_lines = [text]
            self._collecting_error = True
            self._publish_error()
            return
        lowered = text.lower()
        if any(marker in lowered for marker in _SHUTDOWN_MARKERS):
            self._advance("waiting for shutdown")
        elif self._index(self.stage) >= self._index("boot command typed") and not _is_kernel_line(line):
            self._advance("installing")

    def _collect_error_detail(self, text: str) -> None:
        if text and not text.lower().startswith("installer:"):
            self._error_lines.append(text)
            self._publish_error()
        if len(self._error_lines) > ERROR_DETAIL_LINES or text.lower().startswith("installer:"):
            self._collecting_error = False

    def _publish_error(self) -> None:
        self.installer_error = ": ".join(line.rstrip(":") for line in self._error_lines)

    def _advance(self, stage: str) -> None:
        if self._index(stage) > self._index(self.stage):
            self.stage = stage

    @staticmethod
    def _index(stage: str) -> int:
        return STAGES.index(stage)


def packer_text(line: str) -> str | None:
    """Given a line of Packer's output, return its human text without the `==> qemu: ` prefix.

    Machine-readable lines (`timestamp,target,type,data...`) count only when they are ui say,
    message or error; Packer writes commas inside them as %!(PACKER_COMMA).
    """
    line = line.rstrip("\r\n")
    fields = line.split(",", 3)
    if len(fields) == 4 and fields[0].isdigit():
        if fields[2] != "ui":
            return None
        kind, _, data = fields[3].partition(",")
        if kind not in ("say", "message", "error"):
            return None
        line = data.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").strip().split("\n")[0]
    return _PACKER_PREFIX.sub("", line, count=1).strip()


def clean_console_line(line: str) -> str:
    """Given a raw serial console line, return it without terminal escapes, CRs and odd bytes."""
    text = _ANSI_ESCAPE.sub("", line)
    return "".join(ch for ch in text if ch.isprintable()).strip()


def _is_kernel_line(line: str) -> bool:
    return bool(_KERNEL_TIMESTAMP.match(line.strip()))


class SerialTail:
    """Reads the complete lines appended to a serial console file since the last call.

    The file may not exist yet (qemu creates it when the VM starts) and may be recreated; an
    unfinished last line is kept until its newline arrives.
    """

    def __init__(self, path: Path | str, max_read: int = 1 << 20) -> None:
        self.path = Path(path)
        self.max_read = max_read
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._partial = b""

    def read_lines(self) -> list[str]:
        """Return the new complete lines (decoded, without line ends); [] when nothing is new."""
        try:
            with open(self.path, "rb") as handle:
                status = os.fstat(handle.fileno())
                identity = (status.st_dev, status.st_ino)
                if identity != self._identity or status.st_size < self._offset:
                    self._identity, self._offset, self._partial = identity, 0, b""
                handle.seek(self._offset)
                chunk = handle.read(self.max_read)
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        return [raw.rstrip(b"\r").decode("utf-8", errors="replace") for raw in complete]


def serial_tail(path: Path | str, count: int = 10, max_bytes: int = 65536) -> list[str]:
    """Given a serial console file, return its last `count` non-empty lines, cleaned (for reasons)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(handle.seek(0, os.SEEK_END) - max_bytes, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [clean_console_line(line) for line in text.splitlines()]
    return [line for line in lines if line][-count:]


class BuildMonitor:
    """One running build's progress, fed from the build thread (Packer lines) and polled from the
    main loop (the serial console file, which Packer never prints while the installer runs)."""

    def __init__(self, serial_log: Path, on_stage: Callable[[str], None] = lambda stage: None) -> None:
        self.serial_log = serial_log
        self.on_stage = on_stage
        self.progress = BuildProgress()
        self._serial = SerialTail(serial_log)
        self._lock = threading.Lock()

    def packer_line(self, line: str) -> None:
        """Feed one line of Packer's output; tell on_stage where the build is."""
        with self._lock:
            self._read_serial()
            self.progress.feed_packer(line)
            stage = self.progress.stage
        self.on_stage(stage)

    def poll(self) -> None:
        """Read what the console printed since the last call; tell on_stage where the build is."""
        with self._lock:
            self._read_serial()
            stage = self.progress.stage
        self.on_stage(stage)

    def _read_serial(self) -> None:
        for line in self._serial.read_lines():
            self.progress.feed_serial(line)

    def explain(self, reason: str) -> str:
        """Given why the build failed, add the installer's error and the console's last lines."""
        self.poll()
        parts = [reason]
        if self.progress.installer_error:
            parts.insert(0, f"installer error: {self.progress.installer_error}")
        console = serial_tail(self.serial_log, 10)
        if console:
            parts.append("serial console, last lines:\n" + "\n".join(console))
        return "\n".join(parts)


# ----- one job's progress, as the status line, `status` and the one-shot bar show it -----------

UPLOAD_RECORD_STEP = 0.05  # the store gets the upload's percentage every 5 % ...
UPLOAD_RECORD_EVERY = 5.0  # ... or every 5 s, whichever comes first: never per chunk
ETA_AFTER = 0.02  # no ETA until this much is sent (the first chunk says little about the speed)


def human_size(size: float) -> str:
    """Given a number of bytes, return it for people: '512 B', '1.2 GiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def minutes(seconds: float) -> str:
    """Given a duration, return it in whole minutes as the status line shows it: '12 min'."""
    return f"{int(max(seconds, 0) // 60)} min"


def eta(seconds: float) -> str:
    """Given the seconds left, return them for people: '40 s', '3 min', '1 h 05 min'."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{(seconds + 59) // 60} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min"


def build_note(stage: str, elapsed: float) -> str:
    """Given a build's stage and the seconds since it started, return '12 min, installing' (what
    `status` shows of a build)."""
    return f"{minutes(elapsed)}, {stage}"


def building_text(subject: str, stage: str, elapsed: float) -> str:
    """Given what is built, its stage and the seconds since it started, return
    'building X (12 min, installing)'."""
    return f"building {subject} ({build_note(stage, elapsed)})"


def uploading_text(resource: str, target: str, fraction: float | None, size: int | None,
                   elapsed: float) -> str:
    """Given an upload's resource, target, fraction sent (None: not started), size in bytes and the
    seconds since it started, return 'uploading X to site-a: 45% (1.2 GiB of 2.6 GiB, ETA 1 min)'."""
    text = f"uploading {resource} to {target}"
    if fraction is None:
        return text
    text += f": {int(fraction * 100)}%"
    details = []
    if size:
        details.append(f"{human_size(fraction * size)} of {human_size(size)}")
    if ETA_AFTER <= fraction < 1 and elapsed > 0:
        details.append(f"ETA {eta(elapsed * (1 - fraction) / fraction)}")
    return text + (f" ({', '.join(details)})" if details else "")


class JobProgress:
    """Where one job is: its build's stage and elapsed time, then each upload's share sent.

    The one source of the text the systemd status line, the store's `stage` column (what `status`
    shows) and the one-shot's progress bar show. Pure: times are given, nothing is read or run.
    """

    def __init__(self, subject: str, now: float) -> None:
        self.subject = subject  # the ISO's name without .iso
        self.build_started = now
        self.stage = STAGES[0]
        self.stage_started = now
        self.resource: str | None = None
        self.target: str | None = None
        self.fraction: float | None = None
        self.size: int | None = None
        self.upload_started: float | None = None
        self._recorded: tuple[float, float] | None = None  # (fraction, time) last given to the store

    def build_stage(self, stage: str, now: float) -> bool:
        """Note the build's stage; return whether it changed."""
        if stage == self.stage:
            return False
        self.stage, self.stage_started = stage, now
        return True

    def upload_begins(self, resource: str, target: str, size: int | None, now: float) -> None:
        self.resource, self.target, self.size = resource, target, size
        self.fraction, self.upload_started, self._recorded = None, now, None

    def uploaded(self, fraction: float, now: float) -> None:
        """Note the share of the image MAAS acknowledged (from 0 again when an upload starts over)."""
        if self.fraction is not None and fraction < self.fraction:
            self.upload_started, self._recorded = now, None
        self.fraction = min(max(fraction, 0.0), 1.0)

    def note(self, now: float) -> str:
        """What the store's `stage` column holds for `status`: the build's stage and elapsed
        minutes, or the upload's text."""
        return self.text(now) if self.uploading else build_note(self.stage, now - self.build_started)

    @property
    def uploading(self) -> bool:
        return self.upload_started is not None

    def text(self, now: float) -> str:
        """What the job does now, in one line."""
        if self.uploading:
            return uploading_text(self.resource or self.subject, self.target or "MAAS", self.fraction, self.size,
                                  now - self.upload_started)
        return building_text(self.subject, self.stage, now - self.build_started)

    def upload_due(self, now: float, step: float = UPLOAD_RECORD_STEP, every: float = UPLOAD_RECORD_EVERY) -> bool:
        """Whether the upload moved enough (a step, or for `every` seconds) to be recorded again;
        when it did, it counts as recorded now."""
        if self.fraction is None:
            return False
        last = self._recorded
        if last is not None:
            moved = self.fraction - last[0]
            if moved == 0 or (self.fraction < 1 and moved < step - 1e-9 and now - last[1] < every):
                return False
        self._recorded = (self.fraction, now)
        return True


def clock(seconds: float) -> str:
    """Given a duration, return it as a clock shows it: '4:05', '1:02:03'."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def bar_line(progress: JobProgress, now: float, width: int = 20) -> str:
    """Given a job's progress, return the one-shot's terminal line: the time since it started and
    what it does (an upload with a bar of its share sent)."""
    line = f"[{clock(now - progress.build_started)}] "
    if progress.uploading and progress.fraction is not None:
        filled = int(progress.fraction * width)
        line += f"[{'#' * filled}{'.' * (width - filled)}] "
    return line + progress.text(now)
