"""Where a region keeps uploaded bytes: the three behaviours MAAS has had.

- ``LargeObjectStore`` ("3.4", MAAS 3.4 and older): one Postgres large object per sha256,
  shared by every file record with that sha256; writes are transactional (a chunk that
  fails the final sha256 check is rolled back); a known complete sha256 needs no upload.
- ``IncompleteFileStore`` ("3.5", MAAS 3.5 to 3.7): each upload writes ``<name>.incomplete``
  at the offset its own record's sync size holds (a record's first chunk allocates the
  file afresh), and renames it to ``<name>`` once complete and valid.
- ``SharedAppendStore`` ("3.8", MAAS 3.8): one on-disk file per sha256, every chunk is
  appended to it; a chunk that would overflow it deletes the file (Too much data).

Read from canonical/maas (maasserver/api/boot_resources.py at 3.4.2, 3.6.4 and main,
maasserver/utils/bootresource.py, maasservicelayer/utils/image_local_files.py); written
afresh, not copied.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class UploadRefused(Exception):
    """MAAS answers the chunk with this status and text; nothing of it was committed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ImageUnavailable(Exception):
    """MAAS has no servable bytes for that image (incomplete, deleted, or gone from disk)."""


class NoSpace(OSError):
    """The disk is full (a fault the simulator can inject)."""


def write_body(stream, data) -> None:
    """Write a chunk's bytes: bytes, or a body spooled to disk by the HTTP side (write_to)."""
    if hasattr(data, "write_to"):
        data.write_to(stream)
    else:
        stream.write(data)


def sha256_of_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while True:
            block = stream.read(4 * 1024 * 1024)
            if not block:
                return digest.hexdigest()
            digest.update(block)


class SyncedFileStore:
    """Common ground of the 3.5 and 3.8 stores: a per-record sync size (one region)."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, rfile: dict) -> Path:
        return self.directory / rfile["filename_on_disk"]

    def prepare_new_file(self, rfile: dict, records: list[dict], largefiles: dict) -> None:
        """A new record starts without a sync record: incomplete, progress 0."""
        rfile["sync"] = None

    def is_complete(self, rfile: dict, largefiles: dict) -> bool:
        return self.progress(rfile, largefiles) == 100.0

    def progress(self, rfile: dict, largefiles: dict) -> float:
        if rfile.get("sync") is None:
            return 0.0
        return 100.0 * rfile["sync"] / rfile["size"] if rfile["size"] else 0.0

    def synced_size(self, rfile: dict, largefiles: dict) -> int:
        return rfile.get("sync") or 0

    def forget_files(self, removed: list[dict], remaining: list[dict], largefiles: dict) -> None:
        """Records deleted: their sync records go; the files on disk wait for a restart."""

    def on_restart(self, records: list[dict], largefiles: dict) -> list[str]:
        """Remove files on disk that no record refers to; return their names."""
        wanted = {rfile["filename_on_disk"] for rfile in records}
        removed = []
        for entry in sorted(self.directory.iterdir()):
            base = entry.name[: -len(".incomplete")] if entry.name.endswith(".incomplete") else entry.name
            if base not in wanted:
                entry.unlink()
                removed.append(entry.name)
        return removed

    def disk_files(self) -> dict[str, int]:
        return {entry.name: entry.stat().st_size for entry in sorted(self.directory.iterdir())}


class SharedAppendStore(SyncedFileStore):
    """MAAS 3.8: one append-only file per sha256, shared by every record holding it."""

    mode = "3.8"

    def upload(self, rfile: dict, data: bytes, largefiles: dict, no_space: bool = False) -> None:
        synced = rfile.get("sync") or 0
        if synced == rfile["size"]:
            raise UploadRefused(400, "Cannot upload to a complete file.")
        path = self.path(rfile)
        try:
            self._append(path, data, rfile["size"], no_space)
        except _Overflow:
            raise UploadRefused(400, "Too much data received.") from None
        except NoSpace:
            raise UploadRefused(400, "No space left on device") from None
        new_synced = synced + len(data)
        if path.stat().st_size == rfile["size"] and sha256_of_path(path) != rfile["sha256"]:
            # The file stays on disk; the sync size rolls back with the transaction.
            raise UploadRefused(400, "Saved content does not match given SHA256 value.")
        rfile["sync"] = new_synced

    def write_unrecorded(self, rfile: dict, data: bytes, largefiles: dict) -> None:
        """Bytes that reached the disk while the request failed (crash mid-request)."""
        with open(self.path(rfile), "ab") as stream:
            write_body(stream, data)

    @staticmethod
    def _append(path: Path, data: bytes, total_size: int, no_space: bool) -> None:
        with open(path, "ab") as stream:
            if stream.tell() + len(data) > total_size:
                stream.close()
                path.unlink(missing_ok=True)
                raise _Overflow()
            if no_space:
                stream.close()
                path.unlink(missing_ok=True)
                raise NoSpace(28, "No space left on device")
            write_body(stream, data)

    def serve(self, rfile: dict, largefiles: dict) -> bytes:
        path = self.path(rfile)
        if not path.exists():
            raise ImageUnavailable("%s is gone from the region's disk" % path.name)
        content = path.read_bytes()
        if len(content) != rfile["size"] or hashlib.sha256(content).hexdigest() != rfile["sha256"]:
            raise ImageUnavailable("%s on disk does not hold the image" % path.name)
        return content


class _Overflow(Exception):
    pass


class IncompleteFileStore(SyncedFileStore):
    """MAAS 3.5 to 3.7: `<name>.incomplete` written at the record's own offset."""

    mode = "3.5"

    def partial_path(self, rfile: dict) -> Path:
        return self.directory / (rfile["filename_on_disk"] + ".incomplete")

    def upload(self, rfile: dict, data: bytes, largefiles: dict, no_space: bool = False) -> None:
        synced = rfile.get("sync") or 0
        total = rfile["size"]
        if synced == total:
            raise UploadRefused(400, "Cannot upload to a complete file.")
        partial = self.partial_path(rfile)
        if no_space:
            # LocalStoreAllocationFail is not caught by the 3.5-3.7 handler.
            raise UploadRefused(500, "No space left on device")
        if synced == 0:
            self._allocate(partial, total)
        if not partial.exists():
            raise UploadRefused(500, "[Errno 2] No such file or directory: %r" % str(partial))
        if synced + len(data) > total:
            raise UploadRefused(400, "Too much data received.")
        with open(partial, "r+b") as stream:
            stream.seek(synced)
            write_body(stream, data)
        new_synced = synced + len(data)
        if new_synced == total:
            if sha256_of_path(partial) != rfile["sha256"]:
                raise UploadRefused(400, "Saved content does not match given SHA256 value.")
            os.replace(partial, self.path(rfile))
        rfile["sync"] = new_synced

    @staticmethod
    def _allocate(partial: Path, total: int) -> None:
        with open(partial, "wb") as stream:
            if total > 0:
                stream.seek(total - 1)
                stream.write(b"\x00")

    def write_unrecorded(self, rfile: dict, data: bytes, largefiles: dict) -> None:
        synced = rfile.get("sync") or 0
        partial = self.partial_path(rfile)
        if synced == 0:
            self._allocate(partial, rfile["size"])
        if partial.exists() and synced + len(data) <= rfile["size"]:
            with open(partial, "r+b") as stream:
                stream.seek(synced)
                write_body(stream, data)

    def serve(self, rfile: dict, largefiles: dict) -> bytes:
        path = self.path(rfile)
        if not path.exists():
            raise ImageUnavailable("%s is not on the region's disk" % path.name)
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() != rfile["sha256"]:
            raise ImageUnavailable("%s on disk does not hold the image" % path.name)
        return content


class LargeObjectStore:
    """MAAS 3.4 and older: one large object per sha256, in the database (transactional)."""

    mode = "3.4"

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def content_path(self, sha256: str) -> Path:
        return self.directory / sha256

    def prepare_new_file(self, rfile: dict, records: list[dict], largefiles: dict) -> None:
        largefile = largefiles.get(rfile["sha256"])
        if largefile is None:
            largefiles[rfile["sha256"]] = {"total_size": rfile["size"], "size": 0}
            self.content_path(rfile["sha256"]).write_bytes(b"")
        rfile["sync"] = None

    def size_conflict(self, sha256: str, size: int, largefiles: dict) -> bool:
        largefile = largefiles.get(sha256)
        return largefile is not None and largefile["total_size"] != size

    def is_complete(self, rfile: dict, largefiles: dict) -> bool:
        largefile = largefiles[rfile["sha256"]]
        return largefile["size"] == largefile["total_size"]

    def progress(self, rfile: dict, largefiles: dict) -> float:
        # LargeFile.progress in 3.4 divides the other way round; kept as MAAS had it.
        largefile = largefiles[rfile["sha256"]]
        if largefile["size"] <= 0:
            return 0
        return largefile["total_size"] / float(largefile["size"])

    def synced_size(self, rfile: dict, largefiles: dict) -> int:
        return largefiles[rfile["sha256"]]["size"]

    def upload(self, rfile: dict, data: bytes, largefiles: dict, no_space: bool = False) -> None:
        largefile = largefiles[rfile["sha256"]]
        if largefile["size"] == largefile["total_size"]:
            raise UploadRefused(400, "Cannot upload to a complete file.")
        path = self.content_path(rfile["sha256"])
        current = path.stat().st_size if path.exists() else 0
        if current + len(data) > largefile["total_size"]:
            raise UploadRefused(400, "Too much data received.")
        if no_space:
            raise UploadRefused(500, "could not extend file: No space left on device")
        with open(path, "ab") as stream:
            write_body(stream, data)
        new_size = current + len(data)
        if new_size == largefile["total_size"] and sha256_of_path(path) != rfile["sha256"]:
            # The transaction rolls back: the large object loses the chunk again.
            with open(path, "r+b") as stream:
                stream.truncate(current)
            raise UploadRefused(400, "Saved content does not match given SHA256 value.")
        largefile["size"] = new_size

    def write_unrecorded(self, rfile: dict, data: bytes, largefiles: dict) -> None:
        """A large object write is transactional: a failed request leaves nothing."""

    def forget_files(self, removed: list[dict], remaining: list[dict], largefiles: dict) -> None:
        """A large file goes with the last record that refers to it."""
        still_used = {rfile["sha256"] for rfile in remaining}
        for rfile in removed:
            if rfile["sha256"] not in still_used and rfile["sha256"] in largefiles:
                del largefiles[rfile["sha256"]]
                self.content_path(rfile["sha256"]).unlink(missing_ok=True)

    def on_restart(self, records: list[dict], largefiles: dict) -> list[str]:
        return []

    def serve(self, rfile: dict, largefiles: dict) -> bytes:
        path = self.content_path(rfile["sha256"])
        if not path.exists():
            raise ImageUnavailable("large object %s is gone" % rfile["sha256"])
        content = path.read_bytes()
        if hashlib.sha256(content).hexdigest() != rfile["sha256"]:
            raise ImageUnavailable("large object %s does not hold the image" % rfile["sha256"])
        return content

    def disk_files(self) -> dict[str, int]:
        return {entry.name: entry.stat().st_size for entry in sorted(self.directory.iterdir())}


def make_file_store(mode: str, state_dir: Path):
    """Given a mode ("3.4", "3.5", "3.8"), return its store under state_dir."""
    if mode == "3.8":
        return SharedAppendStore(state_dir / "bootresources")
    if mode == "3.5":
        return IncompleteFileStore(state_dir / "bootresources")
    if mode == "3.4":
        return LargeObjectStore(state_dir / "largeobjects")
    raise ValueError("mode must be one of 3.4, 3.5, 3.8, not %r" % (mode,))
