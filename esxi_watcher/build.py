"""Build one ESXi image: copy the packer-maas template, run its build, check the artifact.

packer-maas builds in the template's own folder (output-<source>/ and vmware-esxi.dd.gz land there,
and Packer refuses to start while output-<source>/ exists), so every job builds in its own copy of
the template folder and of its sibling scripts/ folder (templates use ../scripts/...).

Which failures are worth retrying (BuildFailed.transient):
- transient: stopped on purpose (BuildStopped: the daemon is shutting down); NBD trouble
  (qemu-nbd / nbd device errors: a device left attached by an earlier failed build, which the host
  clean-up frees before the retry); network errors while `packer init` or `make` fetch plugins or
  Python packages.
- out of space (BuildOutOfSpace): "No space left on device" in the log tail. Not a failure of the
  ISO or the template: the daemon keeps the job waiting until there is space, without counting it.
- not transient: a timeout (an installer waiting on a bad kickstart or boot_command, or a host too
  slow for the template, hangs again for as long: another 2 h would be wasted); any other non-zero
  exit (template, kickstart, missing tools: the operator must act); "Output directory exists"
  (each attempt builds in a fresh copy, so it means the command builds outside the copy, e.g. a
  configured command pointing at the checkout; it stays until someone cleans up); an artifact
  missing or not a complete gzip after exit 0; a template folder with nothing to build; kickstart
  settings that cannot be used (BadKickstartSettings, see kickstart.py), found before any command
  runs.

Over 400 lines on purpose: the work copy, the command of each template generation (with the
template's own timeout), the build's environment, the run, the reasons a build failed and the
artifact check are the steps of one build and change together.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import structlog

from esxi_watcher import kickstart, procfs
from esxi_watcher.errors import BuildFailed, BuildOutOfSpace, BuildStopped
from esxi_watcher.host import JOB_ENVIRONMENT_VARIABLE
from esxi_watcher.logs import add_secret, redact
from esxi_watcher.process import CommandResult, run_command

if TYPE_CHECKING:
    from esxi_watcher.config import BuildConfig

log = structlog.get_logger(__name__)

SCRIPTS_FOLDER = "scripts"
DEFAULT_ARTIFACT = "vmware-esxi.dd.gz"
BUILD_ENVIRONMENT = {"PACKER_NO_COLOR": "1", "CHECKPOINT_DISABLE": "1"}
REASON_LINES = 50  # what an operator needs to see why a build failed
_GZIP_MAGIC = b"\x1f\x8b"
SHA256_SUFFIX = ".sha256"  # beside the artifact: its sha256 as the check computed it
_CHUNK = 1 << 20
_TRANSIENT_MARKERS = (
    "qemu-nbd", "/dev/nbd", "nbd device", "nbdfuse",
    "dial tcp", "i/o timeout", "tls handshake timeout", "connection reset", "connection refused",
    "temporary failure in name resolution", "could not resolve host", "network is unreachable",
)
_NOT_TRANSIENT_MARKERS = ("output directory exists",)
_OUT_OF_SPACE_MARKERS = ("no space left on device", "disk quota exceeded")
# disk_size = "32G" (HCL), "disk_size": "32768" or 32768 (JSON); Packer's qemu builder counts a bare
# number in MiB.
_DISK_SIZE = re.compile(r"""["']?disk_size["']?\s*[=:]\s*["']?(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?["']?""",
                        re.IGNORECASE)
_SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def prepare_workdir(template_dir: Path, workdir: Path, *,
                    artifact_name: str = DEFAULT_ARTIFACT) -> Path:
    """Given the template folder of a packer-maas checkout, copy it into workdir; return the copy.

    The sibling scripts/ folder (if any) is copied next to it, so ../scripts/... still works.
    Symlinks are copied as symlinks, never followed: one pointing inside the copied folders keeps
    its relative text, any other points to where it pointed in the checkout. The checkout's build
    leftovers (output-* folders, the artifact, packer_cache) are not copied. An earlier copy in
    workdir is replaced.
    """
    try:
        source = Path(template_dir).resolve(strict=True)
    except OSError as error:
        raise BuildFailed(f"template folder {template_dir} cannot be read: {error.strerror}") from error
    if not source.is_dir():
        raise BuildFailed(f"template folder {template_dir} is not a folder")
    pairs = [(source, workdir / source.name)]
    scripts = source.parent / SCRIPTS_FOLDER
    if scripts.is_dir() and source.name != SCRIPTS_FOLDER:
        pairs.append((scripts.resolve(), workdir / SCRIPTS_FOLDER))
    roots = tuple(original for original, _ in pairs)

    def leftover(name: str) -> bool:
        return is_build_leftover(name, artifact_name)

    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)  # the copy may hold the root password (see kickstart)
    try:
        for original, copy in pairs:
            if os.path.lexists(copy):
                _remove_or_fail(copy)
            _copy_tree(original, copy, roots, leftover if original == source else None)
    except OSError as error:
        raise BuildFailed(f"cannot copy the template folder {template_dir} into {workdir}: "
                          f"{error}") from error
    log.info("build.workdir_prepared", template=str(source), workdir=str(workdir))
    return pairs[0][1]


def is_build_leftover(name: str, artifact_name: str = DEFAULT_ARTIFACT) -> bool:
    """Given a name in the template folder, return whether it is what a build run there left (not
    copied into a work dir, nor part of the recipe's fingerprint)."""
    return name.startswith("output-") or name in (artifact_name, "packer_cache")


def _copy_tree(source: Path, target: Path, roots: tuple[Path, ...],
               skip: Callable[[str], bool] | None) -> None:
    target.mkdir()
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            original, copy = Path(entry.path), target / entry.name
            if skip is not None and skip(entry.name):
                log.info("build.workdir_skipped", path=str(original))
            elif entry.is_symlink():
                os.symlink(_link_text_for_copy(original, roots), copy)
            elif entry.is_dir(follow_symlinks=False):
                _copy_tree(original, copy, roots, None)
            elif entry.is_file(follow_symlinks=False):
                shutil.copy2(original, copy, follow_symlinks=False)
            else:
                log.warning("build.workdir_special_file_skipped", path=str(original))
    shutil.copystat(source, target, follow_symlinks=False)


def _link_text_for_copy(link: Path, roots: tuple[Path, ...]) -> str:
    """Given a symlink in the checkout, return what its copy should point to, without following it."""
    text = os.readlink(link)
    pointed = Path(os.path.normpath(os.path.join(link.parent, text)))
    if not os.path.isabs(text) and any(pointed == root or pointed.is_relative_to(root)
                                       for root in roots):
        return text
    return str(pointed)


def build_commands(template_copy: Path, iso: Path, command: tuple[str, ...] | None,
                   workdir: Path, timeout: float | None = None) -> list[list[str]]:
    """Given the template copy and the ISO, return the argv lists that build the image, in order.

    A configured command gets its {iso} and {workdir} placeholders filled in. Otherwise the
    folder's contents choose: Makefile -> make; *.pkr.hcl -> packer init + packer build;
    *.json -> packer build. Given the build's timeout, the template's own one (Packer's
    shutdown_timeout: TIMEOUT= of the Makefile, a declared `timeout` variable) is set just under it
    (see packer_timeout). Only looks at which files exist; runs nothing.
    """
    iso_path = os.path.abspath(iso)
    if command:
        return [[arg.replace("{iso}", iso_path).replace("{workdir}", os.path.abspath(workdir))
                 for arg in command]]
    iso_variable = f"vmware_esxi_iso_path={iso_path}"
    shutdown = None if timeout is None else packer_timeout(timeout)
    if (template_copy / "Makefile").is_file():
        return [["make", f"ISO={iso_path}", *([f"TIMEOUT={shutdown}"] if shutdown else [])]]
    hcl_files = sorted(path.name for path in template_copy.glob("*.pkr.hcl"))
    if hcl_files:
        # Packer reads every *.pkr.hcl of a folder as one configuration.
        target = hcl_files[0] if len(hcl_files) == 1 else "."
        variables = ["-var", iso_variable]
        if shutdown and _declares_timeout(template_copy / name for name in hcl_files):
            variables += ["-var", f"timeout={shutdown}"]
        return [["packer", "init", "."], ["packer", "build", *variables, target]]
    json_files = sorted(path.name for path in template_copy.glob("*.json"))
    if len(json_files) > 1 and "vmware-esxi.json" in json_files:
        json_files = ["vmware-esxi.json"]
    if len(json_files) == 1:
        variables = ["-var", iso_variable]
        if shutdown and _json_declares_timeout(template_copy / json_files[0]):
            variables += ["-var", f"timeout={shutdown}"]
        return [["packer", "build", *variables, json_files[0]]]
    if json_files:
        raise BuildFailed(f"template folder {template_copy.name} holds several Packer JSON "
                          f"templates ({', '.join(json_files)}) and no Makefile: set build.command")
    raise BuildFailed(f"template folder {template_copy.name} holds no Makefile, *.pkr.hcl or "
                      f"*.json template: point build.template_dir at packer-maas's vmware-esxi "
                      f"folder or set build.command")


def packer_timeout(timeout: float) -> str:
    """Given build.timeout (seconds), return Packer's shutdown timeout for the template, in Packer's
    duration syntax: 90 % of it, in whole seconds (at least 1 s).

    Under the daemon's limit on purpose: Packer's own timeout then fires first and ends the build
    with its own error ("Failed to shutdown", see exit_summary) and its clean-up of qemu, instead
    of the daemon killing the whole group; the other 10 % (12 min of the default 2 h) is for the
    steps before the install (pip, usb.img, packer init, the boot).
    """
    return f"{max(int(timeout * 0.9), 1)}s"


_HCL_TIMEOUT_VARIABLE = re.compile(r'^\s*variable\s+"timeout"', re.MULTILINE)


def _declares_timeout(hcl_files) -> bool:
    """Given *.pkr.hcl files, return whether one declares `variable "timeout"` (Packer refuses a
    -var it does not declare)."""
    for path in hcl_files:
        try:
            if _HCL_TIMEOUT_VARIABLE.search(path.read_text(errors="replace")):
                return True
        except OSError:
            continue
    return False


def _json_declares_timeout(path: Path) -> bool:
    """Given a Packer JSON template, return whether its "variables" declare "timeout"."""
    try:
        document = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError):
        return False
    variables = document.get("variables") if isinstance(document, dict) else None
    return isinstance(variables, dict) and "timeout" in variables


def build_environment(job_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Given the job's marker and build.environment, return the variables the build commands get.

    Ours (the job marker the host clean-up finds builds by, BUILD_ENVIRONMENT) win; config refuses
    those names. The password of a proxy URL with credentials (http://user:pass@host) is registered
    as a secret.
    """
    for value in (extra or {}).values():
        register_url_credentials(value)
    return {**(extra or {}), **BUILD_ENVIRONMENT, JOB_ENVIRONMENT_VARIABLE: job_id}


def register_url_credentials(value: str) -> None:
    """Given a variable's value, register the credentials of any URL in it (user:password@) as secrets."""
    for userinfo in _URL_CREDENTIALS.findall(value):
        add_secret(f"://{userinfo}@")  # long enough to be masked even when the password is short
        _, _, password = userinfo.partition(":")
        if password:
            add_secret(password)


_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/@\s]+)@")


def run_build(*, job_id: str, template_dir: Path, command: tuple[str, ...] | None,
              artifact_name: str, iso: Path, workdir: Path, log_path: Path, timeout: float,
              build_config: BuildConfig | None = None,
              on_line: Callable[[str], None] | None = None,
              on_start: Callable[[int], None] | None = None,
              stop_event: threading.Event | None = None,
              on_command: Callable[[list[str]], None] | None = None) -> Path:
    """Given a job and its ISO, build the image in a copy of the template; return the artifact.
    on_command gets each argv list as it starts (the job's provenance records them).

    build_config (config.build) brings the kickstart settings, put into the copy before anything
    runs, and build.environment. Raises BuildFailed (BuildStopped when stop_event was set) with a
    reason for the operator; BadKickstartSettings before any command runs.
    """
    if not Path(iso).is_file():
        raise BuildFailed(f"the ISO {iso} is gone")
    template_copy = prepare_workdir(template_dir, workdir, artifact_name=artifact_name)
    if build_config is not None:
        _note_in_log(log_path, kickstart.apply_settings(template_copy, build_config))
    commands = build_commands(template_copy, iso, command, workdir, timeout)
    # The marker in every build process's environment: the host clean-up finds them by it.
    environment = build_environment(job_id, build_config.environment if build_config else None)
    deadline = time.monotonic() + timeout
    log.info("build.started", job=job_id, iso=Path(iso).name, workdir=str(workdir),
             commands=len(commands))
    for argv in commands:
        if on_command is not None:
            on_command(argv)
        result = _run_step(argv, template_copy, log_path, deadline, environment,
                           on_line, on_start, stop_event)
        _check_step(argv, result, timeout, log_path)
    artifact = template_copy / artifact_name
    try:
        check_artifact(artifact)
    except BuildFailed as error:
        lines = _tail_of_log(log_path)
        raise BuildFailed(_reason(f"the build exited 0 but {error}", lines, log_path)) from error
    log.info("build.finished", job=job_id, artifact=str(artifact),
             size=artifact.stat().st_size)
    return artifact


def _note_in_log(log_path: Path, notes: Sequence[str]) -> None:
    """Write what esxi-watcher did to the work copy into the job's log, as its own `===` lines."""
    if not notes:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(log_path, "a", encoding="utf-8") as log_file:
        for note in notes:
            log_file.write(f"=== {stamp} {redact(note)}\n")


def _run_step(argv: list[str], cwd: Path, log_path: Path, deadline: float,
              environment: dict[str, str], on_line, on_start, stop_event) -> CommandResult:
    try:
        return run_command(argv, cwd=cwd, log_path=log_path,
                           timeout=max(deadline - time.monotonic(), 0.0), env=environment,
                           on_line=on_line, on_start=on_start, stop_event=stop_event)
    except OSError as error:
        raise BuildFailed(f"cannot run {argv[0]}: {error.strerror or error} "
                          f"(is it installed and on PATH?)") from error


def _check_step(argv: list[str], result: CommandResult, timeout: float, log_path: Path) -> None:
    """Given a finished build command, raise BuildFailed unless it succeeded."""
    step = command_label(argv)
    if result.stopped:
        raise BuildStopped(_reason(f"{step} was stopped (esxi-watcher is shutting down)",
                                   result.last_lines, log_path))
    if result.timed_out:
        raise BuildFailed(_reason(f"build timed out after {format_duration(timeout)} and was "
                                  f"killed during {step}", result.last_lines, log_path))
    if result.returncode != 0:
        summary = exit_summary(step, result.returncode, result.last_lines)
        if is_out_of_space(result.last_lines):
            raise BuildOutOfSpace(_reason(summary, result.last_lines, log_path))
        raise BuildFailed(_reason(summary, result.last_lines, log_path),
                          transient=is_transient(result.last_lines))


def exit_summary(step: str, returncode: int, lines: Sequence[str]) -> str:
    """Given a build command that failed and its last lines, return the first line of its reason;
    Packer's own shutdown timeout (see packer_timeout) is said in words."""
    summary = f"{step} exited {returncode}"
    if returncode < 0:
        summary = f"{step} was killed by signal {-returncode}"
    if any(marker in line.lower() for line in lines for marker in _PACKER_SHUTDOWN_TIMEOUT):
        summary += (": the VM did not shut down within Packer's shutdown timeout (90% of "
                    "build.timeout): the installer hung or stopped (a kickstart it refused, a "
                    "boot_command that missed, a host too slow)")
    return summary


# What Packer's qemu builder says when shutdown_timeout passes: "Failed to shutdown" with
# communicator "none" (packer-maas's case: the plugin's step_shutdown.go, v1.1.0-1.1.1 and Debian's
# packer 1.6.6), the other with a shutdown command.
_PACKER_SHUTDOWN_TIMEOUT = ("failed to shutdown", "timeout while waiting for machine to shut down")


def is_transient(lines: Sequence[str]) -> bool:
    """Given the last lines of a failed build, return whether retrying it may help.

    See the module docstring for the reasons behind each case.
    """
    text = "\n".join(lines).lower()
    if any(marker in text for marker in _NOT_TRANSIENT_MARKERS):
        return False
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def is_out_of_space(lines: Sequence[str]) -> bool:
    """Given the last lines of a failed build, return whether it ran out of disk space."""
    text = "\n".join(lines).lower()
    return any(marker in text for marker in _OUT_OF_SPACE_MARKERS)


def template_disk_size(template_dir: Path) -> int:
    """Given the template folder, return the largest disk_size its *.pkr.hcl / *.json files set
    (bytes), or 0 when none sets one as a plain number."""
    largest = 0
    try:
        files = [path for path in Path(template_dir).iterdir() if path.name.endswith((".pkr.hcl", ".json"))]
    except OSError:
        return 0
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for number, unit in _DISK_SIZE.findall(text):
            largest = max(largest, int(float(number) * _SIZE_UNITS[unit.upper()]))
    return largest


def space_needed(template_dir: Path, iso_size: int) -> int:
    """About how many bytes of the state dir one build needs: a copy of the ISO's worth (packer-maas
    writes files derived from it) plus the VM's disk as the template sizes it (a raw disk can fill
    up to it, and the .dd.gz is written beside it). An estimate, checked before each build."""
    return iso_size + template_disk_size(template_dir)


def command_label(argv: Sequence[str]) -> str:
    """Given an argv list, return how a reason names it: 'packer build', 'make', ..."""
    program = os.path.basename(argv[0])
    if program == "packer" and len(argv) > 1:
        return f"packer {argv[1]}"
    return program


def format_duration(seconds: float) -> str:
    """Given seconds, return them the way the configuration spells them: '2h', '1h30m', '3s'."""
    if seconds != int(seconds) or seconds < 1:
        return f"{seconds:g}s"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value]
    return "".join(parts)


def _reason(summary: str, lines: Sequence[str], log_path: Path) -> str:
    tail = [line for line in lines if line.strip()][-REASON_LINES:]
    if not tail:
        return f"{summary} (no output; log: {log_path})"
    return f"{summary}; last lines of {log_path}:\n" + "\n".join(tail)


def _tail_of_log(log_path: Path) -> list[str]:
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(max(log_file.seek(0, os.SEEK_END) - 65536, 0))
            text = log_file.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if not line.startswith("=== ")]


def check_artifact(path: Path) -> str:
    """Given the build's artifact, raise BuildFailed unless it is a complete, intact gzip; return its
    sha256, hashed in the same pass and recorded beside it (artifact_sha256 reads it back).

    Decompresses the whole stream in chunks (so the CRC and length in each member's trailer are
    checked) without holding it in memory, and reads each byte of the file once.
    """
    try:
        with open(path, "rb", buffering=0) as raw:
            if os.pread(raw.fileno(), 2, 0) != _GZIP_MAGIC:
                raise BuildFailed(f"artifact {path} is not a gzip file")
            hashing = _HashingReader(raw)
            with gzip.GzipFile(fileobj=io.BufferedReader(hashing, _CHUNK), mode="rb") as stream:
                buffer = bytearray(_CHUNK)
                while stream.readinto(buffer):
                    pass
            sha256 = hashing.digest.hexdigest()
            _record_sha256(path, os.fstat(raw.fileno()), sha256)
            return sha256
    except FileNotFoundError as error:
        raise BuildFailed(f"artifact {path} was not written") from error
    except EOFError as error:
        raise BuildFailed(f"artifact {path} is truncated (the gzip stream ends early)") from error
    except (OSError, zlib.error) as error:  # gzip.BadGzipFile (CRC, length) is an OSError
        raise BuildFailed(f"artifact {path} is damaged: {error}") from error


def artifact_sha256(path: Path) -> str:
    """Given a built artifact, return its sha256: the one check_artifact recorded when the file is
    unchanged since (same inode, size and mtime), else hashed now."""
    path = Path(path)
    with open(path, "rb", buffering=0) as raw:
        status = os.fstat(raw.fileno())
        try:
            recorded = (path.parent / (path.name + SHA256_SUFFIX)).read_text().split()
        except (OSError, UnicodeDecodeError):
            recorded = []
        if recorded[1:] == _identity(status):
            return recorded[0]
        hashing = _HashingReader(raw)
        buffer = bytearray(_CHUNK)
        while hashing.readinto(buffer):
            pass
        return hashing.digest.hexdigest()


class _HashingReader(io.RawIOBase):
    """A file's bytes, hashed as they are read."""

    def __init__(self, raw: io.RawIOBase):
        self.raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.raw.readinto(buffer)
        if count:
            self.digest.update(memoryview(buffer)[:count])
        return count


def _identity(status: os.stat_result) -> list[str]:
    return [str(status.st_size), str(status.st_mtime_ns), str(status.st_ino)]


def _record_sha256(path: Path, status: os.stat_result, sha256: str) -> None:
    """Keep the sha256 beside the artifact, with what identifies the file it belongs to."""
    record = path.parent / (path.name + SHA256_SUFFIX)
    try:
        record.write_text(" ".join([sha256, *_identity(status)]) + "\n")
    except OSError as error:  # the upload hashes it again: slower, never wrong
        log.warning("build.sha256_not_recorded", artifact=str(path), error=error.strerror)


def remove_workdir(workdir: Path) -> list[Path]:
    """Given a job's work folder, remove it without following symlinks; return what was left.

    Mount points inside (FUSE mounts a killed build left) are neither entered nor unmounted: that
    is the host clean-up's job. They and anything else that could not be removed (EBUSY, ...) are
    logged and returned; an empty list means the folder is gone.
    """
    workdir = Path(workdir)
    if not os.path.lexists(workdir):
        return []
    if workdir.is_symlink():
        workdir.unlink()
        return []
    real = Path(os.path.realpath(workdir))
    left: list[Path] = []
    _remove_tree(real, _mount_points_under(real), left)
    if left:
        log.warning("build.workdir_left_behind", workdir=str(workdir), paths=[str(p) for p in left])
    return left


def _remove_tree(folder: Path, mount_points: set[Path], left: list[Path]) -> bool:
    """Remove folder's contents, then folder; return False (adding to left) if anything stays."""
    if folder in mount_points:
        left.append(folder)
        return False
    complete = True
    try:
        with os.scandir(folder) as entries:
            children = list(entries)
    except OSError as error:
        log.warning("build.workdir_unreadable", path=str(folder), error=str(error))
        left.append(folder)
        return False
    for entry in children:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            complete = _remove_tree(path, mount_points, left) and complete
        else:
            complete = _remove_entry(path, os.unlink, left) and complete
    return complete and _remove_entry(folder, os.rmdir, left)


def _remove_entry(path: Path, remove: Callable[[Path], None], left: list[Path]) -> bool:
    try:
        remove(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("build.workdir_not_removed", path=str(path), error=str(error))
        left.append(path)
        return False
    return True


def _remove_or_fail(path: Path) -> None:
    left = remove_workdir(path)
    if left:
        raise OSError(f"an earlier copy could not be removed: {', '.join(map(str, left))}")


def _mount_points_under(folder: Path) -> set[Path]:
    """Given a folder, return the mount points at or below it (from the kernel's mount table)."""
    try:
        mounts = procfs.read_mounts()
    except OSError:
        return set()
    return {mount.mount_point for mount in mounts
            if mount.mount_point == folder or mount.mount_point.is_relative_to(folder)}
