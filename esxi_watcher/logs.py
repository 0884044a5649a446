"""structlog set-up: key=value (or JSON) lines on stdout for journald, with secrets masked."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_SECRETS: set[str] = set()
MASK = "********"


def add_secret(secret: str) -> None:
    """Mask this string (and each part of a MAAS key) wherever it shows in a log line."""
    for part in {secret, *secret.split(":")}:
        if len(part) >= 6:
            _SECRETS.add(part)


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _mask_secrets(logger: Any, method: str, event: dict) -> dict:
    if not _SECRETS:
        return event
    return {key: redact(value) if isinstance(value, str) else value for key, value in event.items()}


def configure_logging(format: str = "console", level: str = "info") -> None:
    """Send structlog and stdlib logging to stdout as one line per event."""
    numeric_level = getattr(logging, level.upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _mask_secrets,
    ]
    if "JOURNAL_STREAM" not in os.environ:  # journald stamps lines itself
        processors.insert(0, structlog.processors.TimeStamper(fmt="iso", utc=True))
    if format == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.processors.format_exc_info,
                       structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"],
                                                             drop_missing=True)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("level=%(levelname)s logger=%(name)s event=%(message)r"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
