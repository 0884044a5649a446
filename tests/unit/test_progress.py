"""BuildProgress from Packer's output and the serial console; SerialTail on a growing file."""

from __future__ import annotations

import os

from esxi_watcher.progress import STAGES, BuildProgress, SerialTail, packer_text, serial_tail

# Packer 1.6.6 -machine-readable output of the qemu test template (tests/templates/qemu), trimmed.
MACHINE_READABLE = """\
1795643690,,ui,say,qemu: output will be in this color.
1795643690,,ui,say,==> qemu: Retrieving ISO
1795643690,,ui,say,==> qemu: Trying /tmp/vmt/ok.iso
1795643695,,ui,say,==> qemu: Starting VM%!(PACKER_COMMA) booting from CD-ROM
1795643698,,ui,say,==> qemu: Waiting 3s for boot...
1795643700,,ui,say,==> qemu: Connecting to VM via VNC (127.0.0.1:5935)
1795643700,,ui,say,==> qemu: Typing the boot command over VNC...
1795643706,,ui,message,    qemu: No communicator is configured -- skipping StepWaitGuestAddress
1795643706,,ui,say,==> qemu: Waiting for shutdown...
1795643711,,ui,say,==> qemu: Running post-processor: shell-local
1795643711,,ui,message,    qemu (shell-local): post.sh: adding curtin hooks to partition 1
1795643712,,ui,say,==> qemu: Running post-processor: compress
1795643712,,ui,say,==> qemu (compress): Archive vmware-esxi.dd.gz completed
1795643712,,ui,say,Build 'qemu' finished after 16 seconds 698 milliseconds.
1795643712,,ui,say,\\n==> Builds finished. The artifacts of successful builds are:
1795643712,qemu,artifact,1,file,0,vmware-esxi.dd.gz
"""

# The same steps as `make` shows them (plain output of packer build with an HCL template).
PLAIN = """\
qemu.esxi: output will be in this color.
==> qemu.esxi: Retrieving ISO
==> qemu.esxi: Starting VM, booting from CD-ROM
==> qemu.esxi: Typing the boot command over VNC...
==> qemu.esxi: Waiting for shutdown...
==> qemu.esxi: Running post-processor:  (type shell-local)
==> qemu.esxi: Running post-processor:  (type compress)
Build 'qemu.esxi' finished after 41 minutes 3 seconds.
"""


def _stages_seen(progress: BuildProgress, lines, feed) -> list[str]:
    seen = [progress.stage]
    for line in lines:
        feed(line)
        if progress.stage != seen[-1]:
            seen.append(progress.stage)
    return seen


def test_machine_readable_output_walks_through_the_builder_stages():
    progress = BuildProgress()

    seen = _stages_seen(progress, MACHINE_READABLE.splitlines(), progress.feed_packer)

    assert seen == ["starting", "iso loaded", "boot command typed", "installing", "post-processing",
                    "compressing", "done"]
    assert progress.installer_error is None


def test_plain_output_walks_through_the_same_stages():
    progress = BuildProgress()

    seen = _stages_seen(progress, PLAIN.splitlines(), progress.feed_packer)

    assert seen == ["starting", "iso loaded", "boot command typed", "installing", "post-processing",
                    "compressing", "done"]


def test_serial_console_tells_when_the_installer_finished():
    progress = BuildProgress()
    for line in MACHINE_READABLE.splitlines()[:9]:  # up to "Waiting for shutdown..."
        progress.feed_packer(line)
    serial = ["", "ISOLINUX 6.04 20200816  Copyright (C) 1994-2015 H. Peter Anvin et al",
              "boot: install ks=cdrom:/KS.CFG\x1b[?7h", "installer: reading ks=cdrom:/KS.CFG",
              "installer: writing disk /dev/vda", "installer: done, powering off",
              "[    3.060181] reboot: Power down"]

    seen = _stages_seen(progress, serial, progress.feed_serial)

    assert seen == ["installing", "waiting for shutdown"]
    progress.feed_packer("==> qemu: Running post-processor: shell-local")
    assert progress.stage == "post-processing"
    progress.feed_serial("installer: writing disk /dev/vda")  # late console lines never go back
    assert progress.stage == "post-processing"


def test_installer_output_before_packer_has_typed_does_not_count_as_installing():
    progress = BuildProgress()
    progress.feed_packer("==> qemu: Starting VM, booting from CD-ROM")

    progress.feed_serial("ISOLINUX 6.04 20200816  Copyright (C) 1994-2015 H. Peter Anvin et al")

    assert progress.stage == "iso loaded"


def test_fake_installer_error_is_reported_with_its_detail():
    progress = BuildProgress()
    for line in ("installer: reading ks=cdrom:/KS.CFG",
                 "An error has occurred while parsing the installation script", "",
                 'error:cdrom:/KS.CFG:line 3: "install" requires --firstdisk or --disk.'):
        progress.feed_serial(line)

    assert progress.installer_error == (
        "An error has occurred while parsing the installation script: "
        'error:cdrom:/KS.CFG:line 3: "install" requires --firstdisk or --disk.')


def test_esxi_wording_of_a_kickstart_error_on_the_console():
    progress = BuildProgress()
    for line in ("\x1b[1;37mAn error has occurred while parsing the installation script\x1b[0m\r",
                 "\r", "error:/vmfs/volumes/mpx.vmhba32:C0:T0:L0/KS.CFG:line 5: expected a disk",
                 "", "Press <ENTER> to reboot"):
        progress.feed_serial(line)

    assert progress.installer_error.startswith(
        "An error has occurred while parsing the installation script: "
        "error:/vmfs/volumes/mpx.vmhba32:C0:T0:L0/KS.CFG:line 5: expected a disk")


def test_kernel_messages_with_the_word_error_are_not_installer_errors():
    progress = BuildProgress()
    progress.feed_serial("[    0.412345] ACPI Error: AE_NOT_FOUND, While resolving a named reference")
    progress.feed_serial("[    1.000000] blk_update_request: I/O error, dev fd0, sector 0")

    assert progress.installer_error is None


def test_packer_text_strips_prefixes_and_ignores_other_machine_readable_types():
    assert packer_text("1795643695,,ui,say,==> qemu: Starting VM%!(PACKER_COMMA) booting") == \
        "Starting VM, booting"
    assert packer_text("1795643712,qemu,artifact,1,file,0,vmware-esxi.dd.gz") is None
    assert packer_text("==> qemu (shell-local): post.sh: done") == "post.sh: done"
    assert packer_text("    qemu: No communicator is set") == "No communicator is set"
    assert STAGES[0] == "starting" and STAGES[-1] == "done"


def test_serial_tail_returns_only_new_complete_lines(tmp_path):
    path = tmp_path / "serial.log"
    tail = SerialTail(path)
    assert tail.read_lines() == []  # qemu has not created it yet

    path.write_bytes(b"ISOLINUX 6.04\r\nboot: ")
    assert tail.read_lines() == ["ISOLINUX 6.04"]
    assert tail.read_lines() == []
    with open(path, "ab") as handle:
        handle.write(b"install ks=cdrom:/KS.CFG\r\ninstaller: reading ks=cdrom:/KS.CFG\ninstaller: wri")
    assert tail.read_lines() == ["boot: install ks=cdrom:/KS.CFG", "installer: reading ks=cdrom:/KS.CFG"]
    with open(path, "ab") as handle:
        handle.write(b"ting disk /dev/vda\n\xff\n")
    assert tail.read_lines() == ["installer: writing disk /dev/vda", "\ufffd"]


def test_serial_tail_starts_over_when_the_file_is_recreated(tmp_path):
    path = tmp_path / "serial.log"
    path.write_bytes(b"first boot\n")
    tail = SerialTail(path)
    assert tail.read_lines() == ["first boot"]

    replacement = tmp_path / "serial.log.new"
    replacement.write_bytes(b"second boot\n")
    os.replace(replacement, path)
    assert tail.read_lines() == ["second boot"]
    path.write_bytes(b"x\n")  # truncated and rewritten in place
    assert tail.read_lines() == ["x"]


def test_serial_tail_function_gives_the_last_clean_lines(tmp_path):
    path = tmp_path / "serial.log"
    path.write_bytes(b"".join(f"line {n}\r\n".encode() for n in range(30)) + b"\x1b[?7h\n\n")

    assert serial_tail(path, count=3) == ["line 27", "line 28", "line 29"]
    assert serial_tail(tmp_path / "missing.log") == []


def test_console_lines_in_packers_debug_log_count_as_serial_lines():
    # packer-maas's template has `-serial stdio`; with PACKER_LOG=1 Packer logs the guest's console.
    progress = BuildProgress()
    for line in ("==> qemu: Typing the boot command over VNC...",
                 "2026/11/25 22:06:37 packer-builder-qemu plugin: Qemu stdout: installer: reading ks=x",
                 "2026/11/25 22:06:38 packer-plugin-qemu_v1.1.0_x5.0_linux_amd64 plugin: Qemu stdout: "
                 "An error has occurred while parsing the installation script",
                 "2026/11/25 22:06:38 packer-builder-qemu plugin: Qemu stdout: error:x:line 1: bad"):
        progress.feed_packer(line)

    assert progress.stage == "installing"
    assert progress.installer_error == "An error has occurred while parsing the installation script: error:x:line 1: bad"


# ----- JobProgress: the one text of the status line, `status` and the one-shot bar -----

from esxi_watcher.progress import (JobProgress, bar_line, building_text, clock,  # noqa: E402
                                   uploading_text)

GIB = 1 << 30


def test_a_build_shows_its_stage_and_whole_minutes():
    assert building_text("VMware-8.0U2", "installing", 12 * 60 + 59) == "building VMware-8.0U2 (12 min, installing)"
    progress = JobProgress("VMware-8.0U2", now=100.0)
    assert progress.text(100.0) == "building VMware-8.0U2 (0 min, starting)"
    assert progress.build_stage("installing", 130.0) and not progress.build_stage("installing", 140.0)
    assert progress.note(100.0 + 125) == "2 min, installing"  # what `status` shows
    assert bar_line(progress, 100.0 + 125) == "[2:05] building VMware-8.0U2 (2 min, installing)"


def test_an_upload_shows_its_share_size_and_eta():
    assert uploading_text("esxi/8.0.2", "site-a", None, 2 * GIB, 0) == "uploading esxi/8.0.2 to site-a"
    assert (uploading_text("esxi/8.0.2", "site-a", 0.45, int(2.6 * GIB), 49.2)
            == "uploading esxi/8.0.2 to site-a: 45% (1.2 GiB of 2.6 GiB, ETA 1 min)")
    assert uploading_text("esxi/8.0.2", "b", 0.01, GIB, 5.0) == "uploading esxi/8.0.2 to b: 1% (10.2 MiB of 1.0 GiB)"
    assert uploading_text("esxi/8.0.2", "b", 1.0, GIB, 60.0) == "uploading esxi/8.0.2 to b: 100% (1.0 GiB of 1.0 GiB)"
    progress = JobProgress("VMware-8.0U2", now=0.0)
    progress.upload_begins("esxi/8.0.2", "site-a", 4 * GIB, now=600.0)
    progress.uploaded(0.25, now=700.0)
    assert progress.text(700.0) == "uploading esxi/8.0.2 to site-a: 25% (1.0 GiB of 4.0 GiB, ETA 5 min)"
    assert progress.note(700.0) == progress.text(700.0)
    assert bar_line(progress, 700.0) == ("[11:40] [#####...............] uploading esxi/8.0.2 to site-a: 25% "
                                         "(1.0 GiB of 4.0 GiB, ETA 5 min)")


def test_the_store_gets_an_upload_every_5_percent_or_5_seconds_never_per_chunk():
    progress = JobProgress("x", now=0.0)
    progress.upload_begins("esxi/8.0.2", "a", GIB, now=0.0)
    assert not progress.upload_due(0.0)  # nothing sent yet
    recorded = []
    for chunk in range(1, 101):  # 100 chunks of 1 %, 0.01 s apart
        progress.uploaded(chunk / 100, now=chunk / 100)
        if progress.upload_due(chunk / 100):
            recorded.append(chunk)
    assert recorded == [1, 6, 11, 16, 21, 26, 31, 36, 41, 46, 51, 56, 61, 66, 71, 76, 81, 86, 91, 96, 100]
    slow = JobProgress("x", now=0.0)
    slow.upload_begins("esxi/8.0.2", "a", GIB, now=0.0)
    slow.uploaded(0.01, now=1.0)
    assert slow.upload_due(1.0)
    slow.uploaded(0.02, now=3.0)
    assert not slow.upload_due(3.0)
    slow.uploaded(0.03, now=6.5)
    assert slow.upload_due(6.5)  # 5 s passed
    slow.uploaded(0.01, now=7.0)  # the upload started over
    assert slow.upload_due(7.0)


def test_clock_and_eta_read_like_people_write_them():
    from esxi_watcher.progress import eta

    assert [clock(s) for s in (0, 65, 3723)] == ["0:00", "1:05", "1:02:03"]
    assert [eta(s) for s in (40, 61, 3900)] == ["40 s", "2 min", "1 h 05 min"]


def test_status_shows_how_far_an_upload_is_from_the_job_s_stage():
    from esxi_watcher.status import job_table
    from esxi_watcher.store import Job, Registration, State, Target

    stage = "uploading esxi/8.0.2-1 to default: 45% (1.2 GiB of 2.6 GiB, ETA 1 min)"
    job = Job(id=7, iso="a.iso", iso_path="/d/a.iso", state=State.BUILT, stage=stage, created=0, updated=0)
    record = Registration(job=7, target="default", state=Target.UPLOADING, resource="esxi/8.0.2-1", created=0,
                          updated=0)
    assert job_table([job], [record]).splitlines()[1].endswith(
        "esxi/8.0.2-1: uploading 45% (1.2 GiB of 2.6 GiB, ETA 1 min)")
    building = Job(id=8, iso="b.iso", iso_path="/d/b.iso", state=State.BUILDING, stage="12 min, installing",
                   created=0, updated=0)
    assert job_table([building]).splitlines()[1].endswith("b.iso  12 min, installing")
