"""What killed packer-maas builds leave on this host, and how to clear it.

A build (packer, make, qemu-system-x86_64, qemu-nbd, nbdfuse, nbdkit, fusefat...) runs with
``ESXI_WATCHER_JOB=<job id>`` in its environment, in its own process group. When the daemon dies
mid-build, those processes may go on, FUSE mounts may stay under the job's work dir or under
``/tmp/packer-maas-XXXX``, and ``/dev/nbdN`` devices may stay attached (docs/design.md, packer-maas's template generations).

``clean_host`` clears what belongs to jobs that are no longer running, in this order:
processes first (a live qemu-nbd would hold its device), then mounts, then nbd devices.
Anything that belongs to someone else is left alone and named in the log and the report.

Every root (/sys, /proc, /dev, /tmp) and every command is injectable, so tests point them at a
prepared tree and at stand-in scripts (the kernel here has no nbd module).

Over 400 lines on purpose: processes, mounts and nbd devices are cleared in one ordered pass that
shares its ownership checks (pidfd + start time, the job marker); split by kind, each part would
need the others' checks.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from esxi_watcher import procfs
from esxi_watcher.process import run_quick

log = structlog.get_logger(__name__)

JOB_ENVIRONMENT_VARIABLE = "ESXI_WATCHER_JOB"
PACKER_MAAS_SCRATCH_PREFIX = "packer-maas-"  # mktemp -d /tmp/packer-maas-XXXX in scripts/fuse-nbd

_NBD_NAME = re.compile(r"nbd(\d+)\Z")
_NBD_SOURCE = re.compile(r"/dev/(nbd\d+)(?:p\d+)?\Z")

IsDead = Callable[[str | None], bool]  # given a job id (None: not ours), is that job over?


@dataclass(frozen=True)
class HostPaths:
    """Where the kernel's trees are; tests point these at prepared trees."""

    sys_root: Path = Path("/sys")
    proc_root: Path = procfs.PROC
    dev_root: Path = Path("/dev")
    tmp_root: Path = Path("/tmp")


@dataclass(frozen=True)
class HostTools:
    """The commands cleaning runs (argv[0] of each); tests point them at stand-in scripts."""

    qemu_nbd: str = "qemu-nbd"
    umount: str = "umount"
    fusermount: str = "fusermount"
    timeout: float = 60.0


@dataclass(frozen=True)
class ProcessInfo:
    """A process as read from /proc; start_time (field 22 of stat, clock ticks after boot) tells it
    from a later process given the same pid: a process whose start time no longer matches is
    never signalled."""

    pid: int
    pgid: int
    job_id: str | None
    cmdline: tuple[str, ...]
    start_time: int = 0

    @property
    def program(self) -> str:
        return os.path.basename(self.cmdline[0]) if self.cmdline else "?"


@dataclass(frozen=True)
class NbdDevice:
    """An attached /dev/nbdN: size in 512-byte sectors as sysfs gives it, and its owner."""

    name: str
    size: int
    pid: int | None
    owner_alive: bool
    owner_cmdline: tuple[str, ...] = ()
    owner_job: str | None = None


@dataclass(frozen=True)
class LeftAlone:
    """Something found but not touched: kind is process, mount or nbd."""

    kind: str
    name: str
    reason: str


@dataclass(frozen=True)
class CleanupFailure:
    """An action that did not work; the rest of the cleaning went on."""

    kind: str
    name: str
    reason: str


@dataclass
class EndResult:
    """What end_processes did: ended (gone at the end), not_ours (pid reused), survived."""

    ended: list[ProcessInfo] = field(default_factory=list)
    not_ours: list[ProcessInfo] = field(default_factory=list)
    survived: list[ProcessInfo] = field(default_factory=list)


@dataclass
class CleanupReport:
    processes_ended: list[ProcessInfo] = field(default_factory=list)
    unmounted: list[procfs.Mount] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    failed: list[CleanupFailure] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "processes_ended": len(self.processes_ended),
            "unmounted": len(self.unmounted),
            "detached": len(self.detached),
            "left_alone": len(self.left_alone),
            "failed": len(self.failed),
        }


# --- reading /proc ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcessView:
    info: ProcessInfo
    alive: bool


def _read_process(proc_root: Path, pid: int) -> _ProcessView | None:
    stat = procfs.read_stat(pid, proc_root)
    if stat is None:
        return None
    info = ProcessInfo(
        pid=pid,
        pgid=stat.pgid,
        job_id=procfs.environment_variable(pid, JOB_ENVIRONMENT_VARIABLE, proc_root) or None,
        cmdline=procfs.command_line(pid, proc_root),
        start_time=stat.start_time,
    )
    return _ProcessView(info, stat.alive)


def _snapshot(proc_root: Path) -> dict[int, _ProcessView]:
    """Return every process under proc_root, by pid."""
    try:
        pids = procfs.pids(proc_root)
    except OSError:
        return {}
    views = (_read_process(proc_root, pid) for pid in pids)
    return {view.info.pid: view for view in views if view is not None}


def _own_process_group() -> int:
    try:
        return os.getpgid(0)
    except OSError:
        return -1


def find_build_processes(
    paths: HostPaths = HostPaths(),
    job_ids: Set[str] | None = None,
    process_groups: Mapping[int, str] | None = None,
) -> list[ProcessInfo]:
    """Return the living processes of our builds, limited to job_ids when given.

    A process is a build's when its environment carries ESXI_WATCHER_JOB, or when it shares the
    process group of such a process (a child that scrubbed its environment). process_groups maps
    process group ids the daemon recorded to their job: their members count too, unless the
    group's leader still lives without that job's marker (the pgid was reused by someone else).
    Our own process and our own process group are never included.
    """
    processes = _snapshot(paths.proc_root)
    own_pid, own_group = os.getpid(), _own_process_group()
    members: dict[int, list[_ProcessView]] = {}
    for view in processes.values():
        if view.alive and view.info.pid != own_pid:
            members.setdefault(view.info.pgid, []).append(view)

    def wanted(job: str | None) -> bool:
        return job is not None and (job_ids is None or job in job_ids)

    found: dict[int, ProcessInfo] = {}
    group_jobs: dict[int, str] = {}
    for pgid, group in members.items():
        jobs = {view.info.job_id for view in group if view.info.job_id is not None}
        for view in group:
            if wanted(view.info.job_id):
                found[view.info.pid] = view.info
        if len(jobs) == 1 and pgid != own_group:
            group_jobs[pgid] = next(iter(jobs))
        elif len(jobs) > 1:
            log.warning("host.process_group.mixed_jobs", pgid=pgid, jobs=sorted(jobs))
    for pgid, job in (process_groups or {}).items():
        if _recorded_group_is_ours(processes, members.get(pgid, []), pgid, job, own_group):
            group_jobs.setdefault(pgid, job)
    for pgid, job in group_jobs.items():
        if not wanted(job):
            continue
        for view in members.get(pgid, []):
            if view.info.job_id is None:
                found.setdefault(view.info.pid, _with_job(view.info, job))
    return sorted(found.values(), key=lambda info: info.pid)


def _recorded_group_is_ours(
    processes: Mapping[int, _ProcessView],
    group: Sequence[_ProcessView],
    pgid: int,
    job: str,
    own_group: int,
) -> bool:
    """Given a process group the daemon recorded for job, tell whether it still is that build's.

    While any member lives, the kernel does not hand out the group's id as a new pid, so a group
    without a leader is the original one; a living leader must carry the job's marker.
    """
    if pgid == own_group or pgid <= 1:
        return False
    if any(view.info.job_id not in (None, job) for view in group):
        log.warning("host.process_group.other_job", pgid=pgid, job=job)
        return False
    leader = processes.get(pgid)
    if leader is not None and leader.info.job_id != job:
        log.warning("host.process_group.reused", pgid=pgid, job=job, leader=leader.info.program)
        return False
    return True


def _with_job(info: ProcessInfo, job: str) -> ProcessInfo:
    return ProcessInfo(info.pid, info.pgid, job, info.cmdline, info.start_time)


# --- ending processes -------------------------------------------------------------------------


def _is_same_living_process(proc_root: Path, info: ProcessInfo) -> bool:
    stat = procfs.read_stat(info.pid, proc_root)
    return stat is not None and stat.alive and stat.start_time == info.start_time


def _send_signal(proc_root: Path, info: ProcessInfo, signal_number: int) -> bool:
    """Signal info's process if the pid still names it; return whether the signal was sent.

    A pidfd is opened first and the identity checked after: if the check passes, the pidfd can
    only refer to that same process, so a pid reused in between is never signalled.
    """
    pidfd = None
    try:
        pidfd = os.pidfd_open(info.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = None  # no pidfd on this kernel or Python: fall back to kill() after the check
    try:
        if not _is_same_living_process(proc_root, info):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal_number)
        else:
            os.kill(info.pid, signal_number)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _wait_until_gone(proc_root: Path, procs: list[ProcessInfo], seconds: float) -> list[ProcessInfo]:
    """Wait up to seconds for procs to end; return those still living."""
    deadline = time.monotonic() + seconds
    remaining = [info for info in procs if _is_same_living_process(proc_root, info)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [info for info in remaining if _is_same_living_process(proc_root, info)]
    return remaining


def end_processes(
    procs: Iterable[ProcessInfo],
    grace: float = 10.0,
    *,
    paths: HostPaths = HostPaths(),
    kill_wait: float = 5.0,
) -> EndResult:
    """SIGTERM procs, wait up to grace seconds, SIGKILL those left, wait up to kill_wait.

    A pid whose start time no longer matches is someone else's now and is never signalled;
    processes that vanish on their own count as ended.
    """
    result = EndResult()
    procs = [info for info in procs if info.pid > 1 and info.pid != os.getpid()]
    signalled = []
    for info in procs:
        if _send_signal(paths.proc_root, info, signal.SIGTERM):
            log.info("host.process.terminate", pid=info.pid, job=info.job_id, program=info.program)
            signalled.append(info)
            continue
        started = procfs.start_time(info.pid, paths.proc_root)
        if started is not None and started != info.start_time:
            log.warning("host.process.pid_reused", pid=info.pid, job=info.job_id)
            result.not_ours.append(info)
        else:
            result.ended.append(info)  # gone (or a zombie) before we signalled it
    left = _wait_until_gone(paths.proc_root, signalled, grace)
    for info in left:
        if _send_signal(paths.proc_root, info, signal.SIGKILL):
            log.warning("host.process.kill", pid=info.pid, job=info.job_id, program=info.program)
    survivors = _wait_until_gone(paths.proc_root, left, kill_wait) if left else []
    for info in signalled:
        if info in survivors:
            log.error("host.process.survived", pid=info.pid, job=info.job_id, program=info.program)
            result.survived.append(info)
        else:
            result.ended.append(info)
    return result


# --- nbd devices ------------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _block_dir(sys_root: Path) -> Path:
    block = sys_root / "block"
    return block if block.is_dir() else sys_root / "class" / "block"


def find_attached_nbd(paths: HostPaths = HostPaths()) -> list[NbdDevice]:
    """Return the /dev/nbdN devices that are attached (size > 0 or a pid file), with their owner.

    The owner is the pid in sysfs; without one, a living process naming /dev/nbdN on its command
    line (a qemu-nbd -c still connecting) is taken as owner so it is not pulled from under it.
    """
    block_dir = _block_dir(paths.sys_root)
    try:
        names = [name for name in os.listdir(block_dir) if _NBD_NAME.match(name)]
    except OSError:
        return []
    devices = []
    processes: dict[int, _ProcessView] | None = None
    for name in sorted(names, key=lambda n: int(n[3:])):
        size = _read_int(block_dir / name / "size") or 0
        pid = _read_int(block_dir / name / "pid")
        if size == 0 and pid is None:
            continue
        if pid is None:
            if processes is None:
                processes = _snapshot(paths.proc_root)
            owner = _process_naming(processes, str(paths.dev_root / name))
        else:
            owner = _read_process(paths.proc_root, procfs.thread_group(pid, paths.proc_root))
        devices.append(_nbd_device(name, size, pid, owner))
    return devices


def _process_naming(processes: Mapping[int, _ProcessView], argument: str) -> _ProcessView | None:
    for view in processes.values():
        if view.alive and argument in view.info.cmdline:
            return view
    return None


def _nbd_device(name: str, size: int, pid: int | None, owner: _ProcessView | None) -> NbdDevice:
    if owner is None or not owner.alive:
        return NbdDevice(name, size, pid, owner_alive=False)
    return NbdDevice(
        name,
        size,
        pid if pid is not None else owner.info.pid,
        owner_alive=True,
        owner_cmdline=owner.info.cmdline,
        owner_job=owner.info.job_id,
    )


def _nbd_verdict(device: NbdDevice, is_dead: IsDead) -> str | None:
    """Given a device, return None if it is stale, or why it must be left alone."""
    if not device.owner_alive:
        return None
    if device.owner_job is None:
        program = os.path.basename(device.owner_cmdline[0]) if device.owner_cmdline else "?"
        return f"in use by process {device.pid} ({program}), not an esxi-watcher build"
    if is_dead(device.owner_job):
        return None
    return f"in use by job {device.owner_job}"


# --- mounts -----------------------------------------------------------------------------------


def nbd_device_of(mount: procfs.Mount) -> str | None:
    """Given a mount of /dev/nbdN or /dev/nbdNpM, return nbdN; None for any other source."""
    match = _NBD_SOURCE.match(mount.source)
    return match.group(1) if match else None


def _is_at_or_under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def select_mounts(
    mounts: Iterable[procfs.Mount],
    *,
    under: Iterable[Path] = (),
    fuse_under: Iterable[Path] = (),
    nbd_devices: Iterable[str] = (),
) -> list[procfs.Mount]:
    """Return the mounts at or under `under`, FUSE mounts at or under `fuse_under`, and mounts of
    the given nbd devices (or their partitions), deepest first: the order to unmount them in."""
    under, fuse_under, nbd_devices = list(under), list(fuse_under), set(nbd_devices)
    chosen = [
        mount
        for mount in mounts
        if nbd_device_of(mount) in nbd_devices
        or any(_is_at_or_under(mount.mount_point, d) for d in under)
        or (mount.is_fuse and any(_is_at_or_under(mount.mount_point, d) for d in fuse_under))
    ]
    return sorted(chosen, key=lambda m: (len(m.mount_point.parts), m.mount_id), reverse=True)


# --- running commands -------------------------------------------------------------------------

def _run(argv: Sequence[str], timeout: float) -> str | None:
    """Run argv through the process helper; return None when it exits 0, else why it failed."""
    name = os.path.basename(argv[0])
    try:
        completed = run_quick(argv, timeout=timeout)
    except FileNotFoundError:
        return f"{argv[0]} not found"
    except OSError as error:
        return f"{name}: {error}"
    if completed.returncode != 0:
        lines = (completed.stderr or "").strip().splitlines()
        return f"{name} exited {completed.returncode}" + (f": {lines[-1]}" if lines else "")
    return None


def unmount_argvs(mount: procfs.Mount, tools: HostTools = HostTools()) -> list[list[str]]:
    """Given a mount, return the commands to try in turn: lazy for FUSE (its daemon may be dead,
    the mount point then answers ENOTCONN), a plain umount first for a block device."""
    point = os.fspath(mount.mount_point)
    if mount.is_fuse:
        return [[tools.fusermount, "-u", "-z", point], [tools.umount, "-l", point]]
    return [[tools.umount, point], [tools.umount, "-l", point]]


def detach_argv(name: str, paths: HostPaths = HostPaths(), tools: HostTools = HostTools()) -> list[str]:
    return [tools.qemu_nbd, "-d", os.fspath(paths.dev_root / name)]


def _unmount(mount: procfs.Mount, tools: HostTools) -> str | None:
    errors = []
    for argv in unmount_argvs(mount, tools):
        error = _run(argv, tools.timeout)
        if error is None:
            return None
        errors.append(error)
    return "; ".join(errors)


def _nbd_is_attached(paths: HostPaths, name: str) -> bool:
    device_dir = _block_dir(paths.sys_root) / name
    return (_read_int(device_dir / "size") or 0) > 0 or (device_dir / "pid").exists()


def _detach(name: str, paths: HostPaths, tools: HostTools) -> str | None:
    error = _run(detach_argv(name, paths, tools), tools.timeout)
    if error is not None:
        return error
    deadline = time.monotonic() + 2.0
    while _nbd_is_attached(paths, name):
        if time.monotonic() >= deadline:
            return "still attached after qemu-nbd -d"
        time.sleep(0.05)
    return None


# --- the entry point --------------------------------------------------------------------------


class JobScope:
    """Tells whether a job is dead: not live, and (when dead_jobs is given) one of them.

    dead_jobs=None is the start-up case: every job not running is dead.
    """

    def __init__(self, live_jobs: Set[str], dead_jobs: Set[str] | None):
        self.live_jobs = frozenset(live_jobs)
        self.dead_jobs = None if dead_jobs is None else frozenset(dead_jobs)

    def is_dead(self, job: str | None) -> bool:
        if job is None or job in self.live_jobs:
            return False
        return self.dead_jobs is None or job in self.dead_jobs


def clean_host(
    paths: HostPaths = HostPaths(),
    *,
    live_jobs: Set[str],
    dead_jobs: Set[str] | None = None,
    work_root: Path | None = None,
    extra_dirs: Iterable[Path] = (),
    process_groups: Mapping[int, str] | None = None,
    tools: HostTools = HostTools(),
    grace: float = 10.0,
) -> CleanupReport:
    """Clear what dead builds left: their processes, then their mounts, then stale nbd devices.

    live_jobs are the builds running now: nothing of theirs is touched. dead_jobs=None means every
    other job is dead (start-up); otherwise only those listed are cleaned (after a failed build).
    work_root is <state_dir>/work: any mount under the folder of a job named in dead_jobs goes, so
    deleting that folder never walks into a mounted image (other folders there are left alone). FUSE mounts under /tmp/packer-maas-* and extra_dirs
    go when no living process outside dead jobs names that folder. process_groups maps process
    group ids recorded for builds to their job. Failures are reported, never raised.
    """
    scope = JobScope(live_jobs, dead_jobs)
    is_dead = scope.is_dead
    report = CleanupReport()
    _end_dead_processes(paths, is_dead, process_groups, grace, report)

    devices = find_attached_nbd(paths)
    stale_devices = []
    for device in devices:
        reason = _nbd_verdict(device, is_dead)
        if reason is None:
            stale_devices.append(device.name)
        else:
            _leave_alone(report, "nbd", device.name, reason, pid=device.pid, job=device.owner_job)

    try:
        mounts = procfs.read_mounts(paths.proc_root)
    except OSError as error:
        report.failed.append(CleanupFailure("mount", "mountinfo", str(error)))
        log.error("host.mountinfo.unreadable", error=str(error))
        mounts = []
    dead_dirs = _dead_job_dirs(mounts, work_root, scope)
    scratch_dirs = _unused_scratch_dirs(paths, mounts, extra_dirs, is_dead, report)
    targets = select_mounts(mounts, under=dead_dirs, fuse_under=scratch_dirs, nbd_devices=stale_devices)
    for mount in targets:
        _unmount_one(mount, tools, report)
    _confirm_unmounted(paths, report)

    for name in stale_devices:
        error = _detach(name, paths, tools)
        if error is None:
            log.info("host.nbd.detached", device=name)
            report.detached.append(name)
        else:
            log.error("host.nbd.detach_failed", device=name, error=error)
            report.failed.append(CleanupFailure("nbd", name, error))
    log.info("host.cleaned", **report.counts())
    return report


def _end_dead_processes(
    paths: HostPaths,
    is_dead: IsDead,
    process_groups: Mapping[int, str] | None,
    grace: float,
    report: CleanupReport,
) -> None:
    procs = [
        info
        for info in find_build_processes(paths, process_groups=process_groups)
        if is_dead(info.job_id)
    ]
    if not procs:
        return
    result = end_processes(procs, grace, paths=paths)
    report.processes_ended.extend(result.ended)
    for info in result.survived:
        report.failed.append(
            CleanupFailure("process", str(info.pid), f"{info.program} of job {info.job_id} survived SIGKILL")
        )


def _leave_alone(report: CleanupReport, kind: str, name: str, reason: str, **fields: object) -> None:
    """Record something not touched: a warning when it is someone else's, info for a running job."""
    report.left_alone.append(LeftAlone(kind, name, reason))
    emit = log.info if fields.get("job") else log.warning
    emit(f"host.{kind}.left_alone", name=name, reason=reason, **fields)


def _dead_job_dirs(mounts: Iterable[procfs.Mount], work_root: Path | None, scope: JobScope) -> list[Path]:
    """Return the work dirs of dead jobs that hold a mount.

    Only folders named after a job listed in dead_jobs: a folder in work_root that no job of ours
    names (an admin's, another tool's) is not ours to unmount, even at start-up.
    """
    if work_root is None or scope.dead_jobs is None:
        return []
    dirs = set()
    for mount in mounts:
        if work_root in mount.mount_point.parents:
            job = mount.mount_point.relative_to(work_root).parts[0]
            if job in scope.dead_jobs and scope.is_dead(job):
                dirs.add(work_root / job)
    return sorted(dirs)


def _scratch_dir(mount: procfs.Mount, tmp_root: Path, extra_dirs: Sequence[Path]) -> Path | None:
    """Given a FUSE mount, return the /tmp/packer-maas-XXXX (or extra) folder it is in, if any."""
    for directory in extra_dirs:
        if _is_at_or_under(mount.mount_point, directory):
            return directory
    if tmp_root in mount.mount_point.parents:
        top = mount.mount_point.relative_to(tmp_root).parts[0]
        if top.startswith(PACKER_MAAS_SCRATCH_PREFIX):
            return tmp_root / top
    return None


def _unused_scratch_dirs(
    paths: HostPaths,
    mounts: Iterable[procfs.Mount],
    extra_dirs: Iterable[Path],
    is_dead: IsDead,
    report: CleanupReport,
) -> list[Path]:
    """Return scratch folders holding FUSE mounts that no living process outside dead jobs names.

    packer-maas's fuse-nbd names its folder on every command line it starts (qemu-nbd --socket,
    nbdfuse, fusefat), so a living user shows there.
    """
    extra = list(extra_dirs)
    candidates = {
        directory
        for mount in mounts
        if mount.is_fuse
        for directory in [_scratch_dir(mount, paths.tmp_root, extra)]
        if directory is not None
    }
    if not candidates:
        return []
    processes = [view.info for view in _snapshot(paths.proc_root).values() if view.alive]
    unused = []
    for directory in sorted(candidates):
        users = [info for info in processes if _names_directory(info, directory) and not is_dead(info.job_id)]
        if not users:
            unused.append(directory)
            continue
        user = users[0]
        owner = f"job {user.job_id}" if user.job_id else "a process not started by esxi-watcher"
        _leave_alone(
            report,
            "mount",
            os.fspath(directory),
            f"used by process {user.pid} ({user.program}) of {owner}",
            pid=user.pid,
            job=user.job_id,
        )
    return unused


def _names_directory(info: ProcessInfo, directory: Path) -> bool:
    text = os.fspath(directory)
    return any(
        argument == text or (text + "/") in argument or argument.endswith("=" + text)
        for argument in info.cmdline
    )


def _unmount_one(mount: procfs.Mount, tools: HostTools, report: CleanupReport) -> None:
    error = _unmount(mount, tools)
    fields = {"mount_point": os.fspath(mount.mount_point), "fstype": mount.fstype, "source": mount.source}
    if error is None:
        log.info("host.mount.unmounted", **fields)
        report.unmounted.append(mount)
    else:
        log.error("host.mount.unmount_failed", error=error, **fields)
        report.failed.append(CleanupFailure("mount", os.fspath(mount.mount_point), error))


def _confirm_unmounted(paths: HostPaths, report: CleanupReport) -> None:
    """Move mounts whose command succeeded but which are still in mountinfo to the failures."""
    if not report.unmounted:
        return
    try:
        remaining = {mount.mount_id for mount in procfs.read_mounts(paths.proc_root)}
    except OSError:
        return
    for mount in [m for m in report.unmounted if m.mount_id in remaining]:
        report.unmounted.remove(mount)
        report.failed.append(
            CleanupFailure("mount", os.fspath(mount.mount_point), "still mounted after unmounting")
        )
