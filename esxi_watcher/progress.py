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
