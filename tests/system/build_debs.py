"""Build the .debs the system test installs: esxi-watcher (this tree) and python3-libmaas.

python3-libmaas is in Ubuntu but not in Debian: it is built from the PyPI release with Debian's
pypi2deb (py2dsp) and cached, since it changes only with a new release. Every .deb is built with
the system PATH: a pyenv python3 earlier on PATH would be picked up by pybuild otherwise.

Run as `tests/system/build-debs OUTDIR` (or `python3 -m tests.system.build_debs OUTDIR`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ESXI_WATCHER_TEST_CACHE", "/var/cache/esxi-watcher-tests"))
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# What building, checking and testing the .debs needs on the host (Debian 12).
HOST_PACKAGES = (
    "build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-all",
    "python3-setuptools", "python3-yaml", "lintian", "git",
    # pypi2deb and the build dependencies of python-libmaas
    "pypi2deb", "python3-colorclass", "python3-macaroonbakery", "python3-pymongo",
    "python3-terminaltables",
    # the container
    "debootstrap", "systemd-container", "util-linux",
)


def system_env(**extra: str) -> dict[str, str]:
    """Return the environment with the system PATH (no pyenv, no venv) and C.UTF-8."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYENV_VERSION")}
    env.update(PATH=SYSTEM_PATH, LANG="C.UTF-8", LC_ALL="C.UTF-8", **extra)
    return env


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        log: Path | None = None) -> None:
    """Run argv; on failure raise with the last lines of its output."""
    print("+", " ".join(argv), flush=True)
    result = subprocess.run(argv, cwd=cwd, env=env or system_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if log is not None:
        log.write_text(result.stdout)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise RuntimeError(f"{argv[0]} exited {result.returncode}:\n{tail}")


def install_host_packages() -> None:
    """Install the host packages and the package's Build-Depends that are missing (apt-get, as root)."""
    missing = [name for name in HOST_PACKAGES
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True,
                                 text=True).stdout != "install ok installed"]
    if missing:
        run(["apt-get", "-o", "Acquire::Retries=5", "update", "-qq"])
        run(["apt-get", "-o", "Acquire::Retries=5", "install", "-y", "-qq", "--no-install-recommends",
             *missing], env=system_env(DEBIAN_FRONTEND="noninteractive"))
    # debian/control's Build-Depends, among them what the unit tests of dh_auto_test need.
    if subprocess.run(["dpkg-checkbuilddeps"], cwd=REPO, capture_output=True).returncode != 0:
        run(["apt-get", "-o", "Acquire::Retries=5", "update", "-qq"])
        run(["apt-get", "-o", "Acquire::Retries=5", "build-dep", "-y", "-qq", "--no-install-recommends", "./"],
            cwd=REPO, env=system_env(DEBIAN_FRONTEND="noninteractive"))


def source_files() -> list[str]:
    """Return the tree's tracked and untracked-but-not-ignored files (as git sees them)."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, check=True, capture_output=True).stdout
    return [name for name in listing.decode().split("\0") if name and (REPO / name).exists()]


def build_esxi_watcher(outdir: Path) -> Path:
    """Build esxi-watcher_*.deb from a clean copy of the tree into outdir; return its path."""
    with tempfile.TemporaryDirectory(prefix="esxi-watcher-deb-") as scratch:
        source = Path(scratch) / "esxi-watcher"
        for name in source_files():
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target, follow_symlinks=False)
        started = time.monotonic()
        run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source,
            log=outdir / "esxi-watcher.build.log")
        print(f"dpkg-buildpackage: {time.monotonic() - started:.1f} s", flush=True)
        changes = next(Path(scratch).glob("esxi-watcher_*.changes"))
        lintian(changes, outdir)
        debs = list(Path(scratch).glob("esxi-watcher_*_all.deb"))
        for deb in debs:
            shutil.copy2(deb, outdir / deb.name)
        return outdir / debs[0].name


def lintian(changes: Path, outdir: Path) -> None:
    """Run lintian on the build; print its summary; fail on any error."""
    result = subprocess.run(["lintian", "--info", "--display-info", "--pedantic", str(changes)],
                            env=system_env(), capture_output=True, text=True)
    (outdir / "lintian.txt").write_text(result.stdout + result.stderr)
    counts: dict[str, int] = {}
    for line in result.stdout.splitlines():
        if line[:2] in ("E:", "W:", "I:", "P:", "X:"):
            counts[line[0]] = counts.get(line[0], 0) + 1
    print("lintian:", ", ".join(f"{kind}: {counts.get(kind, 0)}" for kind in "EWIPX"), flush=True)
    print(result.stdout, end="", flush=True)
    if counts.get("E") or result.returncode not in (0, 1) and not result.stdout:
        raise RuntimeError(f"lintian reported errors:\n{result.stdout}{result.stderr}")


# PyPI projects built into .debs with py2dsp: (PyPI name, binary package).
PYPI_DEBS = (("python-libmaas", "python3-libmaas"),)


def build_pypi_deb(project: str, package: str, outdir: Path) -> Path:
    """Build package_*.deb from the PyPI release of project with py2dsp (cached); copy it into outdir."""
    cache = CACHE / "pypi-debs"
    cached = sorted(cache.glob(f"{package}_*.deb"))
    if not cached:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{project}-deb-") as scratch:
            started = time.monotonic()
            run(["py2dsp", "--build", project], cwd=Path(scratch),
                env=system_env(DEB_BUILD_OPTIONS="nocheck"), log=outdir / f"{project}.build.log")
            print(f"py2dsp {project}: {time.monotonic() - started:.1f} s", flush=True)
            for deb in Path(scratch).glob(f"result/{package}_*.deb"):
                shutil.copy2(deb, cache / deb.name)
        cached = sorted(cache.glob(f"{package}_*.deb"))
    shutil.copy2(cached[-1], outdir / cached[-1].name)
    return outdir / cached[-1].name


def build_debs(outdir: Path) -> list[Path]:
    """Given an output folder, build both .debs into it and return their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    install_host_packages()
    return [build_esxi_watcher(outdir), *[build_pypi_deb(project, package, outdir)
                                          for project, package in PYPI_DEBS]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder the .debs are written to")
    arguments = parser.parse_args()
    for deb in build_debs(arguments.outdir.resolve()):
        print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
