"""Where a dropped file ends: done/, rejected/ or failed/ in the drop dir, with a reason beside it.

Files are only ever renamed (never copied, truncated or deleted) and never overwrite another file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DONE = "done"
REJECTED = "rejected"
FAILED = "failed"


def _free_name(folder: Path, name: str, job_id: int) -> Path:
    target = folder / name
    if not os.path.lexists(target):
        return target
    stem, dot, suffix = name.rpartition(".")
    if not stem:
        stem, dot, suffix = name, "", ""
    for attempt in range(1, 1000):
        tag = f"job{job_id}" if attempt == 1 else f"job{job_id}-{attempt}"
        candidate = folder / (f"{stem}.{tag}{dot}{suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(f"no free name for {name!r} in {folder}")


def move_to_outcome(drop_dir: Path, path: Path, outcome: str, job_id: int, reason: str | None) -> Path:
    """Rename a dropped file (or link, dir, FIFO: never followed) into drop_dir/<outcome>/.

    Return its new path. Write <name>.reason.txt beside it when a reason is given.
    """
    folder = drop_dir / outcome
    folder.mkdir(mode=0o775, exist_ok=True)  # a setgid drop dir passes its group and setgid on
    target = _free_name(folder, path.name, job_id)
    note = Path(f"{target}.reason.txt")
    if reason:  # written first, so the file never shows up in its folder without its reason
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        note.write_text(f"{reason}\n\njob {job_id}, {stamp}. Nothing was deleted: this file is as dropped.\n",
                        encoding="utf-8")
    try:
        os.rename(path, target)
    except OSError:
        if reason:
            note.unlink(missing_ok=True)
        raise
    log.info("iso.moved", job=job_id, iso=path.name, to=outcome, reason=reason)
    return target
