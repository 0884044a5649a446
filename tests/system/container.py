"""A real systemd in a container: a debootstrapped Debian 12, 13 or unstable booted with systemd-nspawn.

The root file system is built once per release and package list and cached under
/var/cache/esxi-watcher-tests/roots/<key>/ (debootstrap minbase + systemd + the packages the .debs
under test depend on and recommend); each test run boots a copy of it. apt inside the container
uses the host's Debian mirror (for the root's own release) and the host's Acquire:: settings.
Packages a release no longer carries (Debian's packer, and python3-terminaltables that
python3-libmaas needs, both gone after Debian 12) are installed into its root from the host's
Debian 12 as .debs (`apt-get download`).

    root = cached_root(extra_packages)
    with Container.boot(root) as container:
        container.run(["systemctl", "status", "esxi-watcher"])
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable

from tests.system.build_debs import CACHE, system_env

HOST_SUITE = "bookworm"  # the host's own release: CI runs on Debian 12
SUITES = ("bookworm", "trixie", "sid")  # Debian 12, 13 and unstable
# Packages taken from the host's release when a root's release has none: Debian's packer 1.6.6
# (the test templates' Packer) is a Go binary that depends on libc6 only; python3-terminaltables
# (a python3-libmaas dependency) is pure Python.
FROM_HOST_SUITE = ("packer", "python3-terminaltables")
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
NSPAWN_RUN = Path("/run/systemd/nspawn")
PRUNE_AFTER_DAYS = 14


class ContainerError(RuntimeError):
    """The container could not be built, booted, or a command in it failed."""


def host_mirror() -> str:
    """Return the Debian mirror the host's apt uses for its own release (its URI)."""
    listing = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"],
                             capture_output=True, text=True, env=system_env()).stdout
    for line in listing.splitlines():
        uri, _, release = line.partition(" ")
        if release == HOST_SUITE:
            return uri
    return "http://deb.debian.org/debian/"


def host_apt_files() -> list[Path]:
    """Return the host's apt.conf.d files that set Acquire:: options (proxies, snapshot validity),
    which the container needs to reach the same mirror. Sources are the root's own (debootstrap's
    sources.list names the root's release on the host's mirror)."""
    files = [path for path in sorted(Path("/etc/apt/apt.conf.d").glob("*"))
             if path.is_file() and "Acquire" in path.read_text(errors="replace")]
    files += [Path("/etc/apt/apt.conf")]
    return [path for path in files if path.is_file() and path.stat().st_size > 0]


def copy_host_apt_config(root: Path) -> None:
    """Given a container root, give it the host's Acquire:: settings, under names of their own
    (read last, so they win) that no package's conffile has: a copied 50appstream made appstream's
    postinst stop at a conffile question."""
    for path in host_apt_files():
        name = "apt.conf.d/zz-host-" + path.name if path.parent.name == "apt.conf.d" else path.name
        target = root / "etc/apt" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def host_suite_deb(package: str) -> Path:
    """Return the host release's .deb of a package (downloaded once with apt-get download)."""
    folder = CACHE / "host-debs"
    cached = sorted(folder.glob(f"{package}_*.deb"))
    if not cached:
        folder.mkdir(parents=True, exist_ok=True)
        run_logged(["apt-get", "-o", "Acquire::Retries=5", "download", package], timeout=600, cwd=folder)
        cached = sorted(folder.glob(f"{package}_*.deb"))
    return cached[-1]


def run_logged(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run argv (system PATH), raise ContainerError with the output's tail when it fails."""
    print("+", " ".join(argv), flush=True)
    kwargs.setdefault("env", system_env(DEBIAN_FRONTEND="noninteractive"))
    kwargs.setdefault("stdin", subprocess.DEVNULL)  # a question fails at once instead of waiting
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout, **kwargs)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-40:])
        raise ContainerError(f"{argv[0]} exited {result.returncode}:\n{tail}")
    return result


def nspawn_env(**extra: str) -> dict[str, str]:
    """Return the environment of systemd-nspawn: the system one, and the unified cgroup hierarchy
    (cgroup v2) in the container whatever the host mounts. Debian 13's systemd refuses cgroup v1
    and unstable's has no support for it left; v2 is also every release's default on real hosts."""
    return system_env(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1", **extra)


def ensure_nspawn_runtime_dir() -> bool:
    """Mount a tmpfs on /run/systemd/nspawn unless /run already is one; return True if mounted."""
    def filesystem_of(path: Path) -> str:
        return subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)],
                              capture_output=True, text=True).stdout.strip()

    NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
    if filesystem_of(NSPAWN_RUN) == "tmpfs":
        return False
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(NSPAWN_RUN)], check=True)
    return True


def root_key(packages: Iterable[str], suite: str) -> str:
    """Given the extra packages and the release, return the cache key of the root that holds them."""
    text = "\n".join([suite, host_mirror(), *BASE_PACKAGES, "--", *sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_root(packages: Iterable[str], suite: str = HOST_SUITE) -> Path:
    """Given extra packages and a Debian release, return a cached root of that release with systemd
    and the packages installed, building it (debootstrap, then apt-get in the root) when the cache
    has none."""
    packages = sorted(set(packages))
    final = CACHE / "roots" / root_key(packages, suite)
    prune_cache(keep=final)
    if (final / ".complete").exists():
        os.utime(final / ".complete")  # last used: roots unused for PRUNE_AFTER_DAYS go
        print(f"container root: cached {final}", flush=True)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
    building.chmod(0o755)  # the container's /: mkdtemp's 0700 locks out every non-root service
    try:
        started = time.monotonic()
        run_logged(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
                    suite, str(building), host_mirror()], timeout=900)
        print(f"debootstrap {suite}: {time.monotonic() - started:.1f} s", flush=True)
        copy_host_apt_config(building)
        if packages:
            install_in_root(building, packages)
        (building / "etc/machine-id").write_text("")
        (building / ".complete").write_text("\n".join(packages) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
        print(f"container root: built {final} in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final


def prune_cache(keep: Path) -> None:
    """Remove cached roots unused for PRUNE_AFTER_DAYS and run copies left by killed runs."""
    now = time.time()
    for root in (CACHE / "roots").glob("*"):
        marker = root / ".complete"
        last_used = marker.stat().st_mtime if marker.exists() else root.stat().st_mtime
        if root != keep and now - last_used > PRUNE_AFTER_DAYS * 86400:
            shutil.rmtree(root, ignore_errors=True)
    for run in (CACHE / "runs").glob("*"):
        if now - run.stat().st_mtime > 86400:  # no test run lasts a day: its container is gone
            shutil.rmtree(run, ignore_errors=True) if run.is_dir() else run.unlink()


def install_in_root(root: Path, packages: list[str]) -> None:
    """Install packages into a root that is not booted (services are not started); those of
    FROM_HOST_SUITE that the root's release lacks come from the host's release."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no service starts while the cached root is built\nexit 101\n")
    policy.chmod(0o755)
    try:
        nspawn = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D", str(root),
                  "--setenv=DEBIAN_FRONTEND=noninteractive"]
        run_logged([*nspawn, "apt-get", "-o", "Acquire::Retries=5", "update", "-qq"], timeout=300)
        wanted = []
        for package in packages:
            if package in FROM_HOST_SUITE and not has_candidate(nspawn, package):
                deb = host_suite_deb(package)
                shutil.copy2(deb, root / "var/tmp" / deb.name)  # nspawn hides /tmp under a tmpfs
                print(f"{package}: not in the root's release, installing {deb.name}", flush=True)
                wanted.append(f"/var/tmp/{deb.name}")
            else:
                wanted.append(package)
        run_logged([*nspawn, "apt-get", "-o", "Acquire::Retries=5", "-o", "Dpkg::Options::=--force-confdef",
                    "-o", "Dpkg::Options::=--force-confold", "install", "-y", "-qq", "--no-install-recommends",
                    *wanted], timeout=1200)
        run_logged([*nspawn, "apt-get", "clean"], timeout=60)
    finally:
        policy.unlink()
        for deb in (root / "var/tmp").glob("*.deb"):
            deb.unlink()


def has_candidate(nspawn: list[str], package: str) -> bool:
    """Return whether apt in the root (nspawn: the command line that enters it) can install package.
    A name only other packages refer to has no candidate, an unknown one no policy at all."""
    policy = subprocess.run([*nspawn, "apt-cache", "policy", package], capture_output=True, text=True,
                            env=system_env()).stdout
    return re.search(r"^\s*Candidate: (?!\(none\))", policy, re.MULTILINE) is not None


def copy_root(source: Path) -> Path:
    """Return a fresh copy of a cached root for one run."""
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="esxi-watcher-system-", dir=runs))
    target.chmod(0o755)  # the container's /: mkdtemp's 0700 locks out every non-root service
    run_logged(["cp", "-a", "--reflink=auto", f"{source}/.", str(target)], timeout=600)
    (target / ".complete").unlink(missing_ok=True)
    copy_host_apt_config(target)
    return target


class Container:
    """A booted container: its nspawn process, the host pid of its systemd, and its root."""

    def __init__(self, root: Path, nspawn: subprocess.Popen, console_log: Path, mounted_run: bool):
        self.root = root
        self.nspawn = nspawn
        self.console_log = console_log
        self.mounted_run = mounted_run
        self.init_pid = 0

    @classmethod
    def boot(cls, cached: Path, devices: Iterable[str] = ()) -> "Container":
        """Copy a cached root, boot it (with the host's devices given, e.g. /dev/fuse, bound in)
        and wait until systemd is up; return the Container."""
        root = copy_root(cached)
        mounted_run = ensure_nspawn_runtime_dir()
        console_log = root.with_name(root.name + ".console.log")
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "-D", str(root), "-b",
                "--console=read-only", f"--machine={root.name[-12:].replace('_', '-').strip('-')}",
                *[f"--bind={device}" for device in devices if Path(device).exists()]]
        print("+", " ".join(argv), flush=True)
        with open(console_log, "wb") as console:
            nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                      stderr=subprocess.STDOUT, env=nspawn_env(),
                                      start_new_session=True)
        container = cls(root, nspawn, console_log, mounted_run)
        try:
            container.wait_booted()
        except BaseException:
            container.stop()
            raise
        return container

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def wait_booted(self, timeout: float = 120) -> None:
        """Wait until the container's systemd answers and the boot has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited {self.nspawn.returncode}:\n"
                                     + self.console_tail())
            self.init_pid = self.init_pid or self.find_init_pid()
            if self.init_pid:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    print(f"container booted: is-system-running = {state}", flush=True)
                    return
            time.sleep(0.5)
        raise ContainerError(f"the container did not finish booting in {timeout:.0f} s:\n"
                             + self.console_tail())

    def find_init_pid(self) -> int:
        """Return the host pid of the container's systemd (a descendant of nspawn), or 0."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        pending = list(children.get(self.nspawn.pid, []))
        while pending:
            pid = pending.pop()
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
            except OSError:
                continue
            pending += children.get(pid, [])
        return 0

    def run(self, argv: list[str], check: bool = True, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the container (all its namespaces); return the completed process."""
        command = ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i",
                   "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=cat",
                   "SYSTEMD_COLORS=0", "DEBIAN_FRONTEND=noninteractive", "TERM=dumb", *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                input=input if input is not None else "")
        if check and result.returncode != 0:
            raise ContainerError(f"{' '.join(argv)} exited {result.returncode} in the container:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def show(self, argv: list[str], title: str = "") -> str:
        """Run argv inside, print its output under a heading (for the CI log), return it."""
        result = self.run(argv, check=False)
        output = result.stdout + result.stderr
        print(f"\n===== {title or ' '.join(argv)} (exit {result.returncode}) =====\n{output}"
              f"===== end =====\n", flush=True)
        return output

    def path(self, inside: str) -> Path:
        """Return the host path of a path inside the container's root."""
        return self.root / inside.lstrip("/")

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> None:
        """Power the container off (SIGKILL after timeout), unmount, remove its root copy."""
        if self.nspawn.poll() is None:
            # nspawn turns SIGTERM into an orderly shutdown of the container's systemd.
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.nspawn.pid, signal.SIGKILL)
                self.nspawn.wait(30)
        print(f"container stopped (nspawn exit {self.nspawn.returncode})", flush=True)
        # Unmount the tmpfs this run put there, unless another container still uses it.
        if self.mounted_run and not any(NSPAWN_RUN.glob("propagate/*")):
            subprocess.run(["umount", str(NSPAWN_RUN)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.console_log.unlink(missing_ok=True)


def deb_field_packages(deb: Path, fields: Iterable[str]) -> list[str]:
    """Given a .deb, return the packages its fields name (first of each alternative, no versions)."""
    output = subprocess.run(["dpkg-deb", "-f", str(deb), *fields], capture_output=True, text=True,
                            check=True).stdout
    packages = []
    for line in output.splitlines():
        _, _, value = line.partition(":") if len(list(fields)) > 1 else ("", "", line)
        for relation in value.split(","):
            name = relation.split("|")[0].split("(")[0].strip().removesuffix(":any")
            if name:
                packages.append(name)
    return packages


def packages_for(debs: Iterable[Path]) -> list[str]:
    """Given the .debs under test, return what their Depends and Recommends pull in from Debian."""
    debs = list(debs)
    built = {subprocess.run(["dpkg-deb", "-f", str(deb), "Package"], capture_output=True,
                            text=True, check=True).stdout.strip() for deb in debs}
    wanted = {name for deb in debs for name in deb_field_packages(deb, ["Depends", "Recommends"])}
    return sorted(wanted - built)


def install_debs(container: Container, debs: Iterable[Path]) -> None:
    """Copy the .debs into the container and install them with apt, as an admin would."""
    debs = list(debs)
    inside = container.path("/root/debs")
    inside.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy2(deb, inside / deb.name)
    container.run(["apt-get", "update", "-qq"], timeout=300)
    result = container.run(["apt-get", "install", "-y", *[f"/root/debs/{deb.name}" for deb in debs]],
                           timeout=600)
    print("\n".join(line for line in result.stdout.splitlines()
                    if not line.startswith("(Reading database")), flush=True)
