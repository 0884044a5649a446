"""The template and what it needs: its programs, root password, the Makefile's packages, Packer's
version and the plugins `packer init` would download."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

from esxi_watcher import template_needs as needs
from esxi_watcher.config import Config
from esxi_watcher.doctor.verdict import FAIL, PASS, WARN, Check
from esxi_watcher.errors import EsxiWatcherError

# HOME of the systemd service (systemd/esxi-watcher.service: Environment=HOME=...): where `packer
# init` installs plugins for the builds when build.environment sets no PACKER_PLUGIN_PATH.
SERVICE_HOME = Path("/var/lib/esxi-watcher")


def template(config: Config) -> Iterator[Check]:
    """Given the config, yield whether the template folder gives a build command, and its programs."""
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


def root_password(config: Config) -> Iterator[Check]:
    """Given the config, yield whether the images get a root password of ours that ESXi accepts."""
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


def makefile_packages(config: Config) -> Iterator[Check]:
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


def packer(config: Config) -> Iterator[Check]:
    """Given the config, yield whether the installed Packer is as new as the template needs."""
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


def plugins(config: Config) -> Iterator[Check]:
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
