"""run_command and run_quick with real processes: logging, process groups, timeouts, stopping."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from esxi_watcher.logs import MASK, redact
from esxi_watcher.process import STOP_GRACE, group_members, run_command, run_quick


def alive(pid: int) -> bool:
    """Given a pid, return whether a process (not a zombie) with it still runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def run(argv, tmp_path: Path, **options):
    options.setdefault("timeout", 10)
    return run_command(argv, cwd=tmp_path, log_path=tmp_path / "job.log", **options)


def test_streams_merged_output_into_the_log_and_callback_and_keeps_the_last_lines(tmp_path):
    script = "for i in $(seq 1 120); do echo out $i; echo err $i >&2; done; exit 3"
    seen: list[str] = []

    result = run(["sh", "-c", script], tmp_path, on_line=seen.append)

    expected = [f"{stream} {i}" for i in range(1, 121) for stream in ("out", "err")]
    assert result.returncode == 3
    assert not result.timed_out and not result.stopped
    assert seen == expected
    assert result.last_lines == tuple(expected[-50:])
    log_lines = (tmp_path / "job.log").read_text().splitlines()
    assert log_lines[0].startswith("=== ") and "running: sh -c" in log_lines[0]
    assert log_lines[1:-1] == expected
    assert log_lines[-1].startswith("=== ") and "exited 3" in log_lines[-1]


def test_keep_lines_limits_the_kept_lines(tmp_path):
    result = run(["seq", "1", "10"], tmp_path, keep_lines=3)

    assert result.last_lines == ("8", "9", "10")


def test_appends_to_an_existing_log(tmp_path):
    (tmp_path / "job.log").write_text("earlier\n")

    run(["echo", "first"], tmp_path)
    run(["echo", "second"], tmp_path)

    lines = (tmp_path / "job.log").read_text().splitlines()
    assert lines[0] == "earlier"
    assert [line for line in lines if not line.startswith("=== ")] == ["earlier", "first", "second"]
    assert sum("running: echo" in line for line in lines) == 2


def test_last_line_without_newline_and_bad_utf8_are_kept(tmp_path):
    result = run(["printf", r"caf\303\251\n\377x\nno newline"], tmp_path)

    assert result.last_lines == ("café", "\ufffdx", "no newline")


def test_runs_in_its_own_group_with_null_stdin_and_c_utf8(tmp_path):
    started: list[int] = []
    script = ("import os; print(os.getpgid(0)); print(os.readlink('/proc/self/fd/0')); "
              "print(os.environ['LANG'], os.environ['EXTRA'])")

    result = run([sys.executable, "-c", script], tmp_path, env={"EXTRA": "yes", "LANG": "de_DE"},
                 on_start=started.append)

    assert result.returncode == 0
    pgid, stdin, environment = result.last_lines
    assert started and int(pgid) == started[0] != os.getpgid(0)
    assert stdin == "/dev/null"
    assert environment == "C.UTF-8 yes"


def test_runs_in_the_given_folder(tmp_path):
    (tmp_path / "sub").mkdir()

    result = run_command(["pwd"], cwd=tmp_path / "sub", log_path=tmp_path / "job.log", timeout=5)

    assert result.last_lines == (str(tmp_path / "sub"),)


def test_timeout_kills_the_whole_group_even_processes_ignoring_sigterm(tmp_path):
    started: list[int] = []
    # Both the shell and its background grandchild ignore SIGTERM: only SIGKILL ends them.
    script = "trap '' TERM; sleep 300 & echo child $!; sleep 300"

    before = time.monotonic()
    result = run(["sh", "-c", script], tmp_path, timeout=3, kill_grace=1, on_start=started.append)
    elapsed = time.monotonic() - before

    assert result.timed_out and not result.stopped
    assert result.returncode == -signal.SIGKILL
    assert 3.9 <= elapsed < 10
    child = int(result.last_lines[0].split()[1])
    assert not alive(child)
    assert group_members(started[0]) == []
    assert "timed out and was killed" in (tmp_path / "job.log").read_text()


def test_timeout_sends_sigterm_first(tmp_path):
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; sleep 300 & wait"

    result = run(["sh", "-c", script], tmp_path, timeout=3, kill_grace=10)

    assert result.timed_out
    assert result.returncode == 7
    assert result.last_lines == ("ready", "got TERM")
    assert result.duration < 8  # SIGTERM ended it, long before the 10 s grace


def test_stop_event_kills_the_group(tmp_path):
    started: list[int] = []
    stop = threading.Event()
    threading.Timer(2, stop.set).start()

    result = run(["sh", "-c", "sleep 300 & echo child $!; sleep 300"], tmp_path, timeout=60,
                 stop_event=stop, on_start=started.append)

    assert result.stopped and not result.timed_out
    assert result.duration < 10
    assert not alive(int(result.last_lines[0].split()[1]))
    assert group_members(started[0]) == []


def test_a_stop_kills_what_ignores_sigterm_after_a_short_grace(tmp_path):
    stop = threading.Event()
    script = "trap '' TERM; echo ready; sleep 300 & wait"

    result = run(["sh", "-c", script], tmp_path, timeout=60, kill_grace=30, stop_event=stop,
                 on_line=lambda line: line == "ready" and stop.set())

    assert result.stopped and result.returncode == -signal.SIGKILL
    # the daemon's stop does not wait out the 30 s grace of a timeout: systemd is waiting
    assert result.duration < STOP_GRACE + 5


def test_processes_left_in_the_group_after_the_command_exits_are_killed(tmp_path):
    result = run(["sh", "-c", "sleep 300 & echo $!"], tmp_path, kill_grace=1)

    child = int(result.last_lines[0])
    assert result.returncode == 0
    assert result.stray_pids == (child,)
    assert not alive(child)
    assert result.duration < 5


def test_a_process_that_left_the_group_cannot_hold_the_command_open(tmp_path):
    # The escaped process keeps the output pipe open; run_command must not wait for its EOF.
    result = run(["sh", "-c", "setsid sleep 300 & echo $!; echo done"], tmp_path)
    escaped = int(result.last_lines[0])
    try:
        assert result.returncode == 0
        assert result.last_lines[1] == "done"
        assert result.duration < 5
    finally:
        os.kill(escaped, signal.SIGKILL)


def test_secrets_are_masked_in_the_logged_command_and_output(tmp_path):
    seen: list[str] = []

    result = run(["echo", "key=abc:def:ghi"], tmp_path, secrets=["abc:def:ghi"], on_line=seen.append)

    log_text = (tmp_path / "job.log").read_text()
    assert "abc:def:ghi" not in log_text
    assert f"echo key={MASK}" in log_text
    assert seen == [f"key={MASK}"] and result.last_lines == (f"key={MASK}",)


def test_a_secret_given_to_one_command_stays_masked_in_later_text(tmp_path):
    run(["true"], tmp_path, secrets=["a-long-secret", ""])
    assert redact("a-long-secret and nothing else") == f"{MASK} and nothing else"


def test_a_missing_program_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        run(["no-such-program-esxi-watcher"], tmp_path)


def test_a_failing_callback_does_not_stop_supervision(tmp_path):
    def broken(line: str) -> None:
        raise RuntimeError("boom")

    result = run(["seq", "1", "3"], tmp_path, on_line=broken)

    assert result.returncode == 0 and result.last_lines == ("1", "2", "3")


def test_run_quick_returns_output_and_status():
    completed = run_quick(["sh", "-c", "echo out; echo err >&2; exit 4"], timeout=5)

    assert (completed.returncode, completed.stdout, completed.stderr) == (4, "out\n", "err\n")


def test_run_quick_kills_a_command_past_its_timeout():
    before = time.monotonic()

    completed = run_quick(["sh", "-c", "echo started; sleep 300 & sleep 300"], timeout=2.5)

    assert completed.returncode == -signal.SIGKILL
    assert completed.stdout == "started\n"
    assert "killed after 2.5s" in completed.stderr
    assert time.monotonic() - before < 10


def test_a_failing_on_start_does_not_leave_the_command_unsupervised(tmp_path):
    def broken(pid: int) -> None:
        raise RuntimeError("cannot record the pid")

    result = run(["sh", "-c", "sleep 300 & echo $!; sleep 300"], tmp_path, timeout=1, on_start=broken)

    assert result.timed_out
    assert not alive(int(result.last_lines[0]))
