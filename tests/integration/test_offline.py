"""The README's "Offline MAAS host" recipe, followed for real: a template of ours whose build runs
`python3 -m pip install -r requirements.txt --target ...` as packer-maas's scripts.tar.xz step does,
on a host where no package index answers (PIP_INDEX_URL at a closed port, no pip configuration).
With the wheel folder prepared once and build.environment naming it, the build succeeds and the
image is registered; without them, the build fails with pip's network error in the reason."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.harness import drop, write_config
from tests.isogen import make_esxi_iso
from tests.paths import ROOT, TEMPLATES

PIP_TEMPLATE = TEMPLATES / "pip-builder" / "vmware-esxi"
BUILD = 22380479


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_index(monkeypatch):
    """The host as an offline MAAS host sees it: pip's index does not answer, no pip config helps."""
    for variable in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_EXTRA_INDEX_URL", "https_proxy", "http_proxy",
                     "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    url = f"http://127.0.0.1:{closed_port()}/simple/"
    monkeypatch.setenv("PIP_INDEX_URL", url)
    return url


def write_wheel(folder: Path, name: str = "esxi_watcher_tiny", version: str = "1.0") -> Path:
    """Write a pure-Python wheel by hand (a zip with its dist-info and RECORD), as `pip download`
    would have fetched one: `VALUE = "offline"` in package `name`."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b'VALUE = "offline"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: esxi-watcher-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = []
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(content)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return wheel


@pytest.fixture
def esxi_iso(tmp_path):
    (tmp_path / "src").mkdir()
    return make_esxi_iso(tmp_path / "src" / f"VMware-VMvisor-Installer-8.0U2-{BUILD}.x86_64.iso",
                         version="8.0U2", build=BUILD)


def test_with_the_offline_recipe_the_build_installs_from_the_wheel_folder_and_registers(
        tmp_path, simulator, daemon_factory, esxi_iso, no_index):
    wheels = tmp_path / "var-lib-esxi-watcher" / "wheels"
    write_wheel(wheels)
    config = write_config(tmp_path / "site", simulator, build__template_dir=str(PIP_TEMPLATE),
                          build__environment={"PIP_FIND_LINKS": str(wheels), "PIP_NO_INDEX": "1"})
    doctor = subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), "doctor", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    checks = {check["name"]: check for check in json.loads(doctor.stdout)}
    assert checks["pip wheels"]["status"] == "PASS", checks["pip wheels"]
    daemon = daemon_factory(config)
    dropped = drop(esxi_iso, daemon.drop_dir)
    job = daemon.wait_for_state(dropped.name, "registered", timeout=120)
    disk = gzip.decompress(simulator.file_bytes(job["resource"]))
    assert b"tiny=offline\n" in disk  # the build imported what pip installed from the folder


def test_without_the_recipe_the_build_fails_with_pip_s_network_error(
        tmp_path, simulator, daemon_factory, esxi_iso, no_index):
    config = write_config(tmp_path / "site", simulator, build__template_dir=str(PIP_TEMPLATE))
    doctor = subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), "doctor", "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "pip index" in {check["name"] for check in json.loads(doctor.stdout)}
    daemon = daemon_factory(config)
    dropped = drop(esxi_iso, daemon.drop_dir)
    job = daemon.wait_for_state(dropped.name, "failed", timeout=120)
    assert "Connection refused" in job["error"]
    assert "No matching distribution found for esxi-watcher-tiny==1.0" in job["error"]
    assert not [resource for resource in simulator.resources() if resource["name"].startswith("esxi/")]


def test_doctor_on_a_host_without_network_warns_that_the_build_will_need_it(tmp_path):
    """doctor in a network namespace of its own (no route anywhere): a real offline host."""
    config = write_config(tmp_path / "site", build__template_dir=str(PIP_TEMPLATE))
    (tmp_path / "site" / "drop").mkdir()
    (tmp_path / "site" / "state").mkdir()
    result = subprocess.run(["unshare", "--net", sys.executable, "-m", "esxi_watcher", "--config", str(config),
                             "doctor", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    index = checks["pip index"]
    assert index["status"] == "WARN"
    assert index["detail"].startswith("pypi.org:443: ")
    assert "will need the network" in index["detail"]
    assert "pip download -r requirements.txt" in index["fix"]
