"""What built an image: the build recipe's fingerprint, the template's git source, the packer version,
and the job's provenance record (a JSON dict in the store, shown by `esxi-watcher show JOB`).

The fingerprint is part of what makes two builds the same: the same ISO dropped again is a duplicate
only while the recipe is unchanged. It covers the template folder's files as a build copies them
(build.prepare_workdir: not the build's leftovers output-*, the artifact, packer_cache), the sibling
scripts/ folder, build.kickstart's content and the root password, the last never as itself nor as a
fast hash: a slow salted derivation (scrypt) with a salt kept in the state dir, apart from the store,
is mixed into the digest. Symlinks count by their text and are never followed. File digests are
cached by their stat, so the fingerprint costs a walk of the folders at each intake.

The provenance record (keys may be missing on old jobs; readers use .get()):
  {"iso": {"name", "sha256", "size"}, "esxi": {...facts...},
   "template": {"path", "git_commit", "git_dirty", "fingerprint"},
   "kickstart": {"file", "root_password": "from <file>" | "template default"},
   "packer_version", "commands": [[argv...]],
   "durations": {"queued", "build", "build:<stage>", "register:<target>"} (seconds),
   "artifact": {"size", "sha256"}, "rebuild_of": job id}
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from esxi_watcher.build import DEFAULT_ARTIFACT, SCRIPTS_FOLDER, is_build_leftover
from esxi_watcher.process import run_quick

if TYPE_CHECKING:
    from esxi_watcher.config import BuildConfig, Config

log = structlog.get_logger(__name__)

FINGERPRINT_VERSION = b"esxi-watcher recipe 1\n"
SALT_FILE = "recipe-salt"  # in the state dir: the root password's derivation needs it, the store lacks it
SHORT = 12  # hex digits of a fingerprint or commit that people are shown
GIT_TIMEOUT = 10.0
PACKER_TIMEOUT = 30.0
# scrypt: 16 MiB and some 50 ms per derivation, so that a guess at the password costs as much.
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "maxmem": 64 << 20, "dklen": 32}
_CHUNK = 1 << 20
_PASSWORD_MAX = 4096  # bytes of the password file read: a password, not a file's worth
_PACKER_VERSION = re.compile(r"v?(\d+\.\d+\.\d+[\w.+-]*)")

_cache_lock = threading.Lock()
_file_digests: dict[str, tuple[tuple, str]] = {}  # path -> (stat key, sha256 of its content)
_password_digests: dict[tuple, str] = {}  # (stat key, salt) -> scrypt of the password


def short(value: str | None) -> str | None:
    """Given a fingerprint or git commit, return the part people are shown."""
    return value[:SHORT] if value else value


def recipe_fingerprint(build_config: BuildConfig, *, salt: bytes = b"") -> str:
    """Given the build configuration, return the sha256 (hex) of the build recipe: the template's
    files, the sibling scripts, the kickstart and the root password (see the module docstring).

    Never raises for what it cannot read: a missing template or an unreadable file counts as such
    (the build then says what is wrong), so two recipes differ exactly when what they read differs.
    """
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    artifact = build_config.artifact
    template, scripts = recipe_folders(build_config.template_dir)
    if template is None:
        digest.update(b"template missing\n")
    else:
        digest.update(b"template\n")
        _walk(digest, template, "", lambda name: is_build_leftover(name, artifact))
    if scripts is not None:
        digest.update(b"scripts\n")
        _walk(digest, scripts, "", None)
    digest.update(b"kickstart " + _kickstart_part(build_config.kickstart).encode() + b"\n")
    digest.update(b"root password " + _password_part(build_config.root_password_file, salt).encode() + b"\n")
    return digest.hexdigest()


def recipe_folders(template_dir: Path) -> tuple[Path | None, Path | None]:
    """Given build.template_dir, return (the template folder, its sibling scripts/ folder), resolved
    as build.prepare_workdir resolves them; None for a folder that is not there."""
    try:
        template = Path(template_dir).resolve(strict=True)
    except OSError:
        return None, None
    if not template.is_dir():
        return None, None
    scripts = template.parent / SCRIPTS_FOLDER
    if template.name == SCRIPTS_FOLDER or not scripts.is_dir():
        return template, None
    return template, scripts.resolve()


def _walk(digest, folder: Path, prefix: str, skip) -> None:
    """Add every entry under folder to the digest, by sorted relative path: type, mode and content
    (a file's sha256, a link's text); skip(name) leaves out top-level names."""
    try:
        with os.scandir(folder) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        digest.update(f"unreadable {prefix or '.'} {error.strerror}\n".encode())
        return
    for entry in children:
        if skip is not None and skip(entry.name):
            continue
        relative = prefix + entry.name
        name = os.fsencode(relative).hex()  # any byte may be in a name, newlines too
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError as error:
            digest.update(f"gone {name} {error.strerror}\n".encode())
            continue
        mode = f"{stat.S_IMODE(status.st_mode):o}"
        if stat.S_ISLNK(status.st_mode):
            digest.update(f"link {name} {os.fsencode(os.readlink(entry.path)).hex()}\n".encode())
        elif stat.S_ISDIR(status.st_mode):
            digest.update(f"dir {name} {mode}\n".encode())
            _walk(digest, Path(entry.path), relative + "/", None)
        elif stat.S_ISREG(status.st_mode):
            digest.update(f"file {name} {mode} {file_sha256(Path(entry.path), status)}\n".encode())
        # anything else (a FIFO, a socket) is not copied into a build either


def _stat_key(status: os.stat_result) -> tuple:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def file_sha256(path: Path, status: os.stat_result | None = None) -> str:
    """Given a regular file, return its content's sha256, from the cache while its stat is the same.
    Anything else (a FIFO, a device: reading them could block or never end) is named, not read."""
    try:
        status = status or os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file"
        key = _stat_key(status)
        with _cache_lock:
            cached = _file_digests.get(str(path))
        if cached and cached[0] == key:
            return cached[1]
        digest = hashlib.sha256()
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # swapped for a FIFO: no wait
        with open(descriptor, "rb", buffering=0) as file:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return "not a regular file"
            for chunk in iter(lambda: file.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as error:
        return f"unreadable:{error.strerror}"
    with _cache_lock:
        _file_digests[str(path)] = (key, digest.hexdigest())
    return digest.hexdigest()


def _kickstart_part(kickstart: Path | None) -> str:
    if kickstart is None:
        return "template's"
    return file_sha256(Path(kickstart))


def _password_part(password_file: Path | None, salt: bytes) -> str:
    """The root password's share of the fingerprint: a slow salted derivation, never the password."""
    if password_file is None:
        return "template default"
    try:
        status = os.stat(password_file)
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file"
        cache_key = (str(password_file), _stat_key(status), salt)
        with _cache_lock:
            if cache_key in _password_digests:
                return _password_digests[cache_key]
        descriptor = os.open(password_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(descriptor, "rb", buffering=0) as file:
            password = file.read(_PASSWORD_MAX + 1).rstrip(b"\r\n")
    except OSError as error:
        return f"unreadable:{error.strerror}"
    derived = hashlib.scrypt(password, salt=b"esxi-watcher root password\0" + salt, **_SCRYPT).hex()
    with _cache_lock:
        _password_digests[cache_key] = derived
    return derived


def installation_salt(state_dir: Path) -> bytes:
    """Given the state dir, return this installation's salt for the root password's derivation,
    made (random, mode 0600) on first use. Raises OSError when it can be neither read nor made."""
    path = Path(state_dir) / SALT_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(16).encode()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # made meanwhile by another process
        return path.read_bytes()
    with os.fdopen(descriptor, "wb") as file:
        file.write(value)
    return value


def fingerprint_for(config: Config) -> str:
    """Given the whole configuration, return today's recipe fingerprint (salted for this state dir)."""
    return recipe_fingerprint(config.build, salt=installation_salt(config.state_dir))


# ----- where the template comes from, and which packer -----

def checkout_top(folder: Path) -> Path | None:
    """Given a folder, return the top of the git checkout holding it (where .git is), or None."""
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate / ".git"):
            return candidate
    return None


def git_argv(folder: Path, top: Path, *arguments: str) -> list[str]:
    """Given a folder in a checkout, return the git command asking about it. safe.directory names
    the checkout, so that git answers when the service user does not own it ("dubious ownership");
    its fsmonitor is off, so that asking runs nothing of the checkout's own configuration."""
    return ["git", "-c", f"safe.directory={top}", "-c", "core.fsmonitor=false", "-C", str(folder), *arguments]


def template_source(template_dir: Path, artifact_name: str = DEFAULT_ARTIFACT) -> dict[str, Any]:
    """Given the template folder, return {"git_commit", "git_dirty"}: the checkout's HEAD and whether
    the template or its scripts differ from it (a build's leftovers aside, as in the fingerprint);
    both None when it is not in a git checkout or git cannot tell (not installed, a broken checkout)."""
    unknown = {"git_commit": None, "git_dirty": None}
    template, scripts = recipe_folders(template_dir)
    top = checkout_top(template) if template else None
    if top is None:
        return unknown
    folders = ["."] + ([os.path.relpath(scripts, template)] if scripts else [])
    folders += [f":(exclude){name}" for name in ("output-*", "packer_cache", artifact_name)]
    try:
        head = run_quick(git_argv(template, top, "rev-parse", "--verify", "--quiet", "HEAD"), timeout=GIT_TIMEOUT)
        changes = run_quick(git_argv(template, top, "status", "--porcelain", "--untracked-files=normal", "--",
                                     *folders), timeout=GIT_TIMEOUT)
    except OSError as error:  # git is not installed
        log.info("provenance.git_unavailable", template=str(template), error=error.strerror or str(error))
        return unknown
    if changes.returncode != 0:
        reason = (changes.stderr.strip().splitlines() or [f"exit {changes.returncode}"])[-1]
        log.warning("provenance.git_failed", template=str(template), reason=reason)
        return unknown
    commit = head.stdout.strip() if head.returncode == 0 else None  # None: a checkout without commits
    return {"git_commit": commit or None, "git_dirty": bool(changes.stdout.strip())}


def packer_version(environment: dict[str, str] | None = None) -> str | None:
    """Return the version of the `packer` on PATH ("1.6.6"), or None when there is none."""
    try:
        result = run_quick(["packer", "version"], timeout=PACKER_TIMEOUT, env=environment)
    except OSError:
        return None
    match = _PACKER_VERSION.search(result.stdout) if result.returncode == 0 else None
    return match.group(1) if match else None


# ----- the record -----

def kickstart_record(build_config: BuildConfig) -> dict[str, Any]:
    """Given the build configuration, return how the provenance names the kickstart settings (the
    password file's name, never its content)."""
    password_file = build_config.root_password_file
    return {"file": str(build_config.kickstart) if build_config.kickstart else None,
            "root_password": f"from {password_file}" if password_file else "template default"}


def queued_record(*, iso: str, sha256: str, size: int | None, facts: dict, build_config: BuildConfig,
                  fingerprint: str, rebuild_of: int | None = None) -> dict[str, Any]:
    """Given what intake learnt of an ISO and the recipe it is queued with, return its first record."""
    record = {"iso": {"name": iso, "sha256": sha256, "size": size}, "esxi": facts,
              "template": {"path": str(build_config.template_dir), "fingerprint": fingerprint},
              "kickstart": kickstart_record(build_config)}
    if rebuild_of is not None:
        record["rebuild_of"] = rebuild_of
    return record


def merged(record: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    """Given a provenance record and new facts, return the record with them: a dict value merges
    into the dict already there (durations of several stages), anything else replaces."""
    result = dict(record or {})
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result
