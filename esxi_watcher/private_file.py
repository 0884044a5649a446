"""Files that hold a secret (the MAAS API key, the images' root password): read with the same checks."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Type

from esxi_watcher.errors import EsxiWatcherError


def read_private_file(path: Path, label: str, error: Type[EsxiWatcherError],
                      missing: Type[EsxiWatcherError] | None = None, how_to_create: str = "",
                      max_size: int = 1 << 20) -> str:
    """Given a file that must be the owner's alone, return its text.

    Refuse (raise `error`, or `missing` when the file does not exist) a file that group or others
    may read or write, one that is not a regular file, larger than max_size bytes (a secret is a
    line; a larger file is a wrong path), unreadable or not UTF-8. The one-line
    message names the file by `label` and never carries what it holds.
    """
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        hint = f": {how_to_create}" if how_to_create else ""
        raise (missing or error)(f"{label} {path} does not exist{hint}") from None
    except OSError as problem:
        raise error(f"{label} {path}: {problem.strerror}") from None
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        raise error(f"{label} {path} is not a regular file")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        raise error(f"{label} {path} is readable by others: chmod 600 {path}")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise error(f"{label} {path} is writable by others: chmod 600 {path}")
    if status.st_size > max_size:
        raise error(f"{label} {path} is larger than {max_size} bytes: not a file holding one secret")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        reason = problem.strerror if isinstance(problem, OSError) else "not UTF-8 text"
        raise error(f"{label} {path}: {reason}") from None
