"""Checksum files dropped beside an ISO (`X.iso.sha256`, `X.sha256`, `X.md5`, `X.sha1`, any case).

A checksum file is paired with an ISO by its name: `X.iso.<algorithm>` or `X.<algorithm>` belongs to
`X.iso`. Its content is either a bare hex digest or `HEX  name` / `HEX *name` lines (sha256sum and
md5sum output, several files allowed) or BSD lines `SHA256 (name) = HEX`. Nothing here reads an ISO.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

ALGORITHMS = {"sha256": 64, "sha1": 40, "md5": 32}  # name (also the file extension) -> hex digits
MAX_SIZE = 64 * 1024  # a checksum file is a few lines; anything bigger is not one
_GNU_LINE = re.compile(r"^\\?([0-9A-Fa-f]+)(?:\s+\*?(.+))?$")
_BSD_LINE = re.compile(r"^(SHA256|SHA1|MD5)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Expected:
    """What a checksum file says an ISO's digest must be."""

    path: Path
    algorithm: str
    digest: str


def algorithm_of(name: str) -> str | None:
    """Given a file name, return the algorithm its extension names ('sha256', ...), or None."""
    extension = name.rpartition(".")[2].lower()
    return extension if "." in name and extension in ALGORITHMS else None


def iso_names_for(checksum_name: str) -> tuple[str, ...]:
    """Given a checksum file's name, return (lower-case) the ISO names it can belong to."""
    base = checksum_name.rpartition(".")[0].lower()
    if base.endswith(".iso"):
        return (base,)
    return (base + ".iso",)


def belongs_to(checksum_name: str, iso_name: str) -> bool:
    """Whether the checksum file of this name is the one of the ISO of that name."""
    return algorithm_of(checksum_name) is not None and iso_name.lower() in iso_names_for(checksum_name)


def companions(folder: Path, iso_name: str) -> list[Path]:
    """Given a folder and an ISO's name, return the checksum files (regular files) beside it."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        if name != iso_name and belongs_to(name, iso_name) and _is_small_regular_file(folder / name):
            found.append(folder / name)
    return found


def _is_small_regular_file(path: Path) -> bool:
    try:
        status = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_size <= MAX_SIZE


def read_expected(path: Path, iso_name: str) -> Expected | None:
    """Given a checksum file and the ISO's name, return the digest it gives that ISO, or None when
    it cannot be read or gives none (no line of the right length, or several lines and none naming
    the ISO)."""
    algorithm = algorithm_of(path.name)
    if algorithm is None:
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(descriptor, MAX_SIZE).decode("utf-8", errors="replace")
    except OSError:
        return None
    finally:
        os.close(descriptor)
    digest = digest_for(text, algorithm, iso_name)
    return Expected(path, algorithm, digest) if digest else None


def digest_for(text: str, algorithm: str, iso_name: str) -> str | None:
    """Given a checksum file's text, return (lower-case) the digest it gives the ISO of that name."""
    entries = _entries(text.lstrip("\ufeff"), ALGORITHMS[algorithm])
    named = [digest for digest, name in entries if name and _base_name(name).lower() == iso_name.lower()]
    if named:
        return named[0]
    if len(entries) == 1:  # one digest, whatever file name it carries: the file is named for this ISO
        return entries[0][0]
    return None


def _entries(text: str, digits: int) -> list[tuple[str, str | None]]:
    entries = []
    for line in text.splitlines():
        line = line.strip()
        bsd = _BSD_LINE.match(line)
        if bsd:
            digest, name = bsd.group(3), bsd.group(2)
        else:
            gnu = _GNU_LINE.match(line)
            if not gnu:
                continue
            digest, name = gnu.group(1), gnu.group(2)
        if len(digest) == digits:
            entries.append((digest.lower(), name.strip() if name else None))
    return entries


def _base_name(name: str) -> str:
    return name.replace("\\", "/").rpartition("/")[2]
