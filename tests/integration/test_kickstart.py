"""The images' root password through the real daemon, real make and packer, and the MAAS simulator:
put in every place of the work copy (tests/templates/kickstart: the Makefile generation's shape),
shown nowhere; refused before Packer starts when ESXi would refuse it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso
from tests.paths import TEMPLATES

BUILD = 22380479
NAME = f"esxi/8.0.2-{BUILD}"
KICKSTART_TEMPLATE = TEMPLATES / "kickstart" / "vmware-esxi"
# Characters special to sed, regular expressions and the shell: put in literally or the build fails.
PASSWORD = "Kick&St4rt$|x;(y)*?[z]^{1}%/.w"


@pytest.fixture
def esxi_iso(tmp_path):
    (tmp_path / "src").mkdir()
    return make_esxi_iso(tmp_path / "src" / f"VMware-VMvisor-Installer-8.0U2-{BUILD}.x86_64.iso",
                         version="8.0U2", build=BUILD, payload_size=1 << 20)


def site(tmp_path: Path, simulator, password: str, mode: int = 0o600, **environment: str) -> Path:
    password_file = tmp_path / "site" / "root-password"
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(password + "\n")
    password_file.chmod(mode)
    return write_config(tmp_path / "site", simulator, build__template_dir=str(KICKSTART_TEMPLATE),
                        build__root_password_file=str(password_file),
                        build__environment={"TEST_ENV_MARK": "from-build.environment", **environment})


def everything_shown(daemon, job_id: int) -> dict[str, str]:
    """Every text an operator can see about the job: logs, status, banners, reason files."""
    shown = {"daemon log": daemon.log_path.read_text(errors="replace")}
    for arguments in (("status",), ("status", "--json"), ("status", "--all"), ("logs", str(job_id))):
        result = daemon.cli(*arguments)
        shown[" ".join(arguments)] = result.stdout + result.stderr
    for path in (daemon.state_dir / "logs").glob("*"):
        shown[f"build log {path.name}"] = path.read_text(errors="replace")
    for path in daemon.drop_dir.rglob("*.reason.txt"):
        shown[f"reason file {path.name}"] = path.read_text(errors="replace")
    return shown


def test_the_configured_password_is_in_every_place_and_shown_nowhere(tmp_path, simulator, daemon_factory, esxi_iso):
    daemon = daemon_factory(site(tmp_path, simulator, PASSWORD))
    dropped = drop(esxi_iso, daemon.drop_dir)

    job = daemon.wait_for_state(dropped.name, "registered", timeout=90)

    disk = gzip.decompress(simulator.file_bytes(NAME)).decode(errors="replace")
    for place in ("rootpw", "esxi_password", "vcenter_default"):
        assert f"{place}={PASSWORD}\n" in disk
    assert "workdir_mode=700\n" in disk
    assert "packer_timeout=54s\n" in disk  # make TIMEOUT=: 90 % of the harness's build.timeout of 60 s
    assert "env_mark=from-build.environment\n" in disk
    shown = everything_shown(daemon, job["id"])
    shown["banners"] = repr(simulator.notifications())
    for where, text in shown.items():
        assert PASSWORD not in text, f"the password shows in {where}"
    build_log = shown["logs " + str(job["id"])]
    assert "check-places: rootpw ********" in build_log  # the template printed it; the log masks it
    assert "Z root password from" in build_log and "put in KS.CFG" in build_log
    assert "check-places: every place holds the configured password" in build_log
    assert "running: make ISO=" in build_log and " TIMEOUT=54s (in " in build_log
    wait_for(lambda: list((daemon.state_dir / "work").iterdir()) == [], 10, "the work dir to go")


def test_an_installer_quoting_the_password_on_its_console_shows_it_nowhere(tmp_path, simulator, daemon_factory,
                                                                          esxi_iso):
    daemon = daemon_factory(site(tmp_path, simulator, PASSWORD, TEST_CONSOLE_FAIL="1"))
    dropped = drop(esxi_iso, daemon.drop_dir)

    job = daemon.wait_for_state(dropped.name, "failed", timeout=90)

    assert "installer error: An error has occurred while parsing the installation script" in job["error"]
    assert "rootpw ********: refused" in job["error"]
    shown = everything_shown(daemon, job["id"])
    shown["banners"] = repr(simulator.notifications())
    for where, text in shown.items():
        assert PASSWORD not in text, f"the password shows in {where}"


def test_a_password_esxi_refuses_fails_the_job_before_packer_starts(tmp_path, simulator, daemon_factory, esxi_iso):
    weak = "Xqat3hi"  # VMware's own example: an uppercase first character does not count
    daemon = daemon_factory(site(tmp_path, simulator, weak))
    dropped = drop(esxi_iso, daemon.drop_dir)

    job = daemon.wait_for_state(dropped.name, "failed", timeout=60)

    assert "uses 2 of the 4 character classes" in job["error"]
    assert "\n" not in job["error"]
    reason = (daemon.drop_dir / "failed" / f"{dropped.name}.reason.txt").read_text()
    assert "uses 2 of the 4 character classes" in reason
    logs = daemon.cli("logs", str(job["id"]))
    assert "packer" not in logs.stdout  # nothing ran
    assert not [e for e in daemon.log_events() if e.get("event") == "process.started"]
    assert simulator.resources() == [] or all(r["name"] != NAME for r in simulator.resources())
    shown = everything_shown(daemon, job["id"])
    shown["banners"] = repr(simulator.notifications())
    for where, text in shown.items():
        assert weak not in text, f"the password shows in {where}"
    assert daemon.alive()


def test_a_password_file_others_can_read_is_refused_in_one_line(tmp_path, simulator, daemon_factory, esxi_iso):
    daemon = daemon_factory(site(tmp_path, simulator, PASSWORD, mode=0o644))
    dropped = drop(esxi_iso, daemon.drop_dir)

    job = daemon.wait_for_state(dropped.name, "failed", timeout=60)

    password_file = tmp_path / "site" / "root-password"
    assert job["error"] == f"root password file {password_file} is readable by others: chmod 600 {password_file}"
    assert (tmp_path / "site" / "root-password").read_text() == PASSWORD + "\n"  # left as it was
    status = daemon.cli("status")
    assert PASSWORD not in status.stdout
    assert daemon.alive()
