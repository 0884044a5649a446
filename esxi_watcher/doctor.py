"""`esxi-watcher doctor`: check, one line each, what a build and a registration will need.

Each check yields Check records (PASS, WARN or FAIL, a one-line detail and the fix); a FAIL means
a build or a registration will fail as things are, a WARN that it may, or that it needs something
the host may not have when it runs (the network, for an offline MAAS host).
"""

from __future__ import annotations

import grp
import os
import shutil
import socket
import stat
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from esxi_watcher import template_needs as needs
from esxi_watcher.config import Config, TargetConfig
from esxi_watcher.errors import EsxiWatcherError
from esxi_watcher.intake import human_size
from esxi_watcher.logs import redact

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
# The Debian package's group for the drop dir and the mode postinst gives it (setgid, group-writable).
DROP_GROUP = "esxi-drop"
DROP_MODE = 0o2775
# HOME of the systemd service (systemd/esxi-watcher.service: Environment=HOME=...): where `packer
# init` installs plugins for the builds when build.environment sets no PACKER_PLUGIN_PATH.
SERVICE_HOME = Path("/var/lib/esxi-watcher")
TYPICAL_ISO_SIZE = 700 << 20  # an ESXi 8/9 installer ISO, when none waits in the drop dir
MAAS_TIMEOUT = 10.0  # seconds per MAAS request: doctor answers quickly even when MAAS is away
NETWORK_TIMEOUT = 3.0
PYPI = ("pypi.org", 443)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@dataclass(frozen=True)
class Check:
    """One verdict: `name` says what was checked (maas[site-a] reachable), `fix` what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """Return the check as one line of text: status, name, detail and the fix."""
        fields = self.to_dict()
        text = f"{self.status:<6}{fields['name']}: {fields['detail']}"
        return text + (f" (fix: {fields['fix']})" if self.fix and self.status != PASS else "")

    def to_dict(self) -> dict[str, str]:
        """Return the fields, each one line with secrets masked (details may quote what a server said)."""
        return {key: " ".join(redact(value).split()) for key, value in asdict(self).items()}


def run_checks(config: Config) -> Iterator[Check]:
    """Given the configuration, yield every check's verdict, host first, then each MAAS target."""
    for check in (_folders, _template, _root_password, _makefile_packages, _packer, _plugins, _kvm, _fuse,
                  _memory, _disk, _environment):
        yield from _guarded(check.__name__.strip("_"), check, config)
    for target in config.targets:
        yield from _guarded(f"maas[{target.name}]", _maas, target)


def _guarded(name: str, check, argument) -> Iterator[Check]:
    """Run one check; a check that breaks on something unforeseen says so and the others still run."""
    try:
        yield from check(argument)
    except Exception as error:  # noqa: BLE001 - doctor reports on a host that may hold anything
        yield Check(name, FAIL, f"could not be checked: {type(error).__name__}: {error}",
                    "report this as a bug of esxi-watcher, with this line")


def exit_code(checks: list[Check]) -> int:
    """Given the verdicts, return the command's exit status: 1 on any FAIL, else 0."""
    return 1 if any(check.status == FAIL for check in checks) else 0


# -- folders ------------------------------------------------------------------------------------
def _folders(config: Config) -> Iterator[Check]:
    for label, folder in (("drop dir", config.drop_dir), ("state dir", config.state_dir)):
        if not folder.is_dir():
            yield Check(label, FAIL, f"{folder} does not exist", f"mkdir -p {folder} (the package's postinst "
                                                                  f"makes the default ones)")
        elif not os.access(folder, os.W_OK):
            yield Check(label, FAIL, f"{folder} is not writable by this user", f"run doctor as the service "
                                                                               f"does (root), or chown {folder}")
        else:
            yield Check(label, PASS, f"{folder} is writable")
    if config.drop_dir.is_dir():
        yield _drop_dir_access(config.drop_dir)


def _drop_dir_access(folder: Path) -> Check:
    """Whether admins other than root can drop ISOs: the folder's group and mode."""
    info = folder.stat()
    mode = stat.S_IMODE(info.st_mode)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    shown = f"{folder} is {group}-group, mode {mode:04o}"
    fix = f"chgrp {DROP_GROUP} {folder} && chmod {DROP_MODE:04o} {folder}; add admins with `adduser NAME {DROP_GROUP}`"
    if not _group_exists(DROP_GROUP):
        fix = f"addgroup --system {DROP_GROUP} && " + fix
    if mode & stat.S_IWOTH:
        return Check("drop dir access", WARN, f"{shown}: anyone on the host may drop files", fix)
    if group != DROP_GROUP or not mode & stat.S_IWGRP:
        return Check("drop dir access", WARN, f"{shown}: only its owner can drop ISOs", fix)
    if not mode & stat.S_ISGID:
        return Check("drop dir access", WARN, f"{shown}: new files do not keep the group (no setgid)",
                     f"chmod g+s {folder}")
    return Check("drop dir access", PASS, f"{shown}: members of {group} can drop ISOs")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


# -- the template and its tools -----------------------------------------------------------------
def _template(config: Config) -> Iterator[Check]:
    from esxi_watcher import build

    template = config.build.template_dir
    if not template.is_dir():
        yield Check("template", FAIL, f"{template} is not a folder",
                    "git clone https://github.com/canonical/packer-maas and set build.template_dir to its "
                    "vmware-esxi folder")
        return
    try:
        commands = build.build_commands(template, template / "x.iso", config.build.command, template)
    except EsxiWatcherError as error:
        yield Check("template", FAIL, f"{template}: {error}", "set build.command")
        return
    yield Check("template", PASS, f"{template} ({needs.generation(template)}): runs "
                                  f"{' '.join(commands[-1][:2])}")
    for program in sorted({command[0] for command in commands}):
        found = shutil.which(program)
        yield (Check(f"program {program}", PASS, found) if found else
               Check(f"program {program}", FAIL, "not found on PATH", f"apt-get install {program}"))


def _root_password(config: Config) -> Iterator[Check]:
    from esxi_watcher.kickstart import root_password_problem

    password_file = config.build.root_password_file
    if password_file is None:
        yield Check("root password", WARN, "build.root_password_file is not set: images get the template's "
                                           "default root password",
                    "write a password to a root-only file (chmod 600) and set build.root_password_file")
        return
    problem = root_password_problem(config.build)
    if problem:
        yield Check("root password", FAIL, problem, f"fix {password_file} (mode 0600, a password ESXi accepts)")
    else:
        yield Check("root password", PASS, f"{password_file} holds a password ESXi accepts")


def _makefile_packages(config: Config) -> Iterator[Check]:
    """The packages packer-maas's Makefile checks with `dpkg -s` before it builds anything."""
    if config.build.command is not None:
        return
    release = _lsb_release_major()
    packages = needs.makefile_packages(config.build.template_dir, release)
    if not packages:
        return
    if shutil.which("dpkg-query") is None:
        yield Check("Makefile packages", WARN, f"`make` checks `dpkg -s {' '.join(packages)}`, and this host has "
                                               f"no dpkg: that check will fail", "set build.command")
        return
    missing = [package for package in packages if not _dpkg_installed(package)]
    if not missing:
        yield Check("Makefile packages", PASS, f"installed: {' '.join(packages)}")
        return
    note = ""
    if release < 22:
        note = f" (`lsb_release -sr` is {release}, below 22: the Makefile checks its Ubuntu 20.04 list)"
    yield Check("Makefile packages", FAIL, f"`make` checks `dpkg -s {' '.join(packages)}`; missing: "
                                           f"{' '.join(missing)}{note}", f"apt-get install {' '.join(missing)}")


def _lsb_release_major() -> int:
    """The major number `lsb_release -sr` prints (what check.mk compares with 22), read from os-release."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VERSION_ID="):
            digits = line.split("=", 1)[1].strip('"').split(".")[0]
            return int(digits) if digits.isdigit() else 0
    return 0


def _dpkg_installed(package: str) -> bool:
    from esxi_watcher.process import run_quick

    result = run_quick(["dpkg-query", "-W", "-f=${Status}", package], timeout=30)
    return result.returncode == 0 and result.stdout.strip().endswith(" installed")


def _packer_version() -> tuple[tuple[int, ...], str] | None:
    from esxi_watcher.process import run_quick

    if shutil.which("packer") is None:
        return None
    result = run_quick(["packer", "version"], timeout=30, env={"CHECKPOINT_DISABLE": "1"})
    first = (result.stdout.strip().splitlines() or [""])[0]
    return needs.version_tuple(first), first


def _packer(config: Config) -> Iterator[Check]:
    template = config.build.template_dir
    if needs.generation(template) == "none" and config.build.command is None:
        return
    wanted, source = needs.packer_required(template)
    found = _packer_version()
    if found is None:
        yield Check("packer", FAIL, "not found on PATH", _packer_fix(wanted))
        return
    version, text = found
    if wanted and version < wanted:
        yield Check("packer", FAIL, f"{text} is older than the template needs ({source}: "
                                    f"{'.'.join(map(str, wanted))})", _packer_fix(wanted))
        return
    needed = f"the template needs {'.'.join(map(str, wanted))} ({source})" if wanted else "any version will do"
    yield Check("packer", PASS, f"{text}; {needed}")


def _packer_fix(wanted: tuple[int, ...]) -> str:
    at_least = ".".join(map(str, wanted)) if wanted else "any"
    return (f"install Packer >= {at_least} as a Debian package (packer-maas's Makefile checks `dpkg -s packer`): "
            f"HashiCorp's apt repository, https://developer.hashicorp.com/packer/install")


def _plugins(config: Config) -> Iterator[Check]:
    """The plugins the template pins: `packer init` downloads them unless they are installed already."""
    plugin_path = config.build.environment.get("PACKER_PLUGIN_PATH")
    folders = needs.plugin_folders(SERVICE_HOME, plugin_path)
    where = f"PACKER_PLUGIN_PATH {plugin_path}" if plugin_path else f"the service's HOME {SERVICE_HOME}"
    for plugin in needs.required_plugins(config.build.template_dir):
        name = f"packer plugin {plugin.name}"
        installed = needs.installed_plugin_versions(folders, plugin)
        fitting = [path for version, path in installed if version and needs.satisfies(version, plugin.constraint)]
        if fitting:
            yield Check(name, PASS, f"{fitting[0]} fits {plugin.constraint} ({where}); `packer init` "
                                    f"needs no network")
            continue
        found = ", ".join(path.name for _, path in installed)
        detail = (f"no copy fitting {plugin.constraint} in {where} (found: {found})" if found else
                  f"not installed in {where} ({', '.join(str(folder) for folder in folders)})")
        yield Check(name, WARN, f"{detail}: `packer init` will download it, which needs the network",
                    _plugin_fix(plugin, folders[0]))


def _plugin_fix(plugin: needs.Plugin, folder: Path) -> str:
    version = _highest_allowed(plugin.constraint)
    return (f"once, on a host with network: `PACKER_PLUGIN_PATH=/tmp/packer-plugins packer plugins install "
            f"{plugin.source} {version}` (Packer >= 1.8), copy /tmp/packer-plugins/ to {folder} here (or "
            f"elsewhere, named by build.environment PACKER_PLUGIN_PATH)")


def _highest_allowed(constraint: str) -> str:
    """A plugin version to install for the constraint: the highest x.y.z below a `<` bound, else the lower bound."""
    for part in constraint.split(","):
        part = part.strip()
        if part.startswith("<") and not part.startswith("<="):
            bound = needs.version_tuple(part)
            if bound and bound[-1] > 0:
                return ".".join(map(str, bound[:-1] + (bound[-1] - 1,)))
    lower = [needs.version_tuple(part) for part in constraint.split(",") if part.strip().startswith(">")]
    return ".".join(map(str, lower[0])) if lower and lower[0] else "VERSION"



# -- the machine ---------------------------------------------------------------------------------
def _kvm(config: Config) -> Iterator[Check]:
    from esxi_watcher import kvm

    if not kvm.template_wants_kvm(config.build.template_dir, config.build.command):
        yield Check("KVM", PASS, "the template does not ask for it")
        return
    verdict = kvm.kvm_can_run_guests(cache_dir=config.state_dir)
    if verdict.ok:
        yield Check("KVM", PASS, "/dev/kvm runs guests")
    else:
        yield Check("KVM", FAIL, verdict.reason, "enable virtualisation (VT-x/AMD-V) in the firmware or "
                                                  "the hypervisor, modprobe kvm_intel or kvm_amd")


def _fuse(config: Config) -> Iterator[Check]:
    """2023+ templates mount the built disk through FUSE (scripts/fuse-nbd: nbdfuse, fusefat)."""
    wanted = _template_mentions(config.build.template_dir, "fuse-nbd")
    try:
        descriptor = os.open("/dev/fuse", os.O_RDWR)
    except OSError as error:
        if wanted:
            yield Check("FUSE", FAIL, f"/dev/fuse cannot be opened: {error.strerror}",
                        "modprobe fuse; in a container, pass /dev/fuse in")
        else:
            yield Check("FUSE", PASS, f"/dev/fuse cannot be opened ({error.strerror}); the template does not use it")
        return
    os.close(descriptor)
    yield Check("FUSE", PASS, "/dev/fuse opens" + ("" if wanted else " (the template does not use it)"))


def _template_mentions(template_dir: Path, word: str) -> bool:
    """Whether any file of the template folder names `word` (e.g. the script it sources)."""
    try:
        files = [path for path in Path(template_dir).iterdir() if path.is_file()]
    except OSError:
        return False
    for path in files:
        try:
            if path.stat().st_size < 1 << 20 and word in path.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def _meminfo() -> dict[str, int]:
    """Given /proc/meminfo, return its fields in bytes (MemTotal, MemAvailable, ...)."""
    fields = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return fields


def _memory(config: Config) -> Iterator[Check]:
    if needs.generation(config.build.template_dir) == "none":
        return
    mib, source = needs.vm_memory_mib(config.build.template_dir)
    wanted = mib << 20
    info = _meminfo()
    total, available = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    shown = f"the VM takes {human_size(wanted)} ({source}); {human_size(available)} available of {human_size(total)}"
    if wanted > total:
        yield Check("memory", FAIL, shown, "a host with more memory, or lower the template's memory "
                                           "(ESXi's installer needs 8 GiB)")
    elif wanted > available:
        yield Check("memory", WARN, shown, "stop what takes the memory before a build, or add memory")
    else:
        yield Check("memory", PASS, shown)


def _disk(config: Config) -> Iterator[Check]:
    """Room in state_dir for one build: a copy of the ISO's worth, the VM's disk, and the artifact."""
    from esxi_watcher import build

    if not config.state_dir.is_dir():
        return
    iso_size, iso_source = _largest_waiting_iso(config.drop_dir)
    disk = build.template_disk_size(config.build.template_dir)
    artifact = iso_size  # a compressed fresh ESXi install is about its ISO's size
    needed = iso_size + disk + artifact
    free = shutil.disk_usage(config.state_dir).free
    shown = (f"{human_size(free)} free in {config.state_dir}; a build needs about {human_size(needed)} "
             f"({iso_source} {human_size(iso_size)} + the template's disk {human_size(disk)} + the image)")
    if free < needed:
        yield Check("disk", FAIL, shown, f"free space in {config.state_dir} (`esxi-watcher forget JOB` drops "
                                          f"kept images) or move state_dir to a larger file system")
    else:
        yield Check("disk", PASS, shown)


def _largest_waiting_iso(drop_dir: Path) -> tuple[int, str]:
    """The size of the largest ISO waiting in the drop dir (no symlinks followed), or a typical one."""
    largest = 0
    try:
        with os.scandir(drop_dir) as entries:
            for entry in entries:
                if entry.name.lower().endswith(".iso") and entry.is_file(follow_symlinks=False):
                    largest = max(largest, entry.stat(follow_symlinks=False).st_size)
    except OSError:
        pass
    return (largest, "the largest ISO waiting") if largest else (TYPICAL_ISO_SIZE, "a typical ESXi ISO")


# -- the network a build needs (build.environment) -----------------------------------------------
def _environment(config: Config) -> Iterator[Check]:
    environment = config.build.environment
    for variable in PROXY_VARIABLES:
        if environment.get(variable):
            yield _proxy(variable, environment[variable])
    wanted = needs.requirements(config.build.template_dir)
    if not wanted:
        return
    find_links = environment.get("PIP_FIND_LINKS")
    no_index = environment.get("PIP_NO_INDEX", "").lower() in ("1", "yes", "true", "on")
    covered = False
    if find_links:
        check = _find_links(find_links, wanted)
        covered = check.status == PASS
        yield check
    if no_index:
        if not find_links:
            yield Check("pip index", FAIL, "PIP_NO_INDEX is set and no PIP_FIND_LINKS: pip has nowhere to "
                                            "install requirements.txt from", _wheels_fix())
        return
    index = environment.get("PIP_INDEX_URL")
    if index:
        yield _pip_index(index, covered)
    elif not covered and not _proxied(environment):
        yield _pypi_reachable()


def _proxy(variable: str, value: str) -> Check:
    try:
        address = urlsplit(value if "://" in value else f"http://{value}")
        host, port = address.hostname, address.port or (443 if address.scheme == "https" else 80)
    except ValueError as error:
        return Check(f"proxy {variable}", FAIL, f"not a URL ({error})", f"set build.environment {variable} to "
                                                                         f"http://HOST:PORT")
    if not host:
        return Check(f"proxy {variable}", FAIL, "names no host", f"set build.environment {variable} to "
                                                                 f"http://HOST:PORT")
    shown = f"{host}:{port}"
    reason = _connect(host, port)
    if reason:
        return Check(f"proxy {variable}", FAIL, f"{shown}: {reason}", f"start the proxy or fix build.environment {variable}")
    return Check(f"proxy {variable}", PASS, f"{shown} accepts connections")


def _proxied(environment: dict[str, str]) -> bool:
    return any(environment.get(variable) for variable in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"))


def _connect(host: str, port: int) -> str | None:
    """Given an address, return None when a TCP connection opens within NETWORK_TIMEOUT, else why not."""
    try:
        with socket.create_connection((host, port), timeout=NETWORK_TIMEOUT):
            return None
    except socket.gaierror as error:
        return f"name not resolved ({error.strerror})"
    except socket.timeout:
        return f"no answer within {NETWORK_TIMEOUT:g} s"
    except OSError as error:
        return error.strerror or str(error)


def _find_links(value: str, wanted: list[tuple[str, str | None]]) -> Check:
    """PIP_FIND_LINKS: one or more folders (or file:// URLs, or http ones we cannot list), space-separated."""
    entries = value.split()
    folders = [Path(entry[len("file://"):] if entry.startswith("file://") else entry)
               for entry in entries if "://" not in entry or entry.startswith("file://")]
    urls = [_without_credentials(entry) for entry in entries if "://" in entry and not entry.startswith("file://")]
    if not folders:
        return Check("pip wheels", WARN, f"PIP_FIND_LINKS {' '.join(urls)}: a URL, not checked",
                     "a local folder can be checked: " + _wheels_fix())
    absent = [str(folder) for folder in folders if not folder.is_dir()]
    if absent:
        return Check("pip wheels", FAIL, f"PIP_FIND_LINKS {', '.join(absent)}: not a folder", _wheels_fix(folders[0]))
    missing = set.intersection(*(set(needs.missing_distributions(folder, wanted)) for folder in folders))
    shown = " ".join(str(folder) for folder in folders)
    if missing and not urls:
        listed = ", ".join(sorted(missing, key=str.lower))
        return Check("pip wheels", FAIL, f"PIP_FIND_LINKS {shown} lacks {listed} of the template's requirements.txt",
                     _wheels_fix(folders[0]))
    if missing:
        return Check("pip wheels", WARN, f"PIP_FIND_LINKS {shown} lacks {', '.join(sorted(missing))}; "
                                         f"{' '.join(urls)} not checked", _wheels_fix(folders[0]))
    return Check("pip wheels", PASS, f"PIP_FIND_LINKS {shown} holds all {len(wanted)} requirements")


def _without_credentials(url: str) -> str:
    """Given a URL, return it without a user:password@ part (index and proxy URLs may carry one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a URL)"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _wheels_fix(folder: Path | None = None) -> str:
    target = folder or Path("/var/lib/esxi-watcher/wheels")
    return (f"once, on a host with network: `python3 -m pip download -r requirements.txt -d wheels` in the "
            f"template folder, copy wheels/ to {target}, set build.environment PIP_FIND_LINKS: {target} and "
            f"PIP_NO_INDEX: '1' (README: Offline MAAS host)")


def _pip_index(url: str, covered: bool) -> Check:
    shown = _without_credentials(url)
    reason = _http_answer(shown)  # whether it answers at all: a 401 without the credentials counts
    if reason is None:
        return Check("pip index", PASS, f"PIP_INDEX_URL {shown} answers")
    if covered:
        return Check("pip index", WARN, f"PIP_INDEX_URL {shown}: {reason}; pip retries it for each requirement "
                                        f"before taking PIP_FIND_LINKS", "set PIP_NO_INDEX: '1' in build.environment")
    return Check("pip index", FAIL, f"PIP_INDEX_URL {shown}: {reason}: `pip install -r requirements.txt` will fail",
                 _wheels_fix())


def _http_answer(url: str) -> str | None:
    """Given a URL, return None when it answers HTTP (any status below 500), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=NETWORK_TIMEOUT):
            return None
    except urllib.error.HTTPError as error:
        return None if error.code < 500 else f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return redact(getattr(reason, "strerror", None) or str(reason))


def _pypi_reachable() -> Check:
    reason = _connect(*PYPI)
    if reason is None:
        return Check("pip index", PASS, f"{PYPI[0]} reachable: the build's `pip install -r requirements.txt` "
                                        f"can download")
    return Check("pip index", WARN, f"{PYPI[0]}:{PYPI[1]}: {reason}: the build's `pip install -r "
                                    f"requirements.txt` (and `packer init`) will need the network", _wheels_fix())


# -- MAAS -----------------------------------------------------------------------------------------
def _maas(target: TargetConfig) -> Iterator[Check]:
    from esxi_watcher import maas
    from esxi_watcher.maas.probe import probe_target

    label = f"maas[{target.name}]"
    try:
        key = maas.read_api_key(target.api_key_file)
    except EsxiWatcherError as error:
        yield Check(f"{label} API key", FAIL, str(error),
                    f"`maas apikey --username=ADMIN > {target.api_key_file} && chmod 600 {target.api_key_file}`")
        return
    yield Check(f"{label} API key", PASS, f"{target.api_key_file}")
    timeout = min(target.request_timeout, MAAS_TIMEOUT)
    probe = probe_target(maas.Endpoint(url=target.url, api_key=key, request_timeout=timeout))
    if probe.unreachable:
        yield Check(f"{label} reachable", FAIL, f"{target.url}: {probe.unreachable}",
                    f"start MAAS (`snap services maas` / `systemctl status maas-regiond`) or fix {target.where}.url; "
                    f"`curl {target.url}api/2.0/version/` must answer")
        return
    yield Check(f"{label} reachable", PASS, f"MAAS {probe.version} at {target.url}")
    if probe.key_refused:
        yield Check(f"{label} key accepted", FAIL, probe.key_refused,
                    f"`maas apikey --username=ADMIN > {target.api_key_file}` on the region")
        return
    yield Check(f"{label} key accepted", PASS, f"as user {probe.username}")
    if not probe.admin:
        yield Check(f"{label} may create boot resources", FAIL,
                    f"not allowed to create boot resources: {probe.username} is not a MAAS admin",
                    f"use an admin's key: `maas apikey --username=ADMIN > {target.api_key_file}` (or make "
                    f"{probe.username} an admin)")
        return
    yield Check(f"{label} may create boot resources", PASS, f"{probe.username} is a MAAS admin")
