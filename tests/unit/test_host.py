"""host: which mounts and devices a job's leftovers are, the commands that end them, and the job
scope, read from parsed mountinfo and prepared trees."""

from __future__ import annotations

from pathlib import Path

from esxi_watcher.host import (HostPaths, HostTools, JobScope, clean_host, detach_argv, nbd_device_of,
                               select_mounts, unmount_argvs)
from esxi_watcher.procfs import parse_mountinfo
from tests.unit.test_procfs import MOUNTINFO


# --- mountinfo --------------------------------------------------------------------------------

def test_select_mounts_by_device_fuse_and_folder_deepest_first():
    mounts = parse_mountinfo(MOUNTINFO)

    by_device = select_mounts(mounts, nbd_devices=["nbd4"])
    fuse = select_mounts(mounts, fuse_under=[Path("/tmp/packer-maas-Xy12")])
    work = select_mounts(mounts, under=[Path("/var/lib/esxi-watcher/work/job1")])

    assert sorted(m.mount_id for m in by_device) == [40, 41]
    # deepest first, the tmpfs at the folder itself is not FUSE and stays
    assert [m.mount_id for m in fuse] == [44, 43, 42]
    # any type under the job's folder; job1-other is a different folder, not a child
    assert [m.mount_id for m in work] == [45]


def test_nbd_device_of_a_mount_is_its_source_device_without_the_partition():
    mounts = {mount.mount_id: mount for mount in parse_mountinfo(MOUNTINFO)}

    assert [nbd_device_of(mounts[n]) for n in (22, 40, 41, 42, 48)] == [None, "nbd4", "nbd4", None, "nbd2"]


def test_unmount_and_detach_commands_are_argv_lists():
    fuse, block = parse_mountinfo(MOUNTINFO[MOUNTINFO.index(b"42 22") :])[0], parse_mountinfo(MOUNTINFO)[1]
    tools = HostTools(umount="/sbin/umount", fusermount="fusermount3")

    assert unmount_argvs(fuse, tools) == [
        ["fusermount3", "-u", "-z", "/tmp/packer-maas-Xy12/p1"],
        ["/sbin/umount", "-l", "/tmp/packer-maas-Xy12/p1"],
    ]
    assert unmount_argvs(block, tools) == [["/sbin/umount", "/tmp/tmp.AbC"], ["/sbin/umount", "-l", "/tmp/tmp.AbC"]]
    assert detach_argv("nbd4", HostPaths(dev_root=Path("/x/dev"))) == ["qemu-nbd", "-d", "/x/dev/nbd4"]


# --- clean_host -------------------------------------------------------------------------------


def test_job_scope_start_up_and_after_a_failed_build():
    start_up = JobScope(live_jobs={"running"}, dead_jobs=None)
    after_failure = JobScope(live_jobs={"running"}, dead_jobs={"failed", "running"})

    assert [start_up.is_dead(j) for j in ("old", "running", None)] == [True, False, False]
    assert [after_failure.is_dead(j) for j in ("failed", "old", "running", None)] == [True, False, False, False]


def test_clean_host_reads_mounts_from_its_proc_root_and_reports_an_unreadable_one(tmp_path):
    proc_root = tmp_path / "proc"
    (proc_root / "self").mkdir(parents=True)
    paths = HostPaths(sys_root=tmp_path / "sys", proc_root=proc_root, tmp_root=tmp_path / "tmp")

    unreadable = clean_host(paths, live_jobs=set(), dead_jobs=set())
    (proc_root / "self" / "mountinfo").write_bytes(MOUNTINFO)
    readable = clean_host(paths, live_jobs=set(), dead_jobs=set())

    assert [(f.kind, f.name) for f in unreadable.failed] == [("mount", "mountinfo")]
    # the prepared tree's FUSE mounts in /tmp/packer-maas-Xy12 are not under this tmp_root
    assert readable.failed == [] and readable.unmounted == [] and readable.processes_ended == []
