"""What a template asks of the host, read from its files: Packer version, plugins and where Packer
finds them installed, memory, the Makefile's packages, requirements and a wheel folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from esxi_watcher import template_needs as needs

QEMU = needs.Plugin(name="qemu", source="github.com/hashicorp/qemu", constraint=">= 1.1.0, < 1.1.2")


@pytest.mark.parametrize("version, constraint, fits", [
    ((1, 1, 1), ">= 1.1.0, < 1.1.2", True),
    ((1, 1, 2), ">= 1.1.0, < 1.1.2", False),
    ((1, 0, 9), ">= 1.1.0, < 1.1.2", False),
    ((1, 12, 0), ">= 1.12.0", True),
    ((1, 6, 6), ">= 1.12.0", False),
    ((1, 3, 0), "~> 1.1", True),
    ((2, 0, 0), "~> 1.1", False),
    ((1, 1, 5), "~> 1.1.0", True),
    ((1, 2, 0), "~> 1.1.0", False),
])
def test_constraints_as_packer_reads_them(version, constraint, fits):
    assert needs.satisfies(version, constraint) is fits


def test_version_numbers_are_read_from_packer_s_output():
    assert needs.version_tuple("Packer v1.6.6") == (1, 6, 6)
    assert needs.version_tuple("1.12") == (1, 12, 0)
    assert needs.version_tuple("no version") == ()


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_hcl_required_version_plugins_and_memory(tmp_path):
    write(tmp_path, "t.pkr.hcl", 'packer {\n  required_version = ">= 1.12.0"\n  required_plugins {\n'
          '    qemu = {\n      version = ">= 1.1.0, < 1.1.2"\n      source  = "github.com/hashicorp/qemu"\n'
          '    }\n  }\n}\nsource "qemu" "x" {\n  memory = 8192\n}\n')
    assert needs.generation(tmp_path) == "hcl"
    assert needs.packer_required(tmp_path) == ((1, 12, 0), 'required_version ">= 1.12.0"')
    assert needs.required_plugins(tmp_path) == [QEMU]
    assert needs.vm_memory_mib(tmp_path) == (8192, "memory")


def test_json_memory_qemuargs_and_no_requirement(tmp_path):
    write(tmp_path, "t.json", '{"builders": [{"type": "qemu", "memory": 2048, '
          '"qemuargs": [["-m", "4G"], ["-serial", "stdio"]]}]}')
    assert needs.packer_required(tmp_path) == ((), "any")
    assert needs.vm_memory_mib(tmp_path) == (4096, "qemuargs -m")
    write(tmp_path, "t.json", '{"min_packer_version": "1.5.0", "builders": [{"type": "qemu"}]}')
    assert needs.packer_required(tmp_path) == ((1, 5, 0), "min_packer_version")
    assert needs.vm_memory_mib(tmp_path) == (512, "Packer's qemu default")


def test_an_hcl_template_without_required_version_needs_packer_init(tmp_path):
    write(tmp_path, "t.pkr.hcl", 'source "qemu" "x" {}\n')
    assert needs.packer_required(tmp_path) == ((1, 7, 0), "packer init")


def test_the_makefile_s_package_list_follows_the_release(tmp_path):
    write(tmp_path / "scripts", "check.mk", "define check_packages_deps\n"
          "_current_deps := libnbd-bin nbdkit packer fuse2fs $(1)\n"
          "_focal_deps := libnbd0 nbdfuse nbdkit packer fuse2fs $(2)\nendef\n")
    template = tmp_path / "vmware-esxi"
    write(template, "Makefile", "include ../scripts/check.mk\n"
          "$(eval $(call check_packages_deps,fusefat mtools python3-pip,fusefat mtools python3-pip))\n")
    assert needs.makefile_packages(template, 24) == [
        "libnbd-bin", "nbdkit", "packer", "fuse2fs", "fusefat", "mtools", "python3-pip"]
    assert needs.makefile_packages(template, 12) == [
        "libnbd0", "nbdfuse", "nbdkit", "packer", "fuse2fs", "fusefat", "mtools", "python3-pip"]
    assert needs.makefile_packages(tmp_path / "elsewhere", 24) == []


def test_requirements_and_a_wheel_folder(tmp_path):
    write(tmp_path, "requirements.txt", "# pinned\nipaddr==2.2.0\nPyYAML==6.0.1\nrequests[socks]==2.32.4\n"
          "-r other.txt\nloose\n")
    wanted = needs.requirements(tmp_path)
    assert wanted == [("ipaddr", "2.2.0"), ("PyYAML", "6.0.1"), ("requests", "2.32.4"), ("loose", None)]
    wheels = tmp_path / "wheels"
    for name in ("ipaddr-2.2.0.tar.gz", "pyyaml-6.0.1-cp311-cp311-manylinux_2_17_x86_64.whl",
                 "requests-2.32.3-py3-none-any.whl", "loose-0.1-py3-none-any.whl"):
        write(wheels, name, "")
    assert needs.missing_distributions(wheels, wanted) == ["requests==2.32.4"]
    assert needs.missing_distributions(tmp_path / "none", wanted[:1]) == ["ipaddr==2.2.0"]


def plugin(folder: Path, name: str) -> Path:
    return write(folder, name, "")


def test_plugins_are_found_where_packer_installs_them_for_a_home(tmp_path):
    home = tmp_path / "home"
    folders = needs.plugin_folders(home, None)
    assert folders == [home / ".config/packer/plugins", home / ".packer.d/plugins"]
    suffix = needs.plugin_platform()
    new = plugin(home / ".config/packer/plugins/github.com/hashicorp/qemu", f"packer-plugin-qemu_v1.1.1_x5.0_{suffix}")
    plugin(home / ".config/packer/plugins/github.com/hashicorp/qemu", f"packer-plugin-qemu_v1.1.1_x5.0_{suffix}_SHA256SUM")
    old = plugin(home / ".packer.d/plugins/github.com/hashicorp/qemu", f"packer-plugin-qemu_v1.1.0_x5.0_{suffix}")
    flat = plugin(home / ".packer.d/plugins", "packer-plugin-qemu")
    plugin(home / ".packer.d/plugins/github.com/hashicorp/qemu", "packer-plugin-qemu_v1.1.1_x5.0_windows_amd64.exe")
    assert needs.installed_plugin_versions(folders, QEMU) == [((1, 1, 1), new), ((1, 1, 0), old), ((), flat)]


def test_packer_plugin_path_replaces_the_home_folders(tmp_path):
    assert needs.plugin_folders(tmp_path, f"{tmp_path}/a:{tmp_path}/b") == [tmp_path / "a", tmp_path / "b"]
    assert needs.installed_plugin_versions([tmp_path / "a"], QEMU) == []
