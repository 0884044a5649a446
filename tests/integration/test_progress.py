"""Progress from one source: the build's stage with its minutes and the upload's percentage, in
`status` and in systemd's status line, from a real daemon."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso
from tests.paths import ROOT, TEMPLATES

SLOW_TEMPLATE = TEMPLATES / "slow-builder" / "vmware-esxi"
NAME = "esxi/8.0.2-22380479"


def test_status_and_the_status_line_show_the_build_stage_then_the_upload_percentage(tmp_path, simulator,
                                                                                      daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__template_dir=str(SLOW_TEMPLATE)))
    simulator.inject("delay", method="PUT", path="/upload/", seconds=3)
    drop(make_esxi_iso(tmp_path / "a.iso", payload_size=1 << 16), daemon.drop_dir)

    def status_says(text: str):
        shown = daemon.cli("status").stdout
        return shown if text in shown else None
    building = wait_for(lambda: status_says("0 min, post-processing"), 30, "status to show the build's stage")
    assert building.splitlines()[1].split()[1] == "building"
    wait_for(lambda: "building a (0 min, post-processing)" in daemon.statuses(), 10, "the status line's build")
    uploading = wait_for(lambda: status_says("uploading 0% (0 B of "), 30, "status to show the upload's percentage")
    assert f"{NAME}: uploading 0% (0 B of " in uploading
    wait_for(lambda: any(line.startswith(f"uploading {NAME} to default: 0% (0 B of ") for line in daemon.statuses()),
             10, "the status line's upload")
    daemon.wait_for_state("a.iso", "registered")


def test_a_daemon_build_waits_for_a_oneshot_build_saying_whose(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator, build__template_dir=str(SLOW_TEMPLATE),
                          build__command=[
                              "packer", "build", "-var", "vmware_esxi_iso_path={iso}", "-var", "sleep=6",
                              "vmware-esxi.json"])
    first = make_esxi_iso(tmp_path / "first.iso", version="8.0U3", build=24022510, payload_size=1 << 16)
    oneshot = subprocess.Popen([sys.executable, "-m", "esxi_watcher", "--config", str(config), "build", str(first)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               stdin=subprocess.DEVNULL)
    state = tmp_path / "site" / "state" / "oneshot"
    wait_for(lambda: any("slow-builder: sleeping" in path.read_text() for path in state.glob("*.log")), 30,
             "the one-shot's build")
    daemon = daemon_factory(config)
    drop(make_esxi_iso(tmp_path / "a.iso", payload_size=1 << 16), daemon.drop_dir)
    note = f"waiting for the build of esxi-watcher pid {oneshot.pid} to finish"
    wait_for(lambda: (daemon.job_for("a.iso") or {}).get("stage") == note, 30, "the daemon's job to wait")
    assert note in daemon.statuses()
    output, _ = oneshot.communicate(timeout=120)
    assert oneshot.returncode == 0, output
    daemon.wait_for_state("a.iso", "registered", timeout=120)
