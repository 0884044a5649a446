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
