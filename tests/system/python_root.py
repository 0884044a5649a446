"""Run tests on the Python of another Debian release: Debian unstable's python3 (3.14) for the core tests.

The release's root is debootstrapped once and cached (tests.system.container.cached_root), with its
python3, python3-venv and the programs the core tests run (Debian 12's packer where the release has
none). A venv made by that python3 is cached beside the roots (PyPI's newest versions of our
dependencies, `pip install -e .[test]`) and installed again only when pyproject.toml changes.
The tests run in systemd-nspawn (not booted; /proc, /sys, /dev and a /tmp of its own, /dev/fuse
bound in, /proc/sys writable as on the host for the inotify queue test) on a throw-away overlay of
the root, with this tree bound at /src. pip inside trusts what the host trusts
(the host's CA bundle is bound over the root's, as a TLS-inspecting proxy needs) and gets the host's
proxy and index settings.

    python3 -m tests.system.python_root sid -q tests/unit/test_iso.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time

from tests.system.build_debs import CACHE, REPO, install_host_packages
from tests.system.container import SUITES, cached_root, nspawn_env

# python3 and the programs the core tests run for real (packer, make, qemu-nbd stand-ins' shells,
# nbdkit/nbdfuse and FUSE for the stale-build cleanup, mtools and fusefat of packer-maas, chattr).
PACKAGES = ("python3", "python3-venv", "ca-certificates", "packer", "make", "procps", "qemu-utils",
            "nbdkit", "libnbd-bin", "fuse3", "fusefat", "mtools", "gzip", "e2fsprogs")
VENV_INSIDE = "/opt/esxi-watcher-venv"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The host's settings pip inside needs to reach PyPI the same way.
PASSED_ENVIRONMENT = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                      "PIP_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")


def nspawn_argv(root, venv) -> list[str]:
    """Return the systemd-nspawn command line that runs a command in an overlay of root."""
    argv = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "--as-pid2", "--console=pipe",
            "-D", str(root), "--volatile=overlay", f"--bind={REPO}:/src", f"--bind={venv}:{VENV_INSIDE}", "--chdir=/src",
            "--setenv=LANG=C.UTF-8", "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1",
            "--setenv=PYTHONDONTWRITEBYTECODE=1"]
    if os.path.exists("/dev/fuse"):  # the stale-build cleanup tests mount real FUSE file systems
        argv.append("--bind=/dev/fuse")
    if os.path.isfile(HOST_CA_BUNDLE):
        argv.append(f"--bind-ro={HOST_CA_BUNDLE}")
    argv += [f"--setenv={name}={os.environ[name]}" for name in PASSED_ENVIRONMENT if name in os.environ]
    return argv


def prepare(suite: str):
    """Return (root, venv) for suite: both cached, the venv holding this project and its tests."""
    started = time.monotonic()
    root = cached_root(PACKAGES, suite)
    venv = CACHE / "venvs" / f"{root.name}-{suite}"
    venv.mkdir(parents=True, exist_ok=True)
    stamp = venv / f".installed-{hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
    if not stamp.exists():
        inside = nspawn_argv(root, venv)
        python = f"{VENV_INSIDE}/bin/python"
        for argv in (["python3", "-m", "venv", "--clear", VENV_INSIDE],
                     [python, "-m", "pip", "install", "-q", "--upgrade", "pip"],
                     [python, "-m", "pip", "install", "-q", "-e", "/src[test]"]):
            print("+", " ".join(argv), flush=True)
            subprocess.run([*inside, *argv], check=True, env=nspawn_env())
        stamp.touch()
    print(f"{suite} root and venv ready: {time.monotonic() - started:.1f} s", flush=True)
    return root, venv


def run_tests(suite: str, pytest_arguments: list[str]) -> int:
    """Run pytest with these arguments on suite's python3; return its exit code."""
    install_host_packages()
    root, venv = prepare(suite)
    inside = nspawn_argv(root, venv)
    python = f"{VENV_INSIDE}/bin/python"
    subprocess.run([*inside, python, "-c", "import sys; print('python:', sys.executable, sys.version)"],
                   check=True, env=nspawn_env())
    return subprocess.run([*inside, python, "-m", "pytest", "-p", "no:cacheprovider", *pytest_arguments],
                          env=nspawn_env(SYSTEMD_NSPAWN_API_VFS_WRITABLE="1")).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SUITES, help="the Debian release whose python3 runs the tests")
    parser.add_argument("pytest_arguments", nargs=argparse.REMAINDER, help="passed to pytest")
    arguments = parser.parse_args()
    return run_tests(arguments.suite, arguments.pytest_arguments)


if __name__ == "__main__":
    sys.exit(main())
