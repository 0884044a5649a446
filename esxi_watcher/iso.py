"""Decide from an ISO's content whether it is a VMware ESXi installer, and which version it is.

Only content counts, never the file name. The ISO is read through pycdlib on an open file object:
the directory tree and a few small text files (each read up to a cap), never the whole image.

An ISO is an ESXi installer when:
  1. a BOOT.CFG (in / or /EFI/BOOT/) names a kernel= and modules= that all exist on the ISO, at least
     one of them a *.v00-style VIB payload module (what the ESXi boot loader needs to boot at all);
  2. a version comes from BOOT.CFG's build=, VMWARE-ESX-BASE-OSL.TXT or the image profile name;
  3. it is not a vCenter Server Appliance (VCSA) installer.

Over 400 lines on purpose: each place an ESXi ISO writes its version (BOOT.CFG, the OSL title, the
image profile) has its reader here, and they are checked against each other.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
from dataclasses import asdict, dataclass
from typing import NamedTuple

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException


@dataclass(frozen=True)
class IsoFacts:
    esxi: bool
    version: str | None = None  # "8.0.2"
    major: int | None = None
    minor: int | None = None
    patch: int | None = None
    update: str | None = None  # "U2", "U3d", or None for a GA release and from ESXi 9 on
    level: str | None = None  # ESXi 9+: the fourth part of the release, "0100" in 9.0.0.0100, "0" in 9.0.0.0
    build: int | None = None  # 22380479
    vendor: str | None = None  # "Dell", "HPE", ... or None for a stock VMware ISO
    profile: str | None = None  # image profile name, e.g. "ESXi-8.0U2-22380479-standard"
    reason: str | None = None  # why it is not an ESXi installer (only when esxi is False)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def release(self) -> str | None:
        """The release as VMware writes it: "6.7", "8.0U2", "7.0U3d", "9.0.0.0100" (None if not ESXi)."""
        if not self.esxi:
            return None
        if self.major is not None and self.major >= FOUR_PART_MAJOR:
            return self.version + (f".{self.level}" if self.level is not None else "")
        return f"{self.major}.{self.minor}{self.update or ''}"


log = logging.getLogger(__name__)


SECTOR_SIZE = 2048
FIRST_DESCRIPTOR_SECTOR = 16
SMALL_TEXT_CAP = 64 * 1024  # BOOT.CFG, ISOLINUX.CFG, .disk/info; the OSL file's title is near its top
PROFILE_CAP = 256 * 1024  # PROFILE.XML's <name> comes before its list of VIBs
BOOT_CFG_PATHS = ("boot.cfg", "efi/boot/boot.cfg")
OSL_PATH = "vmware-esx-base-osl.txt"
PROFILE_PATH = "upgrade/profile.xml"
ISOLINUX_PATH = "isolinux.cfg"
VCSA_FOLDERS = ("vcsa", "vcsa-ui-installer", "vcsa-cli-installer")
# ESXi 9 names its releases with four numbers (9.0.0.0 GA, 9.0.0.0100 a patch, 9.0.1.0 update 1):
# no update letters. The newest major this code knows; newer ones are read the same way, with a warning.
FOUR_PART_MAJOR = 9
NEWEST_KNOWN_MAJOR = 9

# Malformed images make pycdlib raise its own exceptions, and sometimes plain ones from its parsing.
_PARSE_ERRORS = (PyCdlibException, struct.error, ValueError, IndexError, KeyError, UnicodeError)

_VENDOR_TOKENS = {
    "del": "Dell", "dell": "Dell", "hpe": "HPE", "hp": "HPE", "hewlett": "HPE", "lnv": "Lenovo", "lenovo": "Lenovo",
    "cisco": "Cisco", "fjt": "Fujitsu", "fujitsu": "Fujitsu", "hitachi": "Hitachi", "nec": "NEC",
    "inspur": "Inspur", "supermicro": "Supermicro", "huawei": "Huawei", "xfusion": "xFusion",
}
# "ESXi 7.0U3d GA", "ESXi 6.7.0", ESXi 9 (called ESX by then): "ESX 9.0.0.0100", "ESXi 9.0.0.0"
_OSL_TITLE = re.compile(r"\bESXi?\s+(\d+)\.(\d+)(?:\.(\d+)(?:\.(\d{1,4}))?)?\s*(U\d+[a-z]?)?(?![\w.])",
                        re.IGNORECASE)
# ESXi-8.0U2-22380479-standard, ESXi-6.7.0-8169922-standard, Vmw-ESXi-6.7.0-17700523-Custom-Cisco-...,
# ESXi-9.0.0.0100-24813472-standard
_PROFILE_VERSION = re.compile(r"ESXi[-_ ](\d+)\.(\d+)(?:\.(\d+)(?:\.(\d{1,4}))?)?(U\d+[a-z]?)?-(\d+)",
                              re.IGNORECASE)
# Dell: DEL-ESXi_803.24280767-A02, DEL-ESXi_900.24755229-A00
_PROFILE_PACKED_VERSION = re.compile(r"ESXi[-_](\d)(\d)(\d)\.(\d+)", re.IGNORECASE)
# BOOT.CFG build=: 8.0.2-0.0.22380479, 7.0.3-0.55.20328353, 9.0.0-0.0.24755229, 9.0.0-0100.24813472
_BUILD_SETTING = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([\d.]*))?")
_MENU_TITLE = re.compile(r"^\s*MENU\s+TITLE\s+(.+?)(?:\s+Boot\s+Menu)?\s*$", re.IGNORECASE | re.MULTILINE)
_XML_NAME = re.compile(r"<name>\s*([^<]+?)\s*</name>")
_XML_CREATOR = re.compile(r"<creator>\s*([^<]+?)\s*</creator>")
_PAYLOAD_MODULE = re.compile(r"\.v\d\d$")


class _Rejected(Exception):
    """The ISO is not an ESXi installer; the message is the one-line reason."""


def inspect_iso(path: str | os.PathLike) -> IsoFacts:
    """Given the path of a file, return what its content says: an ESXi installer and its version, or why not."""
    try:
        return _inspect_path(path)
    except _Rejected as rejected:
        return IsoFacts(esxi=False, reason=str(rejected))
    except OSError as error:
        return IsoFacts(esxi=False, reason=f"cannot read: {error.strerror or error}")
    except _PARSE_ERRORS as error:
        return IsoFacts(esxi=False, reason=f"unreadable ISO 9660 image: {_one_line(error)}")


def _inspect_path(path: str | os.PathLike) -> IsoFacts:
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise _Rejected("not a regular file")
    with open(path, "rb") as iso_file:
        _check_volume(iso_file)
        iso = pycdlib.PyCdlib()
        iso.open_fp(iso_file)
        try:
            return _facts_from_tree(_IsoTree(iso))
        finally:
            iso.close()


def _check_volume(iso_file) -> None:
    """Raise _Rejected unless the file starts like an ISO 9660 image and holds every block it declares."""
    size = os.fstat(iso_file.fileno()).st_size
    if size == 0:
        raise _Rejected("empty file (0 bytes)")
    sector = FIRST_DESCRIPTOR_SECTOR
    while True:
        iso_file.seek(sector * SECTOR_SIZE)
        descriptor = iso_file.read(SECTOR_SIZE)
        if len(descriptor) < SECTOR_SIZE or descriptor[1:6] != b"CD001":
            raise _Rejected(f"not an ISO 9660 image: no primary volume descriptor{_looks_like(iso_file)}")
        if descriptor[0] == 1:
            break
        if descriptor[0] == 255 or sector > FIRST_DESCRIPTOR_SECTOR + 16:
            raise _Rejected("not an ISO 9660 image: no primary volume descriptor")
        sector += 1
    block_count = struct.unpack_from("<I", descriptor, 80)[0]
    block_size = struct.unpack_from("<H", descriptor, 128)[0]
    declared = block_count * block_size
    if declared > size:
        raise _Rejected(f"truncated ISO: the volume declares {declared} bytes, the file holds {size}")


def _looks_like(iso_file) -> str:
    iso_file.seek(0)
    head = iso_file.read(512)
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return ""
        return " (looks like a text file)"
    return ""


class _IsoTree:
    """The files of an open ISO by lower-case path, read through its most faithful namespace.

    Rock Ridge names first, then Joliet, then plain ISO 9660 identifiers without their ';1' suffix.
    """

    def __init__(self, iso: pycdlib.PyCdlib):
        self.iso = iso
        if iso.has_rock_ridge():
            self.namespace = "rock_ridge"
        elif iso.has_joliet():
            self.namespace = "joliet"
        else:
            self.namespace = "iso9660"
        self.path_key = "joliet_path" if self.namespace == "joliet" else "iso_path"
        self._listings: dict[str, dict[str, tuple[str, object]]] = {}

    def listing(self, folder: str) -> dict[str, tuple[str, object]]:
        """Given a lower-case folder path ("" for the root), return {lower-case name: (ISO path, record)}."""
        if folder in self._listings:
            return self._listings[folder]
        if folder == "":
            iso_path = "/"
        else:
            parent, _, name = folder.rpartition("/")
            entry = self.listing(parent).get(name)
            if entry is None or not entry[1].is_dir():
                self._listings[folder] = {}
                return {}
            iso_path = entry[0]
        children = {}
        for record in self.iso.list_children(**{self.path_key: iso_path}):
            if record.is_dot() or record.is_dotdot():
                continue
            name = self._name(record)
            children.setdefault(name.lower(), (iso_path.rstrip("/") + "/" + self._identifier(record), record))
        self._listings[folder] = children
        return children

    def find(self, path: str):
        """Given a lower-case path without a leading '/', return its record or None."""
        folder, _, name = path.strip("/").rpartition("/")
        entry = self.listing(folder).get(name)
        return entry[1] if entry else None

    def is_file(self, path: str) -> bool:
        record = self.find(path)
        return record is not None and record.is_file()

    def is_dir(self, path: str) -> bool:
        record = self.find(path)
        return record is not None and record.is_dir()

    def read_text(self, path: str, cap: int) -> str | None:
        """Given a lower-case path, return the first `cap` bytes of that file decoded tolerantly, or None."""
        folder, _, name = path.strip("/").rpartition("/")
        entry = self.listing(folder).get(name)
        if entry is None or not entry[1].is_file():
            return None
        with self.iso.open_file_from_iso(**{self.path_key: entry[0]}) as data:
            return data.read(cap).decode("utf-8", errors="replace")

    def _identifier(self, record) -> str:
        raw = record.file_identifier()
        if self.namespace == "joliet":
            return raw.decode("utf-16_be", errors="replace")
        return raw.decode("ascii", errors="replace")

    def _name(self, record) -> str:
        if self.namespace == "rock_ridge" and record.rock_ridge is not None:
            rock_ridge_name = record.rock_ridge.name()
            if rock_ridge_name:
                return rock_ridge_name.decode("utf-8", errors="replace")
        name = self._identifier(record)
        name = name.split(";", 1)[0]
        return name.rstrip(".") if record.is_file() else name


def _facts_from_tree(tree: _IsoTree) -> IsoFacts:
    vcsa = [folder for folder in VCSA_FOLDERS if tree.is_dir(folder)]
    if vcsa:
        raise _Rejected(f"a vCenter Server Appliance (VCSA) installer ({vcsa[0]}/), not an ESXi installer")
    boot_cfg = _installer_boot_cfg(tree)
    osl_text = tree.read_text(OSL_PATH, SMALL_TEXT_CAP) or ""
    profile_xml = tree.read_text(PROFILE_PATH, PROFILE_CAP) or ""
    isolinux_cfg = tree.read_text(ISOLINUX_PATH, SMALL_TEXT_CAP) or ""
    menu_title = _first_match(_MENU_TITLE, isolinux_cfg)
    profile = _first_match(_XML_NAME, profile_xml) or menu_title
    creator = _first_match(_XML_CREATOR, profile_xml)
    facts = _version_facts(boot_cfg.get("build", ""), _osl_version(osl_text), _profile_version(profile))
    if facts is None:
        raise _Rejected("no version: BOOT.CFG has an empty build= and neither VMWARE-ESX-BASE-OSL.TXT "
                        "nor the image profile names one")
    if facts.major > NEWEST_KNOWN_MAJOR:
        log.warning("ESXi %d is newer than the releases this esxi-watcher knows (up to %d): read as "
                    "version %d.%d.%d build %s, like ESXi %d; check its name and title in MAAS",
                    facts.major, NEWEST_KNOWN_MAJOR, facts.major, facts.minor, facts.patch, facts.build,
                    NEWEST_KNOWN_MAJOR)
    vendor = _vendor(profile, menu_title, creator)
    return IsoFacts(esxi=True, version=f"{facts.major}.{facts.minor}.{facts.patch}",
                    major=facts.major, minor=facts.minor, patch=facts.patch, update=facts.update,
                    level=facts.level, build=facts.build, vendor=vendor, profile=profile)


def _installer_boot_cfg(tree: _IsoTree) -> dict[str, str]:
    """Return the settings of the first BOOT.CFG whose kernel and modules are all on the ISO."""
    problems = []
    for path in BOOT_CFG_PATHS:
        if not tree.is_file(path):
            continue
        settings = _parse_boot_cfg(tree.read_text(path, SMALL_TEXT_CAP) or "")
        problem = _boot_cfg_problem(tree, settings)
        if problem is None:
            return settings
        problems.append(f"/{path.upper()} {problem}")
    if problems:
        raise _Rejected(problems[0])
    raise _Rejected("no BOOT.CFG in / or /EFI/BOOT/" + _other_system(tree))


def _parse_boot_cfg(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip().lower(), value.strip())
    return settings


def _boot_cfg_problem(tree: _IsoTree, settings: dict[str, str]) -> str | None:
    """Given BOOT.CFG settings, return why they do not boot an ESXi installer from this ISO, or None."""
    kernel = settings.get("kernel", "").split()
    modules = [module.split()[0] for module in settings.get("modules", "").split("---") if module.strip()]
    if not kernel:
        return "has no kernel="
    if not modules:
        return "has no modules="
    prefix = settings.get("prefix", "")
    files = [kernel[0]] + modules
    missing = [name for name in files if not _boot_file_exists(tree, prefix, name)]
    if missing:
        shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        return f"names {len(missing)} of its {len(files)} boot files that are not on the ISO: {shown}"
    if not any(_PAYLOAD_MODULE.search(module.lower()) for module in modules):
        return "names no *.v00 payload module: not an ESXi boot configuration"
    return None


def _boot_file_exists(tree: _IsoTree, prefix: str, name: str) -> bool:
    candidates = [name] if name.startswith("/") or not prefix else [prefix.rstrip("/") + "/" + name, name]
    return any(tree.is_file(candidate.lower().lstrip("/")) for candidate in candidates)


def _other_system(tree: _IsoTree) -> str:
    """Return a cheap hint of what the ISO is instead (": looks like ..."), or ""."""
    disk_info = tree.read_text(".disk/info", SMALL_TEXT_CAP)
    if disk_info and disk_info.strip():
        return f": looks like {_one_line(disk_info.strip().splitlines()[0])[:100]} (.disk/info)"
    if tree.is_dir("casper"):
        return ": looks like an Ubuntu installer (casper/)"
    if tree.is_file("sources/install.wim") or tree.is_file("sources/install.esd"):
        return ": looks like a Windows installer (sources/install.wim)"
    if tree.is_file(".treeinfo"):
        return ": looks like a Red Hat-family installer (.treeinfo)"
    if tree.is_dir("isolinux") or tree.is_dir("boot/grub"):
        return ": looks like a Linux installer"
    return ""


class _Version(NamedTuple):
    """A version as one source states it; None where that source does not say."""

    major: int
    minor: int
    patch: int | None
    level: str | None = None  # ESXi 9+: "0100" of 9.0.0.0100
    update: str | None = None  # "U3d"
    build: int | None = None


def _osl_version(text: str) -> _Version | None:
    """Return the version in the OSL file's title line ("ESXi 7.0U3d GA", "ESX 9.0.0.0100"), or None."""
    for line in text.splitlines()[:200]:
        match = _OSL_TITLE.search(line)
        if match:
            major, minor, patch, level, update = match.groups()
            return _Version(int(major), int(minor), _int_or_none(patch), level, _normal_update(update))
    return None


def _profile_version(profile: str | None) -> _Version | None:
    """Return the version an image profile name states, or None."""
    if not profile:
        return None
    match = _PROFILE_VERSION.search(profile)
    if match:
        major, minor, patch, level, update, number = match.groups()
        # 6.x patch profiles carry a date-based ID (20190802001) where GA profiles carry the build.
        build = int(number) if len(number) <= 9 else None
        return _Version(int(major), int(minor), _int_or_none(patch), level, _normal_update(update), build)
    match = _PROFILE_PACKED_VERSION.search(profile)
    if match:
        major, minor, patch, number = match.groups()
        return _Version(int(major), int(minor), int(patch), build=int(number) if len(number) <= 9 else None)
    return None


def _build_setting_version(build_setting: str) -> _Version | None:
    """Return the version in BOOT.CFG's build= ("8.0.2-0.0.22380479", "9.0.0-0100.24813472"), or None.

    The numbers after the '-' end with the build number. From ESXi 9 on they mirror the esx-base
    VIB's version: a four-digit first field is the patch level ("0100"), "0.0" the GA release.
    """
    match = _BUILD_SETTING.match(build_setting)
    if not match:
        return None
    major, minor, patch = (int(number) for number in match.groups()[:3])
    tail = [number for number in (match.group(4) or "").split(".") if number]
    build = int(tail[-1]) if tail and len(tail[-1]) >= 5 else None
    level = None
    if major >= FOUR_PART_MAJOR and build is not None:
        if len(tail) == 2 and len(tail[0]) == 4:
            level = tail[0]
        elif tail[:-1] in (["0"], ["0", "0"]):
            level = "0"
    return _Version(major, minor, patch, level, None, build)


def _version_facts(build_setting: str, osl: _Version | None, profile: _Version | None) -> _Version | None:
    """Combine the three version sources into one complete version, or None.

    build= is authoritative for the numbers; the update letter (up to 8.x) only exists in the OSL
    title and the profile name, and is taken from them when they speak of the same major.minor.
    From ESXi 9 on there are no update letters; the patch level comes from whichever source states
    it for the same major.minor.patch.
    """
    stated = _build_setting_version(build_setting)
    if stated is None:
        text = osl or profile
        if text is None:
            return None
        patch = text.patch if text.patch is not None else _patch_from_update(text.major, text.update)
        stated = _Version(text.major, text.minor, patch, text.level)
    major, minor, patch = stated.major, stated.minor, stated.patch
    same_release = [source for source in (osl, profile) if source and source[:2] == (major, minor)]
    if major >= FOUR_PART_MAJOR:
        update = None
        level = next((source.level for source in same_release
                      if source.level is not None and source.patch == patch), stated.level)
    else:
        update = next((source.update for source in same_release if source.update), None)
        if update is None and patch and major >= 7:
            update = f"U{patch}"  # in 7.x and 8.x, x.y.N is Update N
        level = None
    build = stated.build
    if build is None and profile and profile[:2] == (major, minor):
        build = profile.build
    return _Version(major, minor, patch, level, update, build)


def _patch_from_update(major: int, update: str | None) -> int:
    # ESXi 6.x keeps x.y.0 across its updates; from 7.0 on the third number is the update.
    if major >= 7 and update:
        return int(re.match(r"U(\d+)", update).group(1))
    return 0


def _vendor(*names: str | None) -> str | None:
    """Return the hardware vendor named in a profile name, menu title or profile creator, or None."""
    for name in names:
        for token in re.split(r"[^a-z0-9]+", (name or "").lower()):
            if token in _VENDOR_TOKENS:
                return _VENDOR_TOKENS[token]
    return None


def _normal_update(update: str | None) -> str | None:
    return "U" + update[1:].lower() if update else None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _first_match(pattern: re.Pattern, text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1).strip() if match else None


def _one_line(error: object) -> str:
    return " ".join(str(error).split())
