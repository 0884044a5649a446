"""Run external commands: the one place esxi-watcher starts a process.

Every command is an argv list (never a shell string) started in its own process group with stdin
from /dev/null and LANG=C.UTF-8. Its merged stdout/stderr is streamed line by line into the job's
log file and to an optional callback, and its last lines are kept for the error message. On timeout
or when asked to stop, the whole group gets SIGTERM, then SIGKILL after a grace period, and
run_command returns only once no process of the group is left (grandchildren included).
"""

from __future__ import annotations

import collections
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import structlog

from esxi_watcher.logs import add_secret, redact

log = structlog.get_logger(__name__)

POLL_INTERVAL = 0.1
# A process stuck in uninterruptible sleep (D state, e.g. on a dead NBD device) survives SIGKILL
# until the kernel lets go; past this long we stop waiting and report it instead of hanging.
SIGKILL_WAIT = 30.0
# When the daemon stops, systemd and the admin wait: a build that ignores SIGTERM this long is killed
# (its job goes back to the queue either way).
STOP_GRACE = 4.0
_READ_SIZE = 65536


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit status (negative: killed by that signal), last lines."""

    returncode: int
    last_lines: tuple[str, ...]
    timed_out: bool
    stopped: bool
    duration: float
    # Processes of the group still alive after the command's own process ended (or after it was
    # killed) and that had to be killed; a well-behaved command leaves none.
    stray_pids: tuple[int, ...] = ()
    # Processes of the group that outlived SIGKILL (stuck in the kernel); normally empty.
    survivor_pids: tuple[int, ...] = ()


def command_line(argv: Sequence[str]) -> str:
    """Given an argv list, return it as one readable line (quoted the way a shell would need)."""
    return " ".join(shlex.quote(str(arg)) for arg in argv)


def command_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """Given extra variables, return the daemon's environment with them and a fixed C.UTF-8 locale.

    The daemon's own environment is kept (PATH, proxies: Packer passes proxies on to its builds).
    """
    merged = dict(os.environ)
    merged.update(env or {})
    merged["LANG"] = "C.UTF-8"
    merged["LC_ALL"] = "C.UTF-8"
    return merged


def group_members(pgid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """Given a process group id, return the pids of its live (not zombie) processes.

    Zombies are left out: they are already dead, and an orphaned zombie waits on whoever reaps
    orphans here (PID 1 or a subreaper), not on us.
    """
    members = []
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


class _LineSplitter:
    """Turns chunks of bytes into complete text lines; keeps the unfinished tail for later."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *complete, self._pending = data.split(b"\n")
        return [_decode(line) for line in complete]

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, b""
        return [_decode(rest)] if rest else []


def _decode(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


class _Output:
    """Where a command's lines go: the log file, the caller's callback, the kept last lines."""

    def __init__(self, log_file, on_line: Callable[[str], None] | None, keep_lines: int) -> None:
        self._log_file = log_file
        self._on_line = on_line
        self.last_lines: collections.deque[str] = collections.deque(maxlen=keep_lines)

    def line(self, text: str) -> None:
        text = redact(text)
        self._log_file.write(text + "\n")
        self._log_file.flush()
        self.last_lines.append(text)
        if self._on_line is not None:
            try:
                self._on_line(text)
            except Exception:  # a broken callback must not leave the command unsupervised
                log.exception("process.on_line_failed")


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    log_path: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    stop_event: threading.Event | None = None,
    kill_grace: float = 10,
    keep_lines: int = 50,
    secrets: Sequence[str] = (),
) -> CommandResult:
    """Given an argv list, run it to its end (or kill it), logging its output; return its result.

    `secrets` are registered with logs.add_secret: masked in the logged command, its output lines
    and every later log line. Raises OSError (FileNotFoundError, PermissionError) when the command
    cannot be started.
    """
    argv = [str(arg) for arg in argv]
    for secret in secrets:  # masked from here on, in this job's log and every other line
        add_secret(secret)
    shown = redact(command_line(argv))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(f"=== {_timestamp()} running: {shown} (in {cwd})\n")
        log_file.flush()
        output = _Output(log_file, on_line, keep_lines)
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv, cwd=cwd, env=command_environment(env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as error:
            log_file.write(f"=== {_timestamp()} cannot start: {error}\n")
            raise
        log.info("process.started", command=shown, pid=process.pid)
        if on_start is not None:
            try:
                on_start(process.pid)
            except Exception:  # the command runs anyway: it must stay supervised and killable
                log.exception("process.on_start_failed", pid=process.pid)
        supervision = _Supervision(process, output, started + timeout, stop_event, kill_grace)
        try:
            supervision.run()
        except BaseException:  # never leave an unsupervised group behind (bug, KeyboardInterrupt)
            signal_group(process.pid, signal.SIGKILL)
            process.wait()
            raise
        duration = time.monotonic() - started
        returncode = process.returncode
        if returncode is None:  # stuck in the kernel even after SIGKILL; see SIGKILL_WAIT
            returncode = -signal.SIGKILL
        result = CommandResult(
            returncode=returncode, last_lines=tuple(output.last_lines),
            timed_out=supervision.timed_out, stopped=supervision.stopped, duration=duration,
            stray_pids=tuple(supervision.stray_pids), survivor_pids=tuple(supervision.survivor_pids),
        )
        log_file.write(f"=== {_timestamp()} {_outcome(result)} after {duration:.1f}s\n")
    log.info("process.finished", command=shown, pid=process.pid, returncode=result.returncode,
             timed_out=result.timed_out, stopped=result.stopped, duration=round(duration, 1))
    return result


def _outcome(result: CommandResult) -> str:
    if result.timed_out:
        text = f"timed out and was killed (exit status {result.returncode})"
    elif result.stopped:
        text = f"stopped (exit status {result.returncode})"
    else:
        text = f"exited {result.returncode}"
    if result.stray_pids:
        text += f"; killed leftover processes {list(result.stray_pids)}"
    if result.survivor_pids:
        text += f"; processes {list(result.survivor_pids)} survived SIGKILL"
    return text


class _Supervision:
    """Streams a started command's output while watching its deadline, the stop event and its group.

    The group id is the command's pid (start_new_session). The loop ends when the command has
    exited and no process of its group is left; output still buffered in the pipe is then drained
    without waiting for an EOF that a process which left the group could hold back forever.
    """

    def __init__(self, process: subprocess.Popen, output: _Output, deadline: float,
                 stop_event: threading.Event | None, kill_grace: float) -> None:
        self.process = process
        self.pgid = process.pid
        self.output = output
        self.deadline = deadline
        self.stop_event = stop_event
        self.kill_grace = kill_grace
        self.timed_out = False
        self.stopped = False
        self.stray_pids: list[int] = []
        self.survivor_pids: list[int] = []
        self._terminated_at: float | None = None
        self._killed_at: float | None = None
        self._splitter = _LineSplitter()

    def run(self) -> None:
        stdout = self.process.stdout
        os.set_blocking(stdout.fileno(), False)
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            open_pipe = True
            while True:
                if open_pipe and selector.select(POLL_INTERVAL):
                    open_pipe = self._read_available(stdout)
                elif not open_pipe:
                    time.sleep(POLL_INTERVAL)
                if self._finished():
                    break
            if open_pipe:
                self._read_available(stdout)
        for line in self._splitter.flush():
            self.output.line(line)
        stdout.close()

    def _read_available(self, stdout) -> bool:
        """Read what the pipe holds now; return False once it reached EOF."""
        while True:
            try:
                chunk = os.read(stdout.fileno(), _READ_SIZE)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            for line in self._splitter.feed(chunk):
                self.output.line(line)

    def _finished(self) -> bool:
        now = time.monotonic()
        exited = self.process.poll() is not None
        if self._terminated_at is None:
            if not exited and now >= self.deadline:
                self.timed_out = True
                self._terminate(now, "process.timed_out")
            elif not exited and self.stop_event is not None and self.stop_event.is_set():
                self.stopped = True
                self.kill_grace = min(self.kill_grace, STOP_GRACE)
                self._terminate(now, "process.stopping")
            elif exited:
                members = group_members(self.pgid)
                if not members:
                    return True
                # The command ended but left processes in its group (a daemon it started, a
                # child that ignored its parent's end): they are ours to end.
                self.stray_pids = members
                self._terminate(now, "process.leftovers")
            return False
        members = group_members(self.pgid)
        if exited and not members:
            return True
        if self._killed_at is None and now - self._terminated_at >= self.kill_grace:
            self._killed_at = now
            log.warning("process.killing", pgid=self.pgid, pids=members)
            signal_group(self.pgid, signal.SIGKILL)
        elif self._killed_at is not None and now - self._killed_at >= SIGKILL_WAIT:
            self.survivor_pids = members
            log.error("process.survived_sigkill", pgid=self.pgid, pids=members)
            return True
        return False

    def _terminate(self, now: float, event: str) -> None:
        self._terminated_at = now
        log.warning(event, pgid=self.pgid, pids=group_members(self.pgid))
        signal_group(self.pgid, signal.SIGTERM)


def run_quick(argv: Sequence[str], timeout: float = 30,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Given a short command (e.g. qemu-nbd -d), run it and return its exit status and output.

    No shell, stdin from /dev/null, C.UTF-8; stdout and stderr are captured as text. A command still
    running at the timeout is killed with its process group and reported with returncode -9.
    """
    argv = [str(arg) for arg in argv]
    process = subprocess.Popen(
        argv, env=command_environment(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        try:
            stdout, stderr = process.communicate(timeout=SIGKILL_WAIT)
        except subprocess.TimeoutExpired:  # a process that left the group holds the pipes open
            stdout, stderr = "", ""
        stderr += f"\n(killed after {timeout:g}s)"
        log.warning("process.quick_timed_out", command=command_line(argv), timeout=timeout)
    returncode = process.poll()
    return subprocess.CompletedProcess(
        argv, -signal.SIGKILL if returncode is None else returncode, stdout, stderr)
