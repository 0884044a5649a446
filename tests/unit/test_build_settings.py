"""What a build gets from its settings, without running it: the template's own timeout in line with
build.timeout, build.environment, the kickstart settings in the work copy, a private work dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from esxi_watcher import config
from esxi_watcher.build import (BUILD_ENVIRONMENT, build_commands, build_environment, exit_summary, packer_timeout,
                                prepare_workdir, run_build)
from esxi_watcher.errors import BadKickstartSettings
from esxi_watcher.host import JOB_ENVIRONMENT_VARIABLE
from esxi_watcher.logs import redact

HCL_WITH_TIMEOUT = 'variable "timeout" {\n  type = string\n  default = "1h"\n}\nsource "qemu" "esxi" {\n  shutdown_timeout = var.timeout\n}\n'
HCL_WITHOUT = 'source "qemu" "esxi" {\n  shutdown_timeout = "1h"\n}\n'


def template(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "vmware-esxi"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_packer_gets_ninety_percent_of_the_build_timeout_in_its_duration_syntax():
    assert packer_timeout(7200) == "6480s"
    assert packer_timeout(60) == "54s"
    assert packer_timeout(0.5) == "1s"


def test_makefile_build_gets_timeout_in_line_with_build_timeout(tmp_path):
    folder = template(tmp_path, {"Makefile": ""})

    assert build_commands(folder, Path("/drop/a.iso"), None, tmp_path, 7200) == [
        ["make", "ISO=/drop/a.iso", "TIMEOUT=6480s"]]


def test_hcl_build_gets_timeout_only_when_the_template_declares_it(tmp_path):
    declared = template(tmp_path / "a", {"vmware-esxi.pkr.hcl": HCL_WITH_TIMEOUT})
    undeclared = template(tmp_path / "b", {"vmware-esxi.pkr.hcl": HCL_WITHOUT})

    assert build_commands(declared, Path("/drop/a.iso"), None, tmp_path, 3600)[1] == [
        "packer", "build", "-var", "vmware_esxi_iso_path=/drop/a.iso", "-var", "timeout=3240s",
        "vmware-esxi.pkr.hcl"]
    assert build_commands(undeclared, Path("/drop/a.iso"), None, tmp_path, 3600)[1] == [
        "packer", "build", "-var", "vmware_esxi_iso_path=/drop/a.iso", "vmware-esxi.pkr.hcl"]


def test_json_build_gets_timeout_only_when_its_variables_declare_it(tmp_path):
    declared = template(tmp_path / "a", {"vmware-esxi.json": '{"variables": {"timeout": "1h"}}'})
    undeclared = template(tmp_path / "b", {"vmware-esxi.json": '{"variables": {"vmware_esxi_iso_path": ""}}'})

    assert build_commands(declared, Path("/drop/a.iso"), None, tmp_path, 100)[0][-3:] == [
        "-var", "timeout=90s", "vmware-esxi.json"]
    assert "-var" not in build_commands(undeclared, Path("/drop/a.iso"), None, tmp_path, 100)[0][3:]


def test_a_configured_command_keeps_its_own_timeout(tmp_path):
    folder = template(tmp_path, {"Makefile": ""})

    assert build_commands(folder, Path("/drop/a.iso"), ("make", "ISO={iso}", "TIMEOUT=5h"), tmp_path, 60) == [
        ["make", "ISO=/drop/a.iso", "TIMEOUT=5h"]]


def test_build_environment_is_merged_under_ours():
    environment = build_environment("host-7", {"https_proxy": "http://proxy:3128", "PIP_INDEX_URL": "http://mirror/simple"})

    assert environment == {"https_proxy": "http://proxy:3128", "PIP_INDEX_URL": "http://mirror/simple",
                           **BUILD_ENVIRONMENT, JOB_ENVIRONMENT_VARIABLE: "host-7"}


def test_a_proxy_password_is_a_secret():
    build_environment("host-7", {"https_proxy": "http://builder:Pr0xy-Secret@proxy:3128"})

    shown = redact("connecting via http://builder:Pr0xy-Secret@proxy:3128 (Pr0xy-Secret)")
    assert "Pr0xy-Secret" not in shown


@pytest.mark.parametrize("name", [JOB_ENVIRONMENT_VARIABLE, *BUILD_ENVIRONMENT, "LC_ALL"])
def test_config_refuses_the_variables_esxi_watcher_sets(name):
    with pytest.raises(ValueError, match=f"{name} is set by esxi-watcher itself"):
        config.parse_environment({name: "x"})


def test_the_work_dir_is_private(tmp_path):
    folder = template(tmp_path / "checkout", {"Makefile": ""})
    workdir = tmp_path / "work"

    prepare_workdir(folder, workdir)

    assert workdir.stat().st_mode & 0o777 == 0o700


class Settings:
    kickstart = None
    environment: dict = {}

    def __init__(self, password_file: Path):
        self.root_password_file = password_file


def test_a_weak_password_fails_the_build_before_any_command_runs(tmp_path):
    folder = template(tmp_path / "checkout", {"Makefile": "", "KS.CFG": "rootpw password123!\n"})
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"iso")
    weak = tmp_path / "root-password"
    weak.write_text("abcdefgh\n")
    weak.chmod(0o600)
    log_path = tmp_path / "logs" / "1.log"

    with pytest.raises(BadKickstartSettings, match="uses 1 of the 4 character classes") as failure:
        run_build(job_id="host-1", template_dir=folder, command=("false",), artifact_name="a.dd.gz",
                  iso=iso, workdir=tmp_path / "work", log_path=log_path, timeout=60,
                  build_config=Settings(weak))

    assert not failure.value.transient
    assert not log_path.exists()  # no command ran, so nothing was logged


def test_a_short_proxy_password_is_masked_in_its_url():
    build_environment("host-7", {"http_proxy": "http://u:pw@proxy:3128/"})

    assert redact("ProxyError: http://u:pw@proxy:3128/ refused") == "ProxyError: http********proxy:3128/ refused"


def test_packers_own_shutdown_timeout_is_said_in_words():
    lines = ["==> qemu.esxi: Waiting for shutdown...", "==> qemu.esxi: Failed to shutdown",
             "Build 'qemu.esxi' errored after 1 hour 48 minutes: Failed to shutdown"]

    summary = exit_summary("make", 2, lines)

    assert summary.startswith("make exited 2: the VM did not shut down within Packer's shutdown timeout")
    assert exit_summary("make", 2, ["Error: something else"]) == "make exited 2"
