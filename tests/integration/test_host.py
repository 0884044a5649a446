"""host: leftovers of killed builds, with real processes, a prepared sysfs and real FUSE.

This kernel has no nbd module, so /sys/block/nbdN is a prepared tree and qemu-nbd a small script
that stands in for the kernel: it records its argv and clears the device's size and pid files.
Processes are real (sleep, sh, nbdfuse, nbdkit) and /proc is the real one in those tests.
Job ids are unique per test: other builds' tests may run on this machine at the same time, so the
tests act only on jobs they name (dead_jobs=...) and never end every marked process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from esxi_watcher.host import (JOB_ENVIRONMENT_VARIABLE, HostPaths, HostTools, ProcessInfo, clean_host,
                               end_processes, find_attached_nbd, find_build_processes)
from esxi_watcher.procfs import read_mounts

# --- helpers: real processes ------------------------------------------------------------------


class Spawner:
    """Starts real processes, each in its own session (like build.py's builds), and ends them all."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], job: str | None = None) -> subprocess.Popen:
        environment = {k: v for k, v in os.environ.items() if k != JOB_ENVIRONMENT_VARIABLE}
        if job is not None:
            environment[JOB_ENVIRONMENT_VARIABLE] = job
        process = subprocess.Popen(argv, env=environment, start_new_session=True)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()


@pytest.fixture
def spawner():
    spawner = Spawner()
    yield spawner
    spawner.close()


def new_job() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def dead_pid() -> int:
    """Return the pid of a process that has ended and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def group_members(pgid: int) -> set[int]:
    members = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.add(int(name))
    return members


def alive(process: subprocess.Popen) -> bool:
    return process.poll() is None


def start_group(spawner: Spawner, job: str | None) -> tuple[subprocess.Popen, int]:
    """Start a group like a build's: a marked leader and a child that scrubbed the marker.

    Return the leader and the child's pid.
    """
    leader = spawner.start(
        ["sh", "-c", f"env -u {JOB_ENVIRONMENT_VARIABLE} sleep 300 & wait"], job=job
    )
    wait_for(lambda: len(group_members(leader.pid)) == 2)
    (child,) = group_members(leader.pid) - {leader.pid}
    return leader, child


# --- helpers: a prepared sysfs and a stand-in qemu-nbd ---------------------------------------


def make_sysfs(root: Path, devices: dict[str, tuple[int, int | None]], layout: str = "block") -> Path:
    """Write root/<layout>/nbdN/{size,pid} for devices {name: (size, pid or None)}; nbd0..nbd7
    not named are free (size 0, no pid). Return root."""
    block = root / layout
    for index in range(8):
        name = f"nbd{index}"
        size, pid = devices.get(name, (0, None))
        (block / name).mkdir(parents=True, exist_ok=True)
        (block / name / "size").write_text(f"{size}\n")
        if pid is not None:
            (block / name / "pid").write_text(f"{pid}\n")
    (block / "loop0").mkdir()
    (block / "loop0" / "size").write_text("2048\n")
    return root


def make_qemu_nbd(directory: Path, sys_block: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """Write a qemu-nbd stand-in: records argv, and for -d clears the sysfs device as the kernel
    would. Return the script and the file it records to."""
    record = directory / "qemu-nbd.argv"
    script = directory / "qemu-nbd"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{record}"\n'
        f"[ {exit_code} -eq 0 ] || {{ echo 'qemu-nbd: Failed to disconnect' >&2; exit {exit_code}; }}\n"
        'name=$(basename "$2")\n'
        f'echo 0 > "{sys_block}/$name/size"\n'
        f'rm -f "{sys_block}/$name/pid"\n'
    )
    script.chmod(0o755)
    return script, record


def make_order_recording_qemu_nbd(directory: Path, sys_block: Path) -> tuple[Path, Path]:
    """A qemu-nbd stand-in that also records how many mounts of the device remain when it runs."""
    script, record = make_qemu_nbd(directory, sys_block)
    lines = script.read_text().splitlines()
    lines.insert(1, f'echo "mounts=$(grep -c " $2p[0-9]* " /proc/self/mountinfo)" >> "{record}"')
    script.write_text("\n".join(lines) + "\n")
    return script, record


def size_of(sys_root: Path, name: str) -> int:
    return int((sys_root / "block" / name / "size").read_text())


# --- processes --------------------------------------------------------------------------------


def test_build_processes_are_found_by_marker_and_by_group(spawner):
    job, other_job = new_job(), new_job()
    leader, child = start_group(spawner, job)
    other = spawner.start(["sleep", "300"], job=other_job)
    foreign = spawner.start(["sleep", "300"])

    found = find_build_processes(job_ids={job})
    everything = {info.pid: info for info in find_build_processes()}

    assert {(info.pid, info.pgid, info.job_id) for info in found} == {
        (leader.pid, leader.pid, job),
        (child, leader.pid, job),  # no marker of its own: found through its group
    }
    assert everything[other.pid].job_id == other_job
    assert everything[leader.pid].cmdline[:2] == ("sh", "-c")
    assert foreign.pid not in everything
    assert os.getpid() not in everything


def test_recorded_process_group_is_used_only_while_it_is_still_ours(spawner):
    job = new_job()
    # A group whose marked leader has exited: only unmarked members remain.
    orphaned = spawner.start(["sh", "-c", f"env -u {JOB_ENVIRONMENT_VARIABLE} sleep 300 & exit 0"], job=job)
    orphaned.wait()
    wait_for(lambda: len(group_members(orphaned.pid)) == 1)
    (remaining,) = group_members(orphaned.pid)
    # A group id recorded for the job but now led by a process that is not ours (pid reuse).
    reused = spawner.start(["sh", "-c", "sleep 300 & wait"])
    wait_for(lambda: len(group_members(reused.pid)) == 2)

    found = find_build_processes(job_ids={job}, process_groups={orphaned.pid: job, reused.pid: job})

    assert [(info.pid, info.job_id) for info in found] == [(remaining, job)]


def ignores_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(ignored & 1 << (signal.SIGTERM - 1))


def test_end_processes_terminates_and_kills_what_ignores_sigterm(spawner):
    job = new_job()
    polite = spawner.start(["sleep", "300"], job=job)
    stubborn = spawner.start(["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"], job=job)
    wait_for(lambda: ignores_sigterm(stubborn.pid))  # sh has installed its trap
    procs = find_build_processes(job_ids={job})
    gone_already = ProcessInfo(pid=dead_pid(), pgid=0, job_id=job, cmdline=("x",), start_time=1)

    started = time.monotonic()
    result = end_processes(procs + [gone_already], grace=0.5)

    assert polite.wait(timeout=5) == -signal.SIGTERM
    assert stubborn.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    assert {info.pid for info in result.ended} >= {polite.pid, stubborn.pid, gone_already.pid}
    assert result.survived == [] and result.not_ours == []


def test_end_processes_never_signals_a_reused_pid(spawner):
    foreign = spawner.start(["sleep", "300"])
    stat = Path(f"/proc/{foreign.pid}/stat").read_text()
    start_time = int(stat[stat.rfind(")") + 2 :].split()[19])
    # What we read earlier for this pid, before it was reused: same pid, other start time.
    earlier = ProcessInfo(pid=foreign.pid, pgid=foreign.pid, job_id="j", cmdline=("packer",), start_time=start_time - 1)

    with capture_logs() as logs:
        result = end_processes([earlier], grace=0.2)

    assert result.not_ours == [earlier] and result.ended == []
    time.sleep(0.2)
    assert alive(foreign)
    assert {"event": "host.process.pid_reused", "pid": foreign.pid, "job": "j", "log_level": "warning"} in logs


# --- nbd devices ------------------------------------------------------------------------------


def test_attached_nbd_devices_and_their_owners(tmp_path, spawner):
    job = new_job()
    ours = spawner.start(["sleep", "300"], job=job)
    foreign = spawner.start(["sleep", "300"])
    dev_root = tmp_path / "dev"
    # No pid file, but a living process names the device: a qemu-nbd -c still connecting.
    connecting = spawner.start(["sh", "-c", "sleep 300; :", "qemu-nbd", str(dev_root / "nbd6")])
    thread_ready, thread_stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (thread_ready.set(), thread_stop.wait()))
    thread.start()
    thread_ready.wait()
    try:
        sys_root = make_sysfs(
            tmp_path / "sys",
            {
                "nbd1": (20971520, dead_pid()),
                "nbd2": (20971520, ours.pid),
                "nbd3": (20971520, foreign.pid),
                "nbd4": (20971520, None),  # owner gone, mount still holding it
                "nbd5": (0, ours.pid),
                "nbd6": (8, None),
                "nbd7": (8, thread.native_id),  # the kernel records the thread running NBD_DO_IT
            },
        )
        wait_for(lambda: Path(f"/proc/{connecting.pid}/cmdline").read_bytes().count(b"\0") >= 4)
        devices = {d.name: d for d in find_attached_nbd(HostPaths(sys_root=sys_root, dev_root=dev_root))}
    finally:
        thread_stop.set()
        thread.join()

    assert sorted(devices, key=lambda n: int(n[3:])) == ["nbd1", "nbd2", "nbd3", "nbd4", "nbd5", "nbd6", "nbd7"]
    assert (devices["nbd1"].owner_alive, devices["nbd1"].owner_job) == (False, None)
    assert (devices["nbd2"].pid, devices["nbd2"].owner_alive, devices["nbd2"].owner_job) == (ours.pid, True, job)
    assert devices["nbd2"].owner_cmdline == ("sleep", "300") and devices["nbd2"].size == 20971520
    assert (devices["nbd3"].owner_alive, devices["nbd3"].owner_job) == (True, None)
    assert (devices["nbd4"].pid, devices["nbd4"].owner_alive) == (None, False)
    assert devices["nbd5"].owner_job == job
    assert (devices["nbd6"].pid, devices["nbd6"].owner_alive) == (connecting.pid, True)
    # nbd7's pid is a thread of this test process: the owner is the process, alive, not ours
    own_cmdline = tuple(os.fsdecode(a) for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a)
    assert (devices["nbd7"].pid, devices["nbd7"].owner_alive) == (thread.native_id, True)
    assert (devices["nbd7"].owner_cmdline, devices["nbd7"].owner_job) == (own_cmdline, None)


def test_class_block_is_read_when_block_is_absent(tmp_path):
    sys_root = make_sysfs(tmp_path / "sys", {"nbd4": (2048, dead_pid())}, layout="class/block")

    devices = find_attached_nbd(HostPaths(sys_root=sys_root))

    assert [(d.name, d.size, d.owner_alive) for d in devices] == [("nbd4", 2048, False)]


def test_clean_host_ends_dead_jobs_and_detaches_only_stale_devices(tmp_path, spawner):
    dead_job, live_job, unlisted_job = new_job(), new_job(), new_job()
    leader, child = start_group(spawner, dead_job)
    qemu_nbd_of_dead_job = spawner.start(["sleep", "300"], job=dead_job)  # qemu-nbd -c daemonizes
    live = spawner.start(["sleep", "300"], job=live_job)
    unlisted = spawner.start(["sleep", "300"], job=unlisted_job)
    foreign = spawner.start(["sleep", "300"])
    sys_root = make_sysfs(
        tmp_path / "sys",
        {
            "nbd1": (20971520, dead_pid()),
            "nbd2": (20971520, qemu_nbd_of_dead_job.pid),
            "nbd3": (20971520, foreign.pid),
            "nbd4": (20971520, live.pid),
            "nbd5": (20971520, unlisted.pid),
        },
    )
    paths = HostPaths(sys_root=sys_root, dev_root=tmp_path / "dev", tmp_root=tmp_path / "tmp")
    qemu_nbd, record = make_qemu_nbd(tmp_path, sys_root / "block")

    with capture_logs() as logs:
        report = clean_host(
            paths,
            live_jobs={live_job},
            dead_jobs={dead_job},
            work_root=tmp_path / "work",
            tools=HostTools(qemu_nbd=str(qemu_nbd)),
            grace=5,
        )

    assert leader.wait(timeout=5) == -signal.SIGTERM
    assert qemu_nbd_of_dead_job.wait(timeout=5) == -signal.SIGTERM
    wait_for(lambda: group_members(leader.pid) == set())  # the scrubbed child went with its group
    assert {info.pid for info in report.processes_ended} == {leader.pid, child, qemu_nbd_of_dead_job.pid}
    assert alive(live) and alive(unlisted) and alive(foreign)
    # Processes first: nbd2's owner was ended, so nbd2 was stale by the time devices were read.
    assert record.read_text().splitlines() == [f"-d {tmp_path}/dev/nbd1", f"-d {tmp_path}/dev/nbd2"]
    assert report.detached == ["nbd1", "nbd2"]
    assert [size_of(sys_root, f"nbd{n}") for n in range(1, 6)] == [0, 0, 20971520, 20971520, 20971520]
    assert not (sys_root / "block" / "nbd1" / "pid").exists()
    assert [(item.kind, item.name) for item in report.left_alone] == [("nbd", "nbd3"), ("nbd", "nbd4"), ("nbd", "nbd5")]
    assert "not an esxi-watcher build" in report.left_alone[0].reason
    assert report.left_alone[1].reason == f"in use by job {live_job}"
    assert report.failed == [] and report.unmounted == []
    assert report.counts() == {"processes_ended": 3, "unmounted": 0, "detached": 2, "left_alone": 3, "failed": 0}
    events = [(e["event"], e.get("device") or e.get("name"), e.get("pid")) for e in logs]
    assert ("host.nbd.left_alone", "nbd3", foreign.pid) in events
    assert ("host.nbd.detached", "nbd1", None) in events
    assert ("host.process.terminate", None, child) in events


def test_clean_host_reports_a_failed_detach_and_goes_on(tmp_path):
    sys_root = make_sysfs(tmp_path / "sys", {"nbd1": (8, dead_pid()), "nbd2": (8, dead_pid())})
    failing, record = make_qemu_nbd(tmp_path, sys_root / "block", exit_code=1)
    paths = HostPaths(sys_root=sys_root, dev_root=tmp_path / "dev", tmp_root=tmp_path / "tmp")

    report = clean_host(paths, live_jobs=set(), dead_jobs=set(), tools=HostTools(qemu_nbd=str(failing)))
    missing = clean_host(paths, live_jobs=set(), dead_jobs=set(), tools=HostTools(qemu_nbd=str(tmp_path / "nope")))

    assert len(record.read_text().splitlines()) == 2  # the second device was tried after the first failed
    assert [(f.kind, f.name) for f in report.failed] == [("nbd", "nbd1"), ("nbd", "nbd2")]
    assert report.failed[0].reason == "qemu-nbd exited 1: qemu-nbd: Failed to disconnect"
    assert report.detached == [] and size_of(sys_root, "nbd1") == 8
    assert missing.failed[0].reason.endswith("nope not found")
    hanging = tmp_path / "hanging-qemu-nbd"
    hanging.write_text("#!/bin/sh\nsleep 30\n")
    hanging.chmod(0o755)
    started = time.monotonic()
    timed_out = clean_host(paths, live_jobs=set(), dead_jobs=set(), tools=HostTools(qemu_nbd=str(hanging), timeout=0.5))
    assert time.monotonic() - started < 10
    assert [f.reason for f in timed_out.failed] == ["hanging-qemu-nbd exited -9: (killed after 0.5s)"] * 2


@pytest.fixture
def block_mounts():
    """Real tmpfs mounts whose source reads /dev/nbdNpM, as a mounted image partition shows."""
    points: list[Path] = []

    def mount(source: str, point: Path) -> Path:
        point.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", source, str(point)], check=True)
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def mounted(point: Path) -> bool:
    return any(m.mount_point == point for m in read_mounts())


def test_clean_host_unmounts_partitions_of_stale_devices_before_detaching(tmp_path, spawner, block_mounts):
    foreign = spawner.start(["sleep", "300"])
    sys_root = make_sysfs(tmp_path / "sys", {"nbd7": (20971520, dead_pid()), "nbd3": (20971520, foreign.pid)})
    # the 2019-2022 template: mount /dev/nbd4p1 $(mktemp -d), here nbd7 (and one nested mount)
    first = block_mounts("/dev/nbd7p1", tmp_path / "tmp.AbCdE" / "with space")
    nested = block_mounts("/dev/nbd7p6", first / "inner")
    foreign_mount = block_mounts("/dev/nbd3p1", tmp_path / "tmp.FgHiJ")
    qemu_nbd, record = make_order_recording_qemu_nbd(tmp_path, sys_root / "block")

    report = clean_host(
        HostPaths(sys_root=sys_root, dev_root=Path("/dev"), tmp_root=tmp_path / "tmp"),
        live_jobs=set(),
        dead_jobs=set(),
        tools=HostTools(qemu_nbd=str(qemu_nbd)),
    )

    assert [m.mount_point for m in report.unmounted] == [nested, first]  # deepest first
    assert not mounted(first) and not mounted(nested) and mounted(foreign_mount)
    assert record.read_text().splitlines() == ["mounts=0", "-d /dev/nbd7"]  # unmounted, then detached
    assert report.detached == ["nbd7"] and size_of(sys_root, "nbd3") == 20971520
    assert [(i.kind, i.name) for i in report.left_alone] == [("nbd", "nbd3")] and report.failed == []


# --- real FUSE --------------------------------------------------------------------------------


def fuse_mounted(point: Path) -> bool:
    return any(m.mount_point == point and m.is_fuse for m in read_mounts())


def start_nbdfuse(spawner: Spawner, point: Path, job: str | None) -> subprocess.Popen:
    """Mount a 1 MiB nbdkit memory disk at point as packer-maas's fuse-nbd does."""
    point.mkdir(parents=True)
    process = spawner.start(["nbdfuse", str(point), "--command", "nbdkit", "-s", "memory", "1M"], job=job)
    wait_for(lambda: fuse_mounted(point) and (point / "nbd").exists())
    return process


@pytest.fixture
def fuse_points():
    points: list[Path] = []
    yield points
    for point in points:
        if fuse_mounted(point):
            subprocess.run(["fusermount", "-u", "-z", str(point)], check=False)


def test_clean_host_unmounts_fuse_leftovers_of_dead_jobs_only(tmp_path, spawner, fuse_points):
    assert shutil.which("nbdfuse") and shutil.which("fusermount") and Path("/dev/fuse").exists()
    dead_job, live_job = new_job(), new_job()
    tmp_root, work_root = tmp_path / "tmp", tmp_path / "work"
    running = tmp_root / "packer-maas-AAAA" / "p1"  # a dead job's nbdfuse, still running
    orphaned = tmp_root / "packer-maas-BBBB" / "p 1"  # its nbdfuse was killed: ENOTCONN
    in_work = work_root / dead_job / "disk"  # under the dead job's work folder
    of_live_job = tmp_root / "packer-maas-CCCC" / "p1"
    not_ours = tmp_root / "packer-maas-DDDD" / "p1"  # someone running packer-maas by hand
    elsewhere = tmp_path / "elsewhere" / "p1"  # FUSE, but nowhere a build writes
    fuse_points.extend([running, orphaned, in_work, of_live_job, not_ours, elsewhere])
    start_nbdfuse(spawner, running, dead_job)
    killed = start_nbdfuse(spawner, orphaned, dead_job)
    killed.kill()
    killed.wait()
    start_nbdfuse(spawner, in_work, None)
    live = start_nbdfuse(spawner, of_live_job, live_job)
    foreign = start_nbdfuse(spawner, not_ours, None)
    start_nbdfuse(spawner, elsewhere, None)

    report = clean_host(
        HostPaths(sys_root=tmp_path / "sys", tmp_root=tmp_root),
        live_jobs={live_job},
        dead_jobs={dead_job},
        work_root=work_root,
        grace=5,
    )

    assert not fuse_mounted(running) and not fuse_mounted(orphaned) and not fuse_mounted(in_work)
    assert fuse_mounted(of_live_job) and fuse_mounted(not_ours) and fuse_mounted(elsewhere)
    assert alive(live) and alive(foreign)
    assert {m.mount_point for m in report.unmounted} >= {orphaned, in_work}
    assert {info.job_id for info in report.processes_ended} == {dead_job}
    assert {"nbdfuse", "nbdkit"} <= {info.program for info in report.processes_ended}
    left = {item.name: item.reason for item in report.left_alone}
    assert left[str(tmp_root / "packer-maas-CCCC")].endswith(f"of job {live_job}")
    assert left[str(tmp_root / "packer-maas-DDDD")].endswith("not started by esxi-watcher")
    assert report.failed == []


def test_fuse_leftover_is_unmounted_with_umount_when_fusermount_is_missing(tmp_path, spawner, fuse_points):
    dead_job = new_job()
    point = tmp_path / "tmp" / "packer-maas-EEEE" / "boot"
    fuse_points.append(point)
    killed = start_nbdfuse(spawner, point, dead_job)
    killed.kill()
    killed.wait()

    report = clean_host(
        HostPaths(sys_root=tmp_path / "sys", tmp_root=tmp_path / "tmp"),
        live_jobs=set(),
        dead_jobs={dead_job},
        tools=HostTools(fusermount=str(tmp_path / "no-fusermount")),
    )

    assert [m.mount_point for m in report.unmounted] == [point] and report.failed == []
    assert not fuse_mounted(point)
