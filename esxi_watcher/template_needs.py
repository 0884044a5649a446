"""What a packer-maas template asks of the host, read from its files (pure: runs nothing).

The Packer version it requires, the plugins it pins, the VM's memory, the Debian packages its
Makefile checks for, and the Python requirements its build installs with pip; plus where Packer
looks for installed plugins and whether a folder of wheels covers the requirements.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

# `packer init` (and with it HCL templates that pin plugins) came with Packer 1.7.0.
PACKER_INIT_VERSION = (1, 7, 0)
PACKER_QEMU_DEFAULT_MEMORY_MIB = 512
_HCL_REQUIRED_VERSION = re.compile(r'required_version\s*=\s*"([^"]+)"')
_HCL_PLUGIN = re.compile(r'(\w+)\s*=\s*\{[^{}]*?version\s*=\s*"([^"]+)"[^{}]*?source\s*=\s*"([^"]+)"[^{}]*\}',
                         re.S)
_HCL_MEMORY = re.compile(r'^\s*memory\s*=\s*"?(\d+)"?', re.M)
_JSON_MEMORY = re.compile(r'"memory"\s*:\s*"?(\d+)"?')
_QEMU_M = re.compile(r'\[\s*"-m"\s*,\s*"(\d+)([MG]?)"\s*\]', re.I)
_CALL_DEPS = re.compile(r"\$\(call\s+check_packages_deps\s*,([^,)]*),([^)]*)\)")
_DEPS_LINE = re.compile(r"^(_current_deps|_focal_deps)\s*:=\s*(.*)$", re.M)
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^]]*\])?\s*(?:==\s*([^\s;#]+))?")


@dataclass(frozen=True)
class Plugin:
    """A plugin the template pins in required_plugins."""

    name: str  # qemu
    source: str  # github.com/hashicorp/qemu
    constraint: str  # ">= 1.1.0, < 1.1.2"


def version_tuple(text: str) -> tuple[int, ...]:
    """Given '1.12.0', 'v1.6.6' or 'Packer v1.11.2', return (1, 12, 0); () when there is none."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(part) for part in match.groups("0")) if match else ()


def satisfies(version: tuple[int, ...], constraint: str) -> bool:
    """Given a version and a Packer constraint ('>= 1.1.0, < 1.1.2', '~> 1.1'), return whether it fits."""
    for part in (piece.strip() for piece in constraint.split(",")):
        match = re.fullmatch(r"(>=|<=|!=|~>|>|<|=)?\s*v?([\d.]+)", part)
        if not match:
            continue
        operator = match.group(1) or "="
        wanted = tuple(int(n) for n in match.group(2).split(".") if n)
        padded = wanted + (0,) * (3 - len(wanted))
        checks = {
            ">=": version >= padded, ">": version > padded, "<=": version <= padded,
            "<": version < padded, "=": version == padded, "!=": version != padded,
            "~>": version >= padded and version[: len(wanted) - 1] == wanted[:-1],
        }
        if not checks[operator]:
            return False
    return True


def _texts(template_dir: Path, suffix: str) -> list[str]:
    texts = []
    for path in sorted(Path(template_dir).glob(f"*{suffix}")):
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    return texts


def generation(template_dir: Path) -> str:
    """Given the template folder, return 'makefile', 'hcl', 'json' or 'none' (as build_commands picks)."""
    folder = Path(template_dir)
    if (folder / "Makefile").is_file():
        return "makefile"
    if list(folder.glob("*.pkr.hcl")):
        return "hcl"
    if list(folder.glob("*.json")):
        return "json"
    return "none"


def packer_required(template_dir: Path) -> tuple[tuple[int, ...], str]:
    """Given the template folder, return the lowest Packer version it needs and where that comes from."""
    for text in _texts(template_dir, ".pkr.hcl"):
        match = _HCL_REQUIRED_VERSION.search(text)
        if match:
            lowest = re.search(r">=?\s*v?([\d.]+)", match.group(1))
            if lowest:
                return version_tuple(lowest.group(1)), f'required_version "{match.group(1)}"'
    for text in _texts(template_dir, ".json"):
        try:
            document = json.loads(text)
        except ValueError:
            continue
        if isinstance(document, dict) and document.get("min_packer_version"):
            return version_tuple(str(document["min_packer_version"])), "min_packer_version"
    if generation(template_dir) in ("hcl", "makefile"):
        return PACKER_INIT_VERSION, "packer init"
    return (), "any"


def required_plugins(template_dir: Path) -> list[Plugin]:
    """Given the template folder, return the plugins its *.pkr.hcl files pin in required_plugins."""
    plugins = []
    for text in _texts(template_dir, ".pkr.hcl"):
        start = text.find("required_plugins")
        if start < 0:
            continue
        for name, constraint, source in _HCL_PLUGIN.findall(text[start:]):
            plugins.append(Plugin(name=name, source=source, constraint=constraint))
    return plugins


def vm_memory_mib(template_dir: Path) -> tuple[int, str]:
    """Given the template folder, return the VM's memory in MiB and where it was read."""
    for suffix in (".pkr.hcl", ".json"):
        for text in _texts(template_dir, suffix):
            match = _QEMU_M.search(text)
            if match:
                return int(match.group(1)) * (1024 if match.group(2).upper() == "G" else 1), "qemuargs -m"
            match = (_HCL_MEMORY if suffix == ".pkr.hcl" else _JSON_MEMORY).search(text)
            if match:
                return int(match.group(1)), "memory"
    return PACKER_QEMU_DEFAULT_MEMORY_MIB, "Packer's qemu default"


def makefile_packages(template_dir: Path, release_major: int) -> list[str]:
    """Given the template folder and the host's `lsb_release -sr` major number, return the packages
    its Makefile checks with `dpkg -s` (packer-maas's scripts/check.mk), or [] when it checks none."""
    folder = Path(template_dir)
    try:
        makefile = (folder / "Makefile").read_text(errors="replace")
        check_mk = (folder.parent / "scripts" / "check.mk").read_text(errors="replace")
    except OSError:
        return []
    call = _CALL_DEPS.search(makefile)
    lists = dict(_DEPS_LINE.findall(check_mk))
    if call is None or not lists:
        return []
    current, focal = call.group(1).split(), call.group(2).split()
    if release_major >= 22:
        template, extra = lists.get("_current_deps", ""), current
    else:
        template, extra = lists.get("_focal_deps", ""), focal
    return [word for word in template.split() if not word.startswith("$(")] + extra


def requirements(template_dir: Path) -> list[tuple[str, str | None]]:
    """Given the template folder, return (name, pinned version or None) for each line of its
    requirements.txt (what the build installs with pip), or [] when there is none."""
    try:
        text = (Path(template_dir) / "requirements.txt").read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        if line.strip().startswith(("#", "-")) or not line.strip():
            continue
        match = _REQUIREMENT.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def normalized(name: str) -> str:
    """Given a distribution name, return it as wheel file names spell it (PEP 503, '-' as '_')."""
    return re.sub(r"[-_.]+", "_", name).lower()


def missing_distributions(folder: Path, wanted: list[tuple[str, str | None]]) -> list[str]:
    """Given a folder of wheels/sdists (pip download's) and requirements, return those with no file."""
    files = set()
    try:
        for path in Path(folder).iterdir():
            stem = path.name
            for ending in (".whl", ".tar.gz", ".zip"):
                if stem.endswith(ending):
                    name, _, rest = stem[: -len(ending)].partition("-")
                    files.add((normalized(name), rest.split("-")[0]))
    except OSError:
        return [f"{name}=={version}" if version else name for name, version in wanted]
    missing = []
    for name, version in wanted:
        if not any(have == normalized(name) and (version is None or got == version) for have, got in files):
            missing.append(f"{name}=={version}" if version else name)
    return missing


def plugin_platform() -> str:
    """Return this host's plugin suffix as Packer names it: 'linux_amd64', 'linux_arm64', ..."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


def plugin_folders(home: Path, plugin_path: str | None) -> list[Path]:
    """Given the build's HOME and PACKER_PLUGIN_PATH, return the folders Packer looks in for plugins."""
    if plugin_path:
        return [Path(part) for part in plugin_path.split(":") if part]
    return [home / ".config" / "packer" / "plugins", home / ".packer.d" / "plugins"]


def installed_plugin_versions(folders: list[Path], plugin: Plugin) -> list[tuple[tuple[int, ...], Path]]:
    """Given plugin folders and a plugin, return the (version, file) of each copy installed there.

    Layouts: <folder>/github.com/hashicorp/qemu/packer-plugin-qemu_v1.1.1_x5.0_linux_amd64 (Packer
    1.7+, the way `packer init` and `packer plugins install` write it), and an unversioned
    <folder>/packer-plugin-qemu (older manual installs; its version is unknown: reported as ()).
    """
    pattern = re.compile(rf"packer-plugin-{re.escape(plugin.name)}_v([\d.]+)_x[\d.]+_{plugin_platform()}(\.exe)?$")
    found = []
    for folder in folders:
        nested = folder.joinpath(*plugin.source.split("/"))
        try:
            candidates = list(nested.iterdir()) if nested.is_dir() else []
        except OSError:
            candidates = []
        for path in candidates:
            match = pattern.match(path.name)
            if match and path.is_file():
                found.append((version_tuple(match.group(1)), path))
        flat = folder / f"packer-plugin-{plugin.name}"
        if flat.is_file():
            found.append(((), flat))
    return found


def mentions(template_dir: Path, word: str) -> bool:
    """Given the template folder, return whether any of its files names `word` (e.g. a script it sources)."""
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
