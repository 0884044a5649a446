"""Logging set-up: key=value (or JSON) lines on stdout for journald, with secrets masked.

Under systemd, stdout is a journal stream: each line then starts with its syslog priority
(`<4>` for a warning), which journald strips and keeps, so `journalctl -p warning` shows warnings
and errors only. Lines of other libraries (watchdog, aiohttp, asyncio) go through the same
processors, so `log.format: json` gives JSON everywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import structlog

_SECRETS: set[str] = set()
MASK = "********"

# syslog priorities (sd-daemon.h's SD_ERR ... SD_DEBUG)
_PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def add_secret(secret: str) -> None:
    """Mask this string (and each part of a MAAS key) wherever it shows in a log line."""
    for part in {secret, *secret.split(":")}:
        if len(part) >= 6:
            _SECRETS.add(part)


def redact(text: str) -> str:
    """Given any text, return it with every registered secret replaced by the mask."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _mask_secrets(logger: Any, method: str, event: dict) -> dict:
    if not _SECRETS:
        return event
    return {key: redact(value) if isinstance(value, str) else value for key, value in event.items()}


def stdout_is_journal() -> bool:
    """Whether stdout is the journal stream systemd handed us (JOURNAL_STREAM is "dev:inode")."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        status = os.fstat(sys.stdout.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def _with_priority(render: Callable[..., str]) -> Callable[..., str]:
    def render_with_priority(logger: Any, method: str, event: dict) -> str:
        priority = _PRIORITIES.get(str(event.get("level", method)).lower(), 6)
        return f"<{priority}>{render(logger, method, event)}"

    return render_with_priority


class _ToStructlog(logging.Handler):
    """Hands other libraries' log records to structlog, so they share its format and masking."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            method = getattr(logger, record.levelname.lower(), logger.info)
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            method(record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def configure_logging(format: str = "console", level: str = "info", stream: Any = None) -> None:
    """Send structlog and stdlib logging to stdout (or stream) as one line per event."""
    numeric_level = getattr(logging, level.upper())
    journal = stream is None and stdout_is_journal()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _mask_secrets,
        structlog.processors.format_exc_info,
    ]
    if not journal:  # journald stamps lines itself
        processors.insert(0, structlog.processors.TimeStamper(fmt="iso", utc=True))
    if format == "json":
        render: Callable[..., str] = structlog.processors.JSONRenderer()
    else:
        render = structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"],
                                                       drop_missing=True)
    processors.append(_with_priority(render) if journal else render)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(max(numeric_level, logging.INFO))


def configure_command_logging() -> None:
    """For a command whose stdout is its answer (doctor --json): only errors are logged, to stderr."""
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, _mask_secrets, structlog.processors.KeyValueRenderer(
            key_order=["level", "event"], drop_missing=True)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
