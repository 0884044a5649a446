"""What every benchmark needs: the machine's description, process figures from /proc, results."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Figure:
    """One line of the table: what we measured, next to its baseline and goal."""

    row: str
    what: str
    ours: str
    baseline: str = "—"
    ratio: str = "—"
    goal: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: "—"}[self.met]


def machine() -> dict[str, str]:
    """The machine the figures come from, and how busy it was."""
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{int(memory) / (1 << 20):.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": load(),
    }


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def io_counters(pid: int | str = "self") -> dict[str, int]:
    counters = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        counters[key] = int(value)
    return counters


def run_timed(argv: list[str], **kwargs) -> tuple[float, int]:
    """Run a command, output discarded; return (wall seconds, its peak RSS in KiB)."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, **kwargs)
        _, status, usage = os.wait4(process.pid, 0)
        took = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {process.args[-1]} "
                               f"{errors.read().decode(errors='replace')[-500:]}")
    return took, usage.ru_maxrss


def run_child(argv: list[str], timeout: float = 900) -> dict:
    """Run a helper that prints one JSON object as its last line; return it."""
    process = subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {process.stderr.decode(errors='replace')[-1500:]}")
    return json.loads(process.stdout.decode().strip().splitlines()[-1])


def child_peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_random_file(path: Path, size: int, seed: bytes = b"") -> Path:
    """Write size bytes that do not compress, fast: a 16 MiB random block, varied per block."""
    block = bytearray(os.urandom(16 * MiB))
    with open(path, "wb") as stream:
        written, counter = 0, 0
        while written < size:
            block[:16] = (seed + counter.to_bytes(8, "big")).ljust(16, b"\0")[:16]
            piece = memoryview(block)[: min(len(block), size - written)]
            stream.write(piece)
            written += len(piece)
            counter += 1
    return path


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6
