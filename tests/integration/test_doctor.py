"""`esxi-watcher doctor` as a child process against the MAAS simulator, tmpfs state dirs, test
templates of our own and prepared plugin and wheel folders: each check's verdict and its fix."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import write_config
from tests.maas_simulator import MaasSimulator
from tests.paths import ROOT


def doctor(config: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), "doctor", *arguments],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def verdicts(config: Path) -> dict[str, dict]:
    """Run `doctor --json`; return its checks by name (the JSON must parse)."""
    result = doctor(config, "--json")
    checks = json.loads(result.stdout)
    assert {tuple(sorted(check)) for check in checks} == {("detail", "fix", "name", "status")}
    return {check["name"]: check for check in checks}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def site(tmp_path: Path, simulator=None, **overrides) -> Path:
    config = write_config(tmp_path / "site", simulator, **overrides)
    (tmp_path / "site" / "drop").mkdir(exist_ok=True)
    (tmp_path / "site" / "state").mkdir(exist_ok=True)
    return config


# -- MAAS ------------------------------------------------------------------------------------------
def test_against_a_running_maas_every_maas_check_passes(tmp_path, simulator):
    checks = verdicts(site(tmp_path, simulator))
    maas = {name: check for name, check in checks.items() if name.startswith("maas[default]")}
    assert [check["status"] for check in maas.values()] == ["PASS"] * 4, maas
    assert maas["maas[default] reachable"]["detail"] == f"MAAS 3.8.0 at {simulator.url}"
    assert maas["maas[default] key accepted"]["detail"] == "as user admin"
    assert any(request["query"] == "op=whoami" for request in simulator.requests)


def test_against_a_stopped_maas_doctor_fails_on_maas_with_the_fix(tmp_path, simulator):
    config = site(tmp_path, simulator)
    simulator.stop()
    result = doctor(config)
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "maas[default] reachable" in line)
    assert line.startswith(f"FAIL  maas[default] reachable: {simulator.url}: connection refused (fix: start MAAS")
    assert f"curl {simulator.url}api/2.0/version/" in line
    assert not [line for line in result.stdout.splitlines() if "key accepted" in line]
    assert result.stderr == ""
    checks = verdicts(config)
    assert checks["maas[default] reachable"]["status"] == "FAIL"
    assert checks["maas[default] reachable"]["fix"].startswith("start MAAS")


def test_a_non_admin_key_is_not_allowed_to_create_boot_resources(tmp_path):
    with MaasSimulator(tmp_path / "maas", admin=False) as user_maas:
        result = doctor(site(tmp_path, user_maas))
    assert result.returncode == 1
    assert ("FAIL  maas[default] may create boot resources: not allowed to create boot resources: operator "
            "is not a MAAS admin (fix: use an admin's key") in result.stdout
    assert "PASS  maas[default] key accepted: as user operator" in result.stdout


def test_a_key_maas_does_not_know_fails_with_the_apikey_fix(tmp_path, simulator):
    config = site(tmp_path, simulator)
    (tmp_path / "site" / "maas-api-key").write_text("wrong:key:parts\n")
    checks = verdicts(config)
    accepted = checks["maas[default] key accepted"]
    assert accepted["status"] == "FAIL" and "HTTP 401" in accepted["detail"]
    assert "maas apikey --username=ADMIN" in accepted["fix"]
    assert "may create boot resources" not in " ".join(checks)


def test_each_target_is_checked_on_its_own(tmp_path, simulator):
    key = tmp_path / "site" / "maas-api-key"
    config = site(tmp_path, simulator, maas=[
        {"name": "site-a", "url": simulator.url, "api_key_file": str(key)},
        {"name": "site-b", "url": f"http://127.0.0.1:{closed_port()}/MAAS/", "api_key_file": str(key)}])
    checks = verdicts(config)
    assert checks["maas[site-a] may create boot resources"]["status"] == "PASS"
    assert checks["maas[site-b] reachable"]["status"] == "FAIL"
    assert "maas[site-b].url" in checks["maas[site-b] reachable"]["fix"]


# -- folders and disk ------------------------------------------------------------------------------
def test_a_drop_dir_only_its_owner_can_write_warns_with_the_chgrp_and_chmod_fix(tmp_path, simulator):
    config = site(tmp_path, simulator)
    drop = tmp_path / "site" / "drop"
    drop.chmod(0o700)
    result = doctor(config)
    line = next(line for line in result.stdout.splitlines() if "drop dir access" in line)
    assert line.startswith(f"WARN  drop dir access: {drop} is ")
    assert "mode 0700: only its owner can drop ISOs" in line
    assert f"chgrp esxi-drop {drop} && chmod 2775 {drop}" in line
    assert result.returncode == 0, result.stdout  # a WARN does not fail


def test_a_drop_dir_anyone_can_write_warns(tmp_path, simulator):
    config = site(tmp_path, simulator)
    (tmp_path / "site" / "drop").chmod(0o777)
    access = verdicts(config)["drop dir access"]
    assert access["status"] == "WARN" and "anyone on the host may drop files" in access["detail"]


def test_a_missing_state_dir_fails(tmp_path, simulator):
    config = site(tmp_path, simulator, state_dir=str(tmp_path / "nowhere"))
    checks = verdicts(config)
    assert checks["state dir"]["status"] == "FAIL"
    assert checks["state dir"]["fix"].startswith(f"mkdir -p {tmp_path / 'nowhere'}")


def test_a_state_dir_too_small_for_a_build_fails_the_disk_check(tmp_path, simulator, small_state_dir):
    config = site(tmp_path, simulator)
    iso = tmp_path / "site" / "drop" / "waiting.iso"
    with open(iso, "wb") as stream:
        stream.truncate(16 << 20)
    elsewhere = tmp_path / "elsewhere.iso"
    with open(elsewhere, "wb") as stream:
        stream.truncate(1 << 30)
    (tmp_path / "site" / "drop" / "link.iso").symlink_to(elsewhere)  # not followed out of the drop dir
    checks = verdicts(config)
    disk = checks["disk"]
    assert disk["status"] == "FAIL"
    assert "the largest ISO waiting 16.0 MiB" in disk["detail"]
    assert f"free in {small_state_dir}" in disk["detail"]
    assert doctor(config).returncode == 1


def test_a_state_dir_with_room_passes_the_disk_check_with_a_typical_iso(tmp_path, simulator):
    checks = verdicts(site(tmp_path, simulator))
    assert checks["disk"]["status"] == "PASS"
    assert "a typical ESXi ISO 700.0 MiB" in checks["disk"]["detail"]


# -- the template: packer, its plugins, the Makefile's packages ------------------------------------
HCL_TEMPLATE = '''packer {
  required_version = ">= 1.12.0"
  required_plugins {
    qemu = {
      version = ">= 1.1.0, < 1.1.2"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

source "qemu" "esxi" {
  accelerator = "none"
  memory      = 1024
  disk_size   = "1G"
}

build {
  sources = ["source.qemu.esxi"]
}
'''


def hcl_template(tmp_path: Path, required: str = ">= 1.12.0") -> Path:
    folder = tmp_path / "hcl" / "vmware-esxi"
    folder.mkdir(parents=True)
    (folder / "vmware-esxi.pkr.hcl").write_text(HCL_TEMPLATE.replace(">= 1.12.0", required))
    return folder


def installed_packer() -> str:
    return subprocess.run(["packer", "version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def test_an_hcl_template_needs_the_packer_it_states(tmp_path, simulator):
    # Debian 12's packer (1.6.6) is older than the current template's 1.12; a version no Packer has
    # keeps the test about the check whatever packer the host has.
    checks = verdicts(site(tmp_path, simulator, build__template_dir=str(hcl_template(tmp_path, ">= 99.0.0"))))
    packer = checks["packer"]
    assert packer["status"] == "FAIL"
    assert packer["detail"] == (f'{installed_packer()} is older than the template needs (required_version '
                                f'">= 99.0.0": 99.0.0)')
    assert "install Packer >= 99.0.0 as a Debian package" in packer["fix"]
    assert checks["memory"]["detail"].startswith("the VM takes 1.0 GiB (memory); ")


def test_a_json_template_takes_any_packer(tmp_path, simulator):
    checks = verdicts(site(tmp_path, simulator))
    assert checks["packer"]["status"] == "PASS"
    assert checks["packer"]["detail"] == f"{installed_packer()}; any version will do"


def plugin_file(folder: Path, version: str) -> Path:
    from esxi_watcher.template_needs import plugin_platform

    nested = folder / "github.com" / "hashicorp" / "qemu"
    nested.mkdir(parents=True, exist_ok=True)
    path = nested / f"packer-plugin-qemu_v{version}_x5.0_{plugin_platform()}"
    path.write_bytes(b"\x7fELF")
    path.chmod(0o755)
    return path


def test_the_qemu_plugin_in_packer_plugin_path_is_found_when_its_version_fits(tmp_path, simulator):
    plugins = tmp_path / "packer-plugins"
    installed = plugin_file(plugins, "1.1.1")
    config = site(tmp_path, simulator, build__template_dir=str(hcl_template(tmp_path)),
                  build__environment={"PACKER_PLUGIN_PATH": str(plugins)})
    plugin = verdicts(config)["packer plugin qemu"]
    assert plugin["status"] == "PASS"
    assert plugin["detail"] == (f"{installed} fits >= 1.1.0, < 1.1.2 (PACKER_PLUGIN_PATH {plugins}); "
                                f"`packer init` needs no network")


def test_a_plugin_outside_the_pinned_versions_or_none_warns_with_how_to_install_it_once(tmp_path, simulator):
    plugins = tmp_path / "packer-plugins"
    plugin_file(plugins, "1.1.2")  # 1.1.2 broke waiting for shutdown: the template excludes it
    config = site(tmp_path, simulator, build__template_dir=str(hcl_template(tmp_path)),
                  build__environment={"PACKER_PLUGIN_PATH": str(plugins)})
    plugin = verdicts(config)["packer plugin qemu"]
    assert plugin["status"] == "WARN"
    assert "no copy fitting >= 1.1.0, < 1.1.2" in plugin["detail"] and "packer-plugin-qemu_v1.1.2_x5.0" in plugin["detail"]
    assert "`packer init` will download it, which needs the network" in plugin["detail"]
    assert ("`PACKER_PLUGIN_PATH=/tmp/packer-plugins packer plugins install github.com/hashicorp/qemu 1.1.1`"
            in plugin["fix"])
    assert f"copy /tmp/packer-plugins/ to {plugins}" in plugin["fix"]


def makefile_template(tmp_path: Path, packages: str) -> Path:
    """A template of ours with packer-maas's Makefile convention: check.mk's two package lists."""
    root = tmp_path / "make-template"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "check.mk").write_text(
        "define check_packages_deps\n_current_deps := make $(1)\n_focal_deps := make $(2)\n\n"
        "check-deps:\n\t@dpkg -s $$(_current_deps) > /dev/null\nendef\n")
    folder = root / "vmware-esxi"
    folder.mkdir()
    (folder / "Makefile").write_text(
        "include ../scripts/check.mk\n\n"
        f"$(eval $(call check_packages_deps,{packages},{packages}))\n\nall: check-deps\n")
    (folder / "vmware-esxi.json").write_text((Path(ROOT) / "tests/templates/file-builder/vmware-esxi/"
                                              "vmware-esxi.json").read_text())
    return folder


def test_packages_the_makefile_checks_for_are_checked_with_dpkg(tmp_path, simulator):
    config = site(tmp_path, simulator,
                  build__template_dir=str(makefile_template(tmp_path, "coreutils esxi-watcher-no-such-package")))
    packages = verdicts(config)["Makefile packages"]
    assert packages["status"] == "FAIL"
    assert "`make` checks `dpkg -s make coreutils esxi-watcher-no-such-package`" in packages["detail"]
    assert packages["detail"].split("missing: ")[1].startswith("esxi-watcher-no-such-package")
    assert packages["fix"] == "apt-get install esxi-watcher-no-such-package"


def test_packages_all_installed_pass(tmp_path, simulator):
    config = site(tmp_path, simulator, build__template_dir=str(makefile_template(tmp_path, "coreutils")))
    packages = verdicts(config)["Makefile packages"]
    assert packages == {"name": "Makefile packages", "status": "PASS", "detail": "installed: make coreutils",
                        "fix": ""}


# -- build.environment: what a build on an offline MAAS host needs ---------------------------------
def pip_template(tmp_path: Path, requirements: str) -> Path:
    folder = tmp_path / "pip-template" / "vmware-esxi"
    folder.mkdir(parents=True)
    (folder / "vmware-esxi.json").write_text((Path(ROOT) / "tests/templates/file-builder/vmware-esxi/"
                                              "vmware-esxi.json").read_text())
    (folder / "requirements.txt").write_text(requirements)
    return folder


def test_a_wheel_folder_must_hold_every_requirement(tmp_path, simulator):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "PyYAML-6.0.1-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")
    (wheels / "ipaddr-2.2.0.tar.gz").write_bytes(b"")
    template = pip_template(tmp_path, "ipaddr==2.2.0\nPyYAML==6.0.1\nrequests==2.32.4\n")
    config = site(tmp_path, simulator, build__template_dir=str(template),
                  build__environment={"PIP_FIND_LINKS": str(wheels), "PIP_NO_INDEX": "1"})
    checks = verdicts(config)
    assert checks["pip wheels"]["status"] == "FAIL"
    assert checks["pip wheels"]["detail"] == f"PIP_FIND_LINKS {wheels} lacks requests==2.32.4 of the template's requirements.txt"
    assert "pip download -r requirements.txt" in checks["pip wheels"]["fix"]
    assert "pip index" not in checks  # PIP_NO_INDEX: no index is asked
    (wheels / "requests-2.32.4-py3-none-any.whl").write_bytes(b"")
    assert verdicts(config)["pip wheels"]["status"] == "PASS"


def test_an_index_that_does_not_answer_warns_when_wheels_cover_it_and_fails_when_not(tmp_path, simulator):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "tiny-1.0-py3-none-any.whl").write_bytes(b"")
    nowhere = f"http://127.0.0.1:{closed_port()}/simple/"
    template = pip_template(tmp_path, "tiny==1.0\n")
    config = site(tmp_path, simulator, build__template_dir=str(template),
                  build__environment={"PIP_FIND_LINKS": str(wheels), "PIP_INDEX_URL": nowhere})
    index = verdicts(config)["pip index"]
    assert index["status"] == "WARN" and "Connection refused" in index["detail"]
    assert index["fix"] == "set PIP_NO_INDEX: '1' in build.environment"
    config = site(tmp_path, simulator, build__template_dir=str(template),
                  build__environment={"PIP_INDEX_URL": nowhere})
    index = verdicts(config)["pip index"]
    assert index["status"] == "FAIL" and "`pip install -r requirements.txt` will fail" in index["detail"]


def test_a_proxy_that_refuses_connections_fails(tmp_path, simulator):
    port = closed_port()
    config = site(tmp_path, simulator, build__environment={"https_proxy": f"http://127.0.0.1:{port}"})
    proxy = verdicts(config)["proxy https_proxy"]
    assert proxy["status"] == "FAIL"
    assert proxy["detail"] == f"127.0.0.1:{port}: Connection refused"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        config = site(tmp_path, simulator, build__environment={"https_proxy": f"127.0.0.1:{listening.getsockname()[1]}"})
        assert verdicts(config)["proxy https_proxy"]["status"] == "PASS"


def test_a_root_password_file_others_can_read_fails_and_none_warns(tmp_path, simulator):
    password = tmp_path / "root-password"
    password.write_text("Esxi-Watcher-42!\n")
    password.chmod(0o644)
    checks = verdicts(site(tmp_path, simulator, build__root_password_file=str(password)))
    assert checks["root password"]["status"] == "FAIL"
    assert str(password) in checks["root password"]["detail"]
    password.chmod(0o600)
    assert verdicts(site(tmp_path, simulator, build__root_password_file=str(password)))["root password"]["status"] == "PASS"
    assert verdicts(site(tmp_path, simulator))["root password"]["status"] == "WARN"


def test_credentials_in_an_index_or_proxy_url_are_never_shown(tmp_path, simulator):
    port = closed_port()
    secret = "s3cret-index-password"
    template = pip_template(tmp_path, "tiny==1.0\n")
    config = site(tmp_path, simulator, build__template_dir=str(template), build__environment={
        "PIP_INDEX_URL": f"http://builder:{secret}@127.0.0.1:{port}/simple/",
        "https_proxy": f"http://builder:{secret}@127.0.0.1:{port}"})
    result = doctor(config)
    assert secret not in result.stdout + result.stderr
    assert f"FAIL  pip index: PIP_INDEX_URL http://127.0.0.1:{port}/simple/: Connection refused" in result.stdout
    assert f"FAIL  proxy https_proxy: 127.0.0.1:{port}: Connection refused" in result.stdout
    json_result = doctor(config, "--json")
    assert secret not in json_result.stdout


def test_several_wheel_folders_are_read_together(tmp_path, simulator):
    first, second = tmp_path / "wheels-a", tmp_path / "wheels-b"
    first.mkdir()
    second.mkdir()
    (first / "ipaddr-2.2.0.tar.gz").write_bytes(b"")
    (second / "requests-2.32.4-py3-none-any.whl").write_bytes(b"")
    template = pip_template(tmp_path, "ipaddr==2.2.0\nrequests==2.32.4\n")
    config = site(tmp_path, simulator, build__template_dir=str(template),
                  build__environment={"PIP_FIND_LINKS": f"{first} file://{second}", "PIP_NO_INDEX": "1"})
    assert verdicts(config)["pip wheels"]["status"] == "PASS"


def test_a_proxy_page_in_place_of_maas_fails_on_one_line_without_the_key(tmp_path, simulator):
    config = site(tmp_path, simulator)
    simulator.inject("echo", count=5, status=200, body="<html>\n<b>Log in</b>\n</html>", path="/version/")
    result = doctor(config)
    assert result.returncode == 1
    [line] = [line for line in result.stdout.splitlines() if "maas[default] reachable" in line]
    assert line.startswith("FAIL  maas[default] reachable: ")
    assert "the answer to reading its version is not MAAS's" in line
    for part in simulator.api_key.split(":"):
        assert part not in result.stdout
    assert all(line[:6] in ("PASS  ", "WARN  ", "FAIL  ") for line in result.stdout.splitlines())


def test_nonsense_in_the_config_gets_a_verdict_each_and_every_other_check_still_runs(tmp_path, simulator):
    not_a_folder = tmp_path / "template-file"
    not_a_folder.write_text("not a template\n")
    config = site(tmp_path, simulator, build__template_dir=str(not_a_folder), build__environment={
        "https_proxy": "http://[::1", "PIP_INDEX_URL": "http://[::1"})
    result = doctor(config)
    assert result.returncode == 1 and result.stderr == ""
    assert f"FAIL  template: {not_a_folder} is not a folder" in result.stdout
    assert "FAIL  proxy https_proxy: not a URL (Invalid IPv6 URL)" in result.stdout
    assert "PASS  maas[default] may create boot resources" in result.stdout
