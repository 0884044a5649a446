"""The demo: one ESXi ISO through the whole pipeline, against the MAAS simulator and a test template.

This is a demonstration, not a real build: MAAS is the project's API simulator on 127.0.0.1, the ISO
is a small generated look-alike of ESXi 8.0U2, and the Packer template (tests/templates/file-builder)
uses Packer's `file` builder instead of booting a VM. The daemon, inotify, packer, python-libmaas
and HTTP are all real.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import DaemonProcess, drop, write_config
from tests.isogen import make_esxi_iso
from tests.maas_simulator import MaasSimulator

BUILD = 22380479


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _follow(daemon: DaemonProcess, printed: int) -> int:
    lines = daemon.log_path.read_text(errors="replace").splitlines()
    for line in lines[printed:]:
        print(f"   daemon | {line}", flush=True)
    return len(lines)


def run_demo(folder: Path) -> int:
    _say(f"demo site in {folder} (MAAS simulator + test template: a demonstration, not a real build)")
    with MaasSimulator(folder / "maas-simulator", mode="3.8") as maas:
        print(f"   MAAS simulator (3.8 rules) at {maas.url}")
        config = write_config(folder / "site", maas, log__format="console", log__level="info")
        daemon = DaemonProcess(config).start()
        printed = 0
        try:
            iso = make_esxi_iso(folder / f"VMware-VMvisor-Installer-8.0U2-{BUILD}.x86_64.iso",
                                version="8.0U2", build=BUILD, payload_size=4 << 20)
            _say(f"cp {iso.name} {daemon.drop_dir}/")
            started = time.monotonic()
            drop(iso, daemon.drop_dir)
            job = None
            while time.monotonic() - started < 120:
                printed = _follow(daemon, printed)
                job = daemon.job_for(iso.name)
                if job and job["state"] in ("registered", "failed", "rejected"):
                    break
                time.sleep(0.3)
            printed = _follow(daemon, printed)
            took = time.monotonic() - started
        finally:
            daemon.stop(signal.SIGTERM)
            _follow(daemon, printed)
        if not job or job["state"] != "registered":
            _say(f"FAILED: {job}")
            return 1
        _say(f"registered in {took:.1f} s")
        for resource in maas.resources():
            if not resource["name"].startswith("esxi/"):
                continue
            for version, resource_set in resource["sets"].items():
                for filename, image in resource_set["files"].items():
                    held = maas.file_bytes(resource["name"])
                    print(f"   MAAS holds {resource['name']} ({resource.get('title')!r}) set {version}: "
                          f"{filename} filetype={image['filetype']} size={image['size']} "
                          f"sha256={image['sha256'][:16]}… complete={image['complete']} "
                          f"bytes match={hashlib.sha256(held).hexdigest() == image['sha256']}")
        _say("esxi-watcher status")
        print(daemon.cli("status").stdout)
        _say(f"{daemon.drop_dir}/done: {sorted(p.name for p in (daemon.drop_dir / 'done').iterdir())}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to put the demo site (default: a new temp dir)")
    arguments = parser.parse_args()
    folder = arguments.dir or Path(tempfile.mkdtemp(prefix="esxi-watcher-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    return run_demo(folder.resolve())


if __name__ == "__main__":
    sys.exit(main())
