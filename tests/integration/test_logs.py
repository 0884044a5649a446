"""Log lines as journald and an operator see them: priorities, JSON everywhere, secrets masked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT


_PROGRAM = """
import asyncio, logging, sys
import structlog
from esxi_watcher.logs import add_secret, configure_logging
configure_logging(sys.argv[1], "info")
add_secret("consumer:tokenkey123:secretsecret")
log = structlog.get_logger("esxi_watcher.test")
log.info("job.queued", job=1)
log.warning("register.retry_later", reason="401 for key tokenkey123")
log.error("job.failed", job=2)
logging.getLogger("watchdog.observers").warning("inotify queue overflow")
logging.getLogger("aiohttp.client").info("request with secretsecret")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("asyncio").exception("Task exception was never retrieved")
"""


def _run(tmp_path: Path, format: str, journal: bool) -> list[str]:
    out = tmp_path / "stdout"
    environment = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    with open(out, "wb") as stream:
        if journal:
            status = os.fstat(stream.fileno())
            environment["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        subprocess.run([sys.executable, "-c", _PROGRAM, format], stdout=stream, stderr=subprocess.PIPE,
                       cwd=ROOT, env=environment, check=True, timeout=60)
    return out.read_text(encoding="utf-8").splitlines()


def test_journal_lines_carry_their_syslog_priority(tmp_path):
    lines = _run(tmp_path, "console", journal=True)
    assert all(line.startswith("<") for line in lines if line.strip()), lines
    by_event = {line: line[:3] for line in lines}
    assert any(p == "<6>" and "job.queued" in line for line, p in by_event.items())
    assert any(p == "<4>" and "register.retry_later" in line for line, p in by_event.items())
    assert any(p == "<3>" and "job.failed" in line for line, p in by_event.items())
    assert any(p == "<4>" and "inotify queue overflow" in line for line, p in by_event.items())
    assert any(p == "<3>" and "never retrieved" in line for line, p in by_event.items())
    assert "timestamp=" not in "\n".join(lines)  # journald stamps lines itself


def test_json_format_makes_every_line_json_also_other_libraries(tmp_path):
    lines = [line for line in _run(tmp_path, "json", journal=True) if line.strip()]
    events = [json.loads(line[3:]) for line in lines]
    loggers = {event.get("logger") for event in events}
    assert {"watchdog.observers", "aiohttp.client", "asyncio"} <= loggers
    traceback = next(event for event in events if event.get("logger") == "asyncio")
    assert traceback["level"] == "error" and "ValueError: boom" in traceback["exception"]


def test_outside_systemd_lines_have_no_priority_prefix_but_a_timestamp(tmp_path):
    lines = [line for line in _run(tmp_path, "console", journal=False) if line.strip()]
    assert lines and not any(line.startswith("<") for line in lines)
    assert all(line.startswith("timestamp=") for line in lines)


def test_secrets_are_masked_in_every_line_also_other_libraries(tmp_path):
    text = "\n".join(_run(tmp_path, "console", journal=False))
    assert "tokenkey123" not in text and "secretsecret" not in text
    assert text.count("********") >= 2
