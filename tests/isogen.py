"""Generate small ISO images laid out like real ESXi installer ISOs (and look-alikes) with pycdlib.

The real layout these imitate is described in docs/design.md and the README. Command line:
    python -m tests.isogen --version 8.0U2 --build 22380479 [--vendor Dell] [--joliet] OUT.iso
    python -m tests.isogen --version 9.0.0.0100 --build 24813472 OUT.iso

ESXi 9 names its releases with four numbers (9.0.0.0 GA, 9.0.0.0100 a patch release, 9.0.1.0 the
first update) and has no update letters; "9.0" stands for 9.0.0.0.
"""

from __future__ import annotations

import argparse
import io
import re
import tempfile
from pathlib import Path

import pycdlib

DRIVER_MODULES = ("ata_liba.v00", "bnxtnet.v00", "nvme_pci.v00", "vmw_ahci.v00", "ixgben.v00")
VENDOR_MODULES = {"Dell": ("dellbmc.v00", "qedentv.v00"), "HPE": ("amsd.v00", "ilo.v00", "ssacli.v00")}
VENDOR_CREATORS = {"Dell": "Dell Inc.", "HPE": "Hewlett Packard Enterprise"}
# Modules before and after the driver VIBs, in the order a real BOOT.CFG lists them.
HEAD_MODULES = ("jumpstrt.gz", "useropts.gz", "features.gz", "k.b00", "uc_intel.b00", "uc_amd.b00",
                "procfs.b00", "vmx.v00", "vim.v00", "tpm.v00", "s.v00")
TAIL_MODULES = ("tools.t00", "loadesx.v00", "esxupdt.v00", "imgdb.tgz", "imgpayld.tgz")
PAYLOAD_MODULE = "imgpayld.tgz"
KERNEL = "b.b00"


FOUR_PART_MAJOR = 9  # ESXi 9 on: four-part releases, no update letters


def parse_version(version: str) -> tuple[int, int, int, str | None]:
    """Given "8.0U2", "7.0U3d", "6.7", "6.7.0" or "9.0.0.0100", return (major, minor, patch, update or None)."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+)(?:\.(\d{1,4}))?)?(?:[uU](\d+)([a-z]?))?", version)
    if not match:
        raise ValueError(f"version {version!r}: expected e.g. 8.0U2, 7.0U3d, 6.7 or 9.0.0.0100")
    major, minor, patch, level, update_number, update_letter = match.groups()
    major, minor = int(major), int(minor)
    if (level or int(major) >= FOUR_PART_MAJOR) and update_number:
        raise ValueError(f"version {version!r}: ESXi {FOUR_PART_MAJOR} and later have no update letters")
    if patch is None:
        # ESXi 6.x stays x.y.0 across updates; from 7.0 on the third number is the update.
        patch = int(update_number) if update_number and major >= 7 else 0
    update = f"U{update_number}{update_letter}" if update_number else None
    return major, minor, int(patch), update


def release_level(version: str) -> str | None:
    """Given a version, return the fourth part of an ESXi 9+ release ("0100", "0" for GA), else None."""
    major, minor, patch, _ = parse_version(version)
    if major < FOUR_PART_MAJOR:
        return None
    parts = version.split(".")
    return parts[3] if len(parts) > 3 else "0"


def vib_version(version: str, build: int) -> str:
    """Return the esx-base VIB version, which BOOT.CFG's build= repeats.

    8.0U3b: 8.0.3-0.35.24280767 (a sequence number per update letter). ESXi 9 (Broadcom's release
    notes): 9.0.0-0100.24813472 for the 9.0.0.0100 patch, and 9.0.0-0.0.24755229 for a GA release.
    """
    major, minor, patch, update = parse_version(version)
    level = release_level(version)
    if level is not None:
        return f"{major}.{minor}.{patch}-{level if level.strip('0') else '0.0'}.{build}"
    letter = update[-1] if update and update[-1].isalpha() else ""
    sequence = (ord(letter) - ord("a") + 1) * 10 if letter else 0
    return f"{major}.{minor}.{patch}-0.{sequence}.{build}"


def release_name(version: str) -> str:
    """Return the release as VMware writes it in titles: 8.0U2, 6.7.0 stays 6.7, 9.0.0.0100."""
    major, minor, patch, update = parse_version(version)
    level = release_level(version)
    if level is not None:
        return f"{major}.{minor}.{patch}.{level}"
    return f"{major}.{minor}{update or ''}"


def esxi_profile_name(version: str, build: int, vendor: str | None) -> str:
    """Return the image profile name a stock, Dell or HPE ISO of this version carries."""
    major, minor, patch, update = parse_version(version)
    level = release_level(version)
    if vendor == "Dell":
        return f"DEL-ESXi_{major}{minor}{patch}.{build}-{'A00' if level is not None else 'A02'}"
    if vendor == "HPE":
        return f"HPE-Custom-AddOn_{major}{minor}{patch}.0.0.10.7.0-22"
    if vendor:
        return f"Vmw-ESXi-{major}.{minor}.{patch}-{build}-Custom-{vendor}-{major}.{minor}.{patch}.1"
    if level is not None:
        return f"ESXi-{major}.{minor}.{patch}.{level}-{build}-standard"
    if update:
        return f"ESXi-{major}.{minor}{update}-{build}-standard"
    if major >= 7:
        return f"ESXi-{major}.{minor}-{build}-standard"
    return f"ESXi-{major}.{minor}.{patch}-{build}-standard"


def boot_modules(vendor: str | None) -> list[str]:
    return [*HEAD_MODULES, *DRIVER_MODULES, *VENDOR_MODULES.get(vendor or "", ()), *TAIL_MODULES]


def boot_cfg_text(version: str, build: int, vendor: str | None = None) -> str:
    """Return a BOOT.CFG like a real ESXi ISO's; 6.x gets an empty build= as real 6.x ISOs can."""
    major = parse_version(version)[0]
    build_setting = "" if major < 7 else vib_version(version, build)
    modules = " --- ".join("/" + module for module in boot_modules(vendor))
    return (f"bootstate=0\ntitle=Loading ESXi installer\ntimeout=5\nprefix=\nkernel=/{KERNEL}\n"
            f"kernelopt=runweasel cdromBoot\nmodules={modules}\nbuild={build_setting}\nupdated=0\n")


def osl_bytes(version: str) -> bytes:
    """Return a VMWARE-ESX-BASE-OSL.TXT head: CRLF, the title on line 3, a byte that is not UTF-8.

    From 9.0 on the product is called ESX: the title reads "ESX 9.0.0.0100 GA".
    """
    major = parse_version(version)[0]
    product = "ESX" if major >= FOUR_PART_MAJOR else "ESXi"
    lines = ["open_source_licenses.txt", "", f"{product} {release_name(version)} GA", "=" * 64, "",
             "The following copyright statements and licenses apply to various open",
             "source software packages (or portions thereof) that are distributed with",
             "this VMware Product."]
    return "\r\n".join(lines).encode("ascii") + b"\r\nCopyright \xa9 VMware, Inc.\r\n" + b"License text.\r\n" * 40


def isolinux_cfg_text(profile: str) -> str:
    return (f"DEFAULT menu.c32\nMENU TITLE {profile} Boot Menu\nNOHALT 1\nPROMPT 0\nTIMEOUT 80\n"
            f"LABEL install\n  KERNEL mboot.c32\n  APPEND -c boot.cfg\n  MENU LABEL {profile} ^Installer\n"
            "LABEL hddboot\n  LOCALBOOT 0x80\n  MENU LABEL ^Boot from local disk\n")


def profile_xml_text(profile: str, version: str, build: int, vendor: str | None) -> str:
    stock_creator = "Broadcom, Inc." if parse_version(version)[0] >= FOUR_PART_MAJOR else "VMware, Inc."
    creator = VENDOR_CREATORS.get(vendor or "", vendor or stock_creator)
    vibs = "".join(f"<vib><vibid>VMware_bootbank_{name}_{vib_version(version, build)}</vibid></vib>"
                   for name in ("esx-base", "esx-update", "vsan", "esx-ui"))
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<imageprofile><name>{profile}</name>'
            f"<creator>{creator}</creator><description>(Updated) {profile}</description>"
            f"<acceptancelevel>partner</acceptancelevel><vibList>{vibs}</vibList></imageprofile>\n")


class _IsoWriter:
    """A new pycdlib ISO that takes lower-case paths and names them as stock or rebuilt ISOs do.

    Stock ESXi ISOs carry only upper-case ISO 9660 names (interchange level 4 keeps
    VMWARE-ESX-BASE-OSL.TXT whole); rebuilt ones add Rock Ridge and Joliet with lower-case names,
    under 8.3 ISO 9660 names.
    """

    def __init__(self, joliet_rr: bool, rock_ridge: bool = True, volume_id: str = "ESXI-8.0.0"):
        self.joliet_rr = joliet_rr
        self.rock_ridge = joliet_rr and rock_ridge
        self.iso = pycdlib.PyCdlib()
        # Joliet's copy of the volume identifier is UTF-16: 16 characters at most.
        self.iso.new(interchange_level=1 if joliet_rr else 4, vol_ident=volume_id[:16] if joliet_rr else volume_id,
                     joliet=3 if joliet_rr else None, rock_ridge="1.09" if self.rock_ridge else None)
        self._iso_paths: dict[str, str] = {"": ""}
        self._open_files: list = []

    def add_dir(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        if parent and parent not in self._iso_paths:
            self.add_dir(parent)
        iso_path = self._iso_paths[parent] + "/" + self._iso9660_name(parent, name, directory=True)
        self._iso_paths[path] = iso_path
        self.iso.add_directory(iso_path, **self._extension_names(path, name))

    def add_bytes(self, path: str, data: bytes) -> str:
        return self.add_stream(path, io.BytesIO(data), len(data))

    def add_stream(self, path: str, stream, length: int) -> str:
        parent, _, name = path.rpartition("/")
        if parent not in self._iso_paths:
            self.add_dir(parent)
        iso_path = self._iso_paths[parent] + "/" + self._iso9660_name(parent, name, directory=False) + ";1"
        self._open_files.append(stream)
        self.iso.add_fp(stream, length, iso_path, **self._extension_names(path, name))
        self._iso_paths[path] = iso_path
        return iso_path

    def add_boot_catalog(self, bios_image: str, efi_image: str) -> None:
        self.iso.add_eltorito(self._iso_paths[bios_image], bootcatfile="/BOOT.CAT;1",
                              rr_bootcatname="boot.cat" if self.rock_ridge else None,
                              joliet_bootcatfile="/boot.cat" if self.joliet_rr else None,
                              boot_load_size=4, boot_info_table=True)
        self.iso.add_eltorito(self._iso_paths[efi_image], bootcatfile="/BOOT.CAT;1", efi=True)

    def write(self, path: str | Path) -> Path:
        with open(path, "wb") as output:
            self.iso.write_fp(output)
        self.iso.close()
        for stream in self._open_files:
            stream.close()
        return Path(path)

    def _extension_names(self, path: str, name: str) -> dict[str, str]:
        names = {}
        if self.rock_ridge:
            names["rr_name"] = name
        if self.joliet_rr:
            names["joliet_path"] = "/" + path
        return names

    def _iso9660_name(self, parent: str, name: str, directory: bool) -> str:
        name = name.upper()
        if not self.joliet_rr:
            return name
        stem, dot, extension = name.rpartition(".") if "." in name and not directory else (name, "", "")
        stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:8] or "_"
        extension = re.sub(r"[^A-Z0-9_]", "_", extension)[:3]
        candidate = f"{stem}.{extension}" if extension else stem
        taken = {iso_path.rsplit("/", 1)[-1].split(";")[0] for key, iso_path in self._iso_paths.items()
                 if key.rpartition("/")[0] == parent}
        counter = 0
        while candidate in taken:
            counter += 1
            suffix = str(counter)
            candidate = stem[:8 - len(suffix)] + suffix + (f".{extension}" if extension else "")
        return candidate


def make_esxi_iso(path, version: str = "8.0U2", build: int = 22380479, vendor: str | None = None,
                  joliet_rr: bool = False, payload_size: int = 0, salt: bytes = b"", *,
                  rock_ridge: bool = True) -> Path:
    """Write an ISO laid out like an ESXi installer of this version and return its path.

    payload_size adds that many (sparse, zero) bytes to IMGPAYLD.TGZ; salt goes at its start so two
    ISOs of one build can differ. With joliet_rr, rock_ridge=False leaves Joliet alone.
    """
    major, minor, patch, _ = parse_version(version)
    profile = esxi_profile_name(version, build, vendor)
    writer = _IsoWriter(joliet_rr, rock_ridge, volume_id=f"ESXI-{major}.{minor}.{patch}-{build}")
    boot_cfg = boot_cfg_text(version, build, vendor).encode()
    writer.add_bytes("boot.cfg", boot_cfg)
    writer.add_bytes("efi/boot/boot.cfg", boot_cfg)
    for name in ("bootx64.efi", "crypto64.efi", "safeboot.efi"):
        writer.add_bytes(f"efi/boot/{name}", b"MZ" + name.encode() + b"\0" * 64)
    for module in [KERNEL, *boot_modules(vendor)]:
        if module != PAYLOAD_MODULE:
            writer.add_bytes(module, f"{module} {version} {build}\n".encode())
    payload = tempfile.TemporaryFile()
    payload.write(b"\x1f\x8b" + salt)
    payload.truncate(max(payload_size, payload.tell()))
    writer.add_stream(PAYLOAD_MODULE, payload, max(payload_size, 2 + len(salt)))
    writer.add_bytes("isolinux.bin", b"\xfa" + b"\0" * 4095)
    writer.add_bytes("isolinux.cfg", isolinux_cfg_text(profile).encode())
    writer.add_bytes("mboot.c32", b"mboot\n")
    writer.add_bytes("efiboot.img", b"\xeb\x3c\x90" + b"\0" * 2045)
    writer.add_bytes(".discinfo", f"{build}\nESXi {version}\nx86_64\n".encode())
    writer.add_bytes("vmware-esx-base-osl.txt", osl_bytes(version))
    writer.add_bytes("upgrade/profile.xml", profile_xml_text(profile, version, build, vendor).encode())
    writer.add_bytes("upgrade/metadata.zip", b"PK\x05\x06" + b"\0" * 18)
    writer.add_boot_catalog("isolinux.bin", "efiboot.img")
    return writer.write(path)


def make_ubuntu_iso(path) -> Path:
    """Write an ISO laid out like an Ubuntu server installer (casper/, .disk/info, boot/grub)."""
    writer = _IsoWriter(joliet_rr=True, volume_id="Ubuntu-Server 22.04.3 LTS amd64")
    writer.add_bytes(".disk/info", b'Ubuntu-Server 22.04.3 LTS "Jammy Jellyfish" - Release amd64 (20230810)')
    writer.add_bytes("casper/vmlinuz", b"MZ linux kernel\n")
    writer.add_bytes("casper/initrd", b"\x1f\x8b initrd\n")
    writer.add_bytes("boot/grub/grub.cfg", b'menuentry "Try or Install Ubuntu Server" {\n\tlinux /casper/vmlinuz\n}\n')
    writer.add_bytes("boot/grub/i386-pc/eltorito.img", b"\xfa" + b"\0" * 2047)
    writer.add_bytes("efi/boot/bootx64.efi", b"MZ shim\n")
    writer.add_bytes("md5sum.txt", b"0123456789abcdef  ./casper/vmlinuz\n")
    return writer.write(path)


def make_vcsa_iso(path) -> Path:
    """Write an ISO laid out like a vCenter Server Appliance installer (vcsa/, vcsa-ui-installer/)."""
    writer = _IsoWriter(joliet_rr=True, volume_id="VMware VCSA")
    writer.add_bytes("vcsa/vmware-vcenter-server-appliance-8.0.2.00000-22385739_ovf10.ova", b"ova\n")
    writer.add_bytes("vcsa-ui-installer/lin64/installer", b"#!/bin/sh\n")
    writer.add_bytes("vcsa-cli-installer/templates/install/embedded_vcsa_on_esxi.json", b"{}\n")
    writer.add_bytes("dbschema/readme.txt", b"schema\n")
    writer.add_bytes("readme.txt", b"VMware vCenter Server Appliance 8.0.2 installer\n")
    return writer.write(path)


def make_bootcfg_only_iso(path, version: str = "8.0U2", build: int = 22380479) -> Path:
    """Write an ISO holding a real-looking BOOT.CFG and nothing it names."""
    writer = _IsoWriter(joliet_rr=False)
    writer.add_bytes("boot.cfg", boot_cfg_text(version, build).encode())
    return writer.write(path)


def truncate_copy(source, destination, size: int | None = None) -> Path:
    """Copy the first `size` bytes of source (default: half of it) to destination, like a cut download."""
    source, destination = Path(source), Path(destination)
    remaining = source.stat().st_size // 2 if size is None else size
    with open(source, "rb") as reader, open(destination, "wb") as writer:
        while remaining > 0:
            chunk = reader.read(min(remaining, 1 << 20))
            if not chunk:
                break
            writer.write(chunk)
            remaining -= len(chunk)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.isogen", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("esxi", "ubuntu", "vcsa", "bootcfg-only"), default="esxi")
    parser.add_argument("--version", default="8.0U2", help="e.g. 8.0U2, 7.0U3d, 6.7, 9.0, 9.0.0.0100")
    parser.add_argument("--build", type=int, default=22380479)
    parser.add_argument("--vendor", help="Dell, HPE, ... (default: a stock VMware ISO)")
    parser.add_argument("--joliet", action="store_true", help="add Joliet and Rock Ridge, lower-case names")
    parser.add_argument("--payload-size", type=int, default=0, help="extra bytes in IMGPAYLD.TGZ")
    parser.add_argument("--salt", default="", help="text that makes this ISO's sha256 unique")
    parser.add_argument("output", help="the ISO file to write")
    arguments = parser.parse_args(argv)
    if arguments.kind == "ubuntu":
        make_ubuntu_iso(arguments.output)
    elif arguments.kind == "vcsa":
        make_vcsa_iso(arguments.output)
    elif arguments.kind == "bootcfg-only":
        make_bootcfg_only_iso(arguments.output, arguments.version, arguments.build)
    else:
        make_esxi_iso(arguments.output, arguments.version, arguments.build, arguments.vendor,
                      arguments.joliet, arguments.payload_size, arguments.salt.encode())
    print(arguments.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
