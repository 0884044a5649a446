"""End to end through the installed .deb under a real systemd (Debian 12, 13 and unstable in
systemd-nspawn, one module run per release).

Builds esxi-watcher_*.deb and python3-libmaas_*.deb, installs both with apt in a booted container,
and checks what an admin would: the service runs (Type=notify, a Status line), builds an ISO
copied into /var/lib/esxi-drop with the real Packer, registers it in MAAS (the simulator on the
host's loopback, reached through the shared network), stops cleanly, and `apt purge` removes the
unit, state and config but keeps the ISO. The `systemctl status` outputs and the
`systemd-analyze security` table are printed for the CI log (run pytest with -s to see them live).

Needs root (debootstrap, nspawn). Budget: 15 minutes with a cold cache, about 2 with a warm one.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time

import pytest

from tests.isogen import make_esxi_iso
from tests.maas_simulator import MaasSimulator
from tests.system.build_debs import REPO
from tests.system.container import SUITES, Container, cached_root, install_debs, packages_for

RESOURCE = "esxi/8.0.2-22380479"
ISO_NAME = "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso"
TEMPLATE_INSIDE = "/opt/packer-maas-test"
BUDGET_SECONDS = 15 * 60
WATCHDOG_SECONDS = 8  # pings every 4 s; a short period, but not one a slow disk write misses


@pytest.fixture(scope="module", params=SUITES)
def container(request, debs, ci_log):
    with ci_log():
        started = time.monotonic()
        root = cached_root(packages_for(debs), request.param)
        print(f"container root ({request.param}) ready: {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        booted = Container.boot(root)
        print(f"container boot: {time.monotonic() - started:.1f} s")
    try:
        yield booted
    finally:
        with ci_log():
            booted.stop()


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """Call check() until it returns something true; return it, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def unit_properties(container: Container, *names: str) -> dict[str, str]:
    output = container.run(["systemctl", "show", "esxi-watcher", "-p", ",".join(names)],
                           check=False).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def active_with_status(container: Container) -> dict[str, str] | None:
    properties = unit_properties(container, "ActiveState", "SubState", "StatusText")
    if properties.get("ActiveState") == "active" and properties.get("StatusText"):
        return properties
    return None


def write_test_config(container: Container, simulator: MaasSimulator) -> None:
    """Point the installed service at the test template and the simulator (a root-only key)."""
    shutil.copytree(REPO / "tests/templates/file-builder", container.path(TEMPLATE_INSIDE),
                    dirs_exist_ok=True)
    key_file = container.path("/etc/esxi-watcher/maas-api-key")
    key_file.write_text(simulator.api_key + "\n")
    key_file.chmod(0o600)
    config = container.path("/etc/esxi-watcher/config.yaml")
    text = config.read_text()
    text = re.sub(r"(?m)^  template_dir: .*$", f"  template_dir: {TEMPLATE_INSIDE}/vmware-esxi", text)
    text = re.sub(r"(?m)^  url: .*$", f"  url: '{simulator.url}'", text)
    text = re.sub(r"(?m)^  settle: .*$", "  settle: 1s", text)
    config.write_text(text)
    assert f"template_dir: {TEMPLATE_INSIDE}/vmware-esxi" in text and simulator.url in text


def registered(simulator: MaasSimulator) -> bool:
    return any(resource.get("name") == RESOURCE for resource in simulator.resources())


def test_installed_package_under_systemd(container, debs, tmp_path, ci_log):
    with ci_log():
        check_installed_package(container, debs, tmp_path)


def check_installed_package(container: Container, debs, tmp_path) -> None:
    started = time.monotonic()

    # Install both .debs with apt, as an admin would; the service is enabled and started.
    install_debs(container, debs)
    container.run(["dpkg", "-s", "packer"])  # a Recommends, installed with it
    assert container.run(["systemctl", "is-enabled", "esxi-watcher"]).stdout.strip() == "enabled"
    drop_dir = os.stat(container.path("/var/lib/esxi-drop"))
    assert stat.S_IMODE(drop_dir.st_mode) == 0o2775
    group = container.run(["getent", "group", "esxi-drop"]).stdout.split(":")
    assert drop_dir.st_uid == 0 and drop_dir.st_gid == int(group[2])
    assert stat.S_IMODE(os.stat(container.path("/var/lib/esxi-watcher")).st_mode) == 0o750
    assert container.path("/usr/share/man/man8/esxi-watcher.8.gz").is_file()
    assert container.path("/usr/share/bash-completion/completions/esxi-watcher").is_file()
    assert container.path("/usr/share/doc/esxi-watcher/README.md.gz").is_file()

    # Without MAAS credentials (and without a packer-maas checkout) it runs and says so.
    idle = wait_for("esxi-watcher active with a Status line", lambda: active_with_status(container),
                    timeout=60)
    container.show(["systemctl", "status", "--no-pager", "-l", "esxi-watcher"],
                   "systemctl status esxi-watcher (installed, no MAAS key)")
    assert idle["StatusText"]

    security = container.show(["systemd-analyze", "security", "--no-pager", "esxi-watcher"],
                              "systemd-analyze security esxi-watcher")
    exposure = re.search(r"Overall exposure level for esxi-watcher\.service: ([\d.]+) (\w+)",
                         security)
    assert exposure, security
    release = container.run(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]).stdout.strip()
    systemd = container.run(["systemctl", "--version"]).stdout.splitlines()[0]
    print(f"exposure score: {exposure.group(1)} {exposure.group(2)} ({release}, {systemd})")
    assert float(exposure.group(1)) < 6.0
    # Every directive of the unit is one this release's systemd knows and accepts.
    verify = container.show(["systemd-analyze", "verify", "--man=no",
                             "/lib/systemd/system/esxi-watcher.service"],
                            "systemd-analyze verify esxi-watcher.service")
    assert "esxi-watcher.service" not in verify, verify

    # Point it at the simulator and the test template, restart, wait for READY. A drop-in (as an
    # admin's `systemctl edit`) shortens the watchdog so that missing WATCHDOG=1 pings would show
    # as a restart within the test.
    with MaasSimulator(tmp_path / "maas", mode="3.8").start() as simulator:
        write_test_config(container, simulator)
        drop_in = container.path("/etc/systemd/system/esxi-watcher.service.d/test-watchdog.conf")
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(f"[Service]\nWatchdogSec={WATCHDOG_SECONDS}s\n")
        container.run(["systemctl", "daemon-reload"])
        container.run(["systemctl", "restart", "esxi-watcher"], timeout=120)
        wait_for("the restarted service", lambda: active_with_status(container), timeout=60)
        container.show(["systemctl", "status", "--no-pager", "-l", "esxi-watcher"],
                       "systemctl status esxi-watcher (idle, configured)")

        # Drop an ISO (written beside the drop dir, copied in like `cp` does). The upload is slowed
        # down so that the busy status lasts longer than a few status ticks.
        simulator.inject("delay", seconds=3, method="PUT", path="/upload/")
        iso = make_esxi_iso(tmp_path / ISO_NAME, "8.0U2", 22380479)
        shutil.copy(iso, container.path(f"/var/lib/esxi-drop/{ISO_NAME}"))

        def busy_status():
            status = unit_properties(container, "StatusText").get("StatusText", "")
            return status if not status.startswith("idle") else None

        building = wait_for("a status other than idle", busy_status, timeout=60, every=0.05)
        container.show(["systemctl", "status", "--no-pager", "-l", "esxi-watcher"],
                       f"systemctl status esxi-watcher (working: {building})")

        wait_for(f"{RESOURCE} in the MAAS simulator", lambda: registered(simulator), timeout=180)
        after = wait_for("a status counting the registration",
                         lambda: "1 registered" in unit_properties(container, "StatusText")
                         .get("StatusText", "") and unit_properties(container, "StatusText"),
                         timeout=60)
        output = container.show(["systemctl", "status", "--no-pager", "-l", "esxi-watcher"],
                                "systemctl status esxi-watcher (after registration)")
        assert f"1 registered (newest {RESOURCE})" in output and after
        jobs = container.show(["esxi-watcher", "status"], "esxi-watcher status")
        assert RESOURCE in jobs
        assert container.path(f"/var/lib/esxi-drop/done/{ISO_NAME}").is_file()
        assert simulator.api_key not in container.run(
            ["journalctl", "-u", "esxi-watcher", "--no-pager"]).stdout

        # Each line reaches journald with its priority: a text file named x.iso is rejected with a
        # warning, which `journalctl -p warning` shows without the info lines (daemon.ready,
        # job.queued) that the whole journal holds too.
        container.path("/var/lib/esxi-drop/x.iso").write_text("a text file, not an ISO\n")
        wait_for("x.iso in rejected/", lambda: container.path("/var/lib/esxi-drop/rejected/x.iso").is_file(),
                 timeout=60)
        warning_journal = ["journalctl", "-u", "esxi-watcher", "-p", "warning", "-o", "cat", "--no-pager"]
        wait_for("job.rejected in the journal at priority warning",
                 lambda: "job.rejected" in container.run(warning_journal).stdout, timeout=30)
        warnings = container.show(warning_journal, "journalctl -u esxi-watcher -p warning -o cat")
        assert any("job.rejected" in line and "x.iso" in line for line in warnings.splitlines()), warnings
        assert "daemon.ready" not in warnings and "job.queued" not in warnings, warnings
        assert not any(line.startswith("<") for line in warnings.splitlines()), warnings  # prefix taken
        everything = container.run(["journalctl", "-u", "esxi-watcher", "-o", "cat", "--no-pager"]).stdout
        assert all(event in everything for event in ("daemon.ready", "job.queued", "job.rejected")), \
            everything

        # Alive past two watchdog periods since the restart, never restarted: the pings arrive.
        time.sleep(2 * WATCHDOG_SECONDS)
        alive = unit_properties(container, "ActiveState", "NRestarts", "WatchdogUSec")
        assert alive == {"ActiveState": "active", "NRestarts": "0",
                         "WatchdogUSec": f"{WATCHDOG_SECONDS}s"}, alive
        drop_in.unlink()
        container.run(["systemctl", "daemon-reload"])

    # A clean stop: no failure, no restart loop, no traceback in the journal.
    container.run(["systemctl", "stop", "esxi-watcher"], timeout=150)
    stopped = unit_properties(container, "ActiveState", "Result", "NRestarts")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "NRestarts": "0"}, stopped
    journal = container.show(["journalctl", "-u", "esxi-watcher", "--no-pager", "-n", "60"],
                             "journalctl -u esxi-watcher (last lines)")
    assert "Traceback" not in journal

    # Purge: unit, state and config go; the dropped ISO stays.
    container.show(["apt-get", "purge", "-y", "esxi-watcher"], "apt-get purge -y esxi-watcher")
    assert not container.path("/lib/systemd/system/esxi-watcher.service").exists()
    assert not container.path(
        "/etc/systemd/system/multi-user.target.wants/esxi-watcher.service").is_symlink()
    load_state = container.run(["systemctl", "show", "-p", "LoadState", "esxi-watcher"]).stdout
    assert load_state.strip() == "LoadState=not-found"
    assert not container.path("/var/lib/esxi-watcher").exists()
    assert not container.path("/etc/esxi-watcher").exists()
    assert container.path(f"/var/lib/esxi-drop/done/{ISO_NAME}").is_file()
    assert iso.read_bytes() == container.path(f"/var/lib/esxi-drop/done/{ISO_NAME}").read_bytes()

    elapsed = time.monotonic() - started
    print(f"system test (after boot): {elapsed:.1f} s")
    assert elapsed < BUDGET_SECONDS
