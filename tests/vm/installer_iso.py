"""Build a fake VMware ESXi installer ISO that really boots under qemu, from Debian packages.

The ISO boots isolinux to a prompt that waits for a typed command (as ESXi's does for Packer's
boot_command), then a Debian cloud kernel and a busybox initramfs whose /init (tests/vm/init) reads
`ks=` from the kernel command line, writes an MBR with a FAT partition 1 to /dev/vda, prints its
steps on ttyS0 and powers off. Beside the boot files sit tiny dummies laid out like an ESXi ISO
(BOOT.CFG with kernel=/modules=/build=, VMWARE-ESX-BASE-OSL.TXT), so esxi_watcher.iso accepts it.

Parts come from `apt-get download` + `dpkg -x`; the ISO is cached under CACHE_ROOT keyed by the
package versions, the variant, the build number and this folder's files: a cached call only copies.
Needs: apt (with package lists), dpkg, cpio, xorriso, mtools.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_ROOT = Path(os.environ.get("ESXI_WATCHER_TEST_CACHE", "/var/cache/esxi-watcher-tests")) / "vm"
VARIANTS = ("ok", "hang", "error")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
OTHER_PACKAGES = ("busybox-static", "isolinux", "syslinux-common")
# insmod order matters (tests/vm/init loads them in this order).
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                  "virtio_pci", "virtio_blk")
# The installed disk: an MBR, partition 1 (FAT16, label ESXIBOOT) from 1 MiB, PARTITION_MIB long.
PARTITION_START_SECTOR = 2048
PARTITION_OFFSET = PARTITION_START_SECTOR * 512
PARTITION_MIB = 16
INSTALLED_FILE = "INSTALL.TXT"  # written into partition 1 by the fake installer
KICKSTART_PATH = "cdrom:/KS.CFG"
BOOT_COMMAND_LABEL = "install"


def build_installer_iso(out: Path, variant: str = "ok", build: int = 22380479,
                        version: str = "8.0.2") -> Path:
    """Given a destination, return it holding a bootable fake ESXi installer ISO.

    variant: "ok" installs and powers off; "hang" starts writing the disk and never halts;
    "error" prints ESXi's "An error has occurred ..." text and never halts.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    packages = resolve_packages()
    key = _cache_key(packages, variant, build, version)
    cached = CACHE_ROOT / f"installer-{variant}-{build}-{key}.iso"
    if not cached.exists():
        parts = _unpacked_parts(packages)
        _make_iso(cached, parts, variant, build, version)
        _remove_other_versions(f"installer-{variant}-{build}-*.iso", keep=cached)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    return out


@functools.lru_cache(maxsize=None)
def resolve_packages() -> tuple[tuple[str, str], ...]:
    """Return ((package, candidate version), ...) for the kernel meta-package and the boot parts.

    One apt-cache call (it takes most of a second); the meta-package's version stands for the kernel.
    """
    names = (KERNEL_META_PACKAGE, *OTHER_PACKAGES)
    versions: dict[str, str] = {}
    package = None
    for line in _run(["apt-cache", "policy", *names]).splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            package = line.rstrip()[:-1]
        elif line.strip().startswith("Candidate:") and package:
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                versions[package] = version
    missing = [name for name in names if name not in versions]
    if missing:
        raise RuntimeError(f"apt has no candidate for {', '.join(missing)}: is `apt-get update` done?")
    return tuple((name, versions[name]) for name in names)


def _download_names(packages: tuple[tuple[str, str], ...]) -> list[str]:
    """Return apt-get download arguments: the pinned packages plus the kernel the meta-package names."""
    output = _run(["apt-cache", "depends", f"{KERNEL_META_PACKAGE}={dict(packages)[KERNEL_META_PACKAGE]}"])
    kernels = [line.split(":", 1)[1].strip() for line in output.splitlines()
               if line.strip().startswith("Depends:") and "linux-image-" in line]
    if not kernels:
        raise RuntimeError(f"apt-cache depends {KERNEL_META_PACKAGE} names no kernel")
    return [*(f"{name}={version}" for name, version in packages), kernels[0]]


def _cache_key(packages: tuple[tuple[str, str], ...], variant: str, build: int, version: str) -> str:
    digest = hashlib.sha256()
    for name, package_version in packages:
        digest.update(f"{name}={package_version}\n".encode())
    digest.update(f"{variant} {build} {version}\n".encode())
    for path in sorted(HERE.iterdir()):
        if path.is_file() and path.suffix != ".pyc":
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _unpacked_parts(packages: tuple[tuple[str, str], ...]) -> Path:
    """Return a folder holding the packages unpacked with dpkg -x (downloaded once per version set)."""
    digest = hashlib.sha256("".join(f"{n}={v}\n" for n, v in packages).encode())
    parts = CACHE_ROOT / f"parts-{digest.hexdigest()[:16]}"
    if parts.is_dir():
        return parts
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT, prefix="download-") as scratch:
        scratch_path = Path(scratch)
        debs = scratch_path / "debs"
        debs.mkdir()
        os.chmod(scratch_path, 0o755)
        os.chmod(debs, 0o777)  # apt-get download drops privileges to _apt where it can
        _run(["apt-get", "download", "-q", *_download_names(packages)], cwd=debs)
        tree = scratch_path / "tree"
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(tree)])
        try:
            tree.rename(parts)
        except OSError:
            if not parts.is_dir():  # else another test run unpacked the same versions meanwhile
                raise
    _remove_other_versions("parts-*", keep=parts)
    return parts


def _remove_other_versions(pattern: str, keep: Path) -> None:
    """Remove cache entries matching pattern other than keep (older package versions or scripts)."""
    for path in CACHE_ROOT.glob(pattern):
        if path == keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _make_iso(destination: Path, parts: Path, variant: str, build: int, version: str) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT, prefix="iso-") as scratch:
        scratch_path = Path(scratch)
        root = scratch_path / "root"
        root.mkdir()
        kernel = next((parts / "boot").glob("vmlinuz-*"))
        shutil.copyfile(kernel, root / "vmlinuz")
        _write_initramfs(root / "initrd.gz", parts, scratch_path / "initramfs", variant, build)
        shutil.copyfile(parts / "usr/lib/ISOLINUX/isolinux.bin", root / "isolinux.bin")
        shutil.copyfile(parts / "usr/lib/syslinux/modules/bios/ldlinux.c32", root / "ldlinux.c32")
        shutil.copyfile(HERE / "isolinux.cfg", root / "isolinux.cfg")
        _write_esxi_lookalike_files(root, build, version)
        # isolinux looks its files up by exact (lower-case) name: -relaxed-filenames keeps them so;
        # the ESXi look-alike files are upper case, as on a stock ESXi ISO.
        partial = scratch_path / destination.name
        _run(["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "3", "-relaxed-filenames",
              "-V", f"ESXI-{version}-{build}", "-o", str(partial),
              "-b", "isolinux.bin", "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4",
              "-boot-info-table", str(root)])
        os.replace(partial, destination)


def _write_initramfs(destination: Path, parts: Path, tree: Path, variant: str, build: int) -> None:
    for folder in ("bin", "etc", "lib/modules", "payload", "proc", "sys", "dev", "tmp"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parts / "bin/busybox", tree / "bin/busybox")
    os.chmod(tree / "bin/busybox", 0o755)
    shutil.copyfile(HERE / "init", tree / "init")
    os.chmod(tree / "init", 0o755)
    (tree / "etc/installer-variant").write_text(variant + "\n")
    modules = next((parts / "lib/modules").iterdir())
    for name in VIRTIO_MODULES:
        found = next(modules.rglob(f"{name}.ko"))
        shutil.copyfile(found, tree / "lib/modules" / found.name)
    (tree / "payload/mbr.bin").write_bytes(master_boot_record(PARTITION_START_SECTOR, PARTITION_MIB * 2048))
    _write_fat_partition(tree / "payload/part1.img", tree / "payload",
                         f"installed by the esxi-watcher test installer, build {build}\n")
    names = sorted(str(path.relative_to(tree)) for path in tree.rglob("*"))
    archive = _run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                   input_bytes=("\n".join(names) + "\n").encode(), binary=True)
    destination.write_bytes(gzip.compress(archive, compresslevel=6))


def master_boot_record(start_sector: int, sector_count: int) -> bytes:
    """Return a 512-byte MBR whose only partition (type 0x0E, FAT16 LBA) spans the given sectors."""
    record = bytearray(512)
    struct.pack_into("<I", record, 440, 0x45535849)  # disk signature "IXSE"
    struct.pack_into("<B3sB3sII", record, 446, 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff",
                     start_sector, sector_count)
    record[510:512] = b"\x55\xaa"
    return bytes(record)


def _write_fat_partition(image: Path, scratch: Path, installed_text: str) -> None:
    with open(image, "wb") as handle:
        handle.truncate(PARTITION_MIB << 20)
    _run(["mformat", "-i", str(image), "-T", str(PARTITION_MIB * 2048), "-h", "64", "-s", "32",
          "-v", "ESXIBOOT", "::"])
    text = scratch / INSTALLED_FILE
    text.write_text(installed_text)
    _run(["mcopy", "-i", str(image), str(text), f"::/{INSTALLED_FILE}"])
    text.unlink()


def _write_esxi_lookalike_files(root: Path, build: int, version: str) -> None:
    """Write tiny dummies where a real ESXi ISO keeps its boot config, modules and license text."""
    major, minor, patch = version.split(".")
    release = f"{major}.{minor}" + (f"U{patch}" if patch != "0" else "")
    modules = ("jumpstrt.gz", "useropts.gz", "s.v00", "imgdb.tgz", "imgpayld.tgz")
    for name in ("b.b00", *modules):
        (root / name.upper()).write_bytes(b"dummy ESXi module for esxi-watcher tests\n")
    boot_cfg = (
        "bootstate=0\n"
        "title=Loading ESXi installer\n"
        "timeout=5\n"
        "prefix=\n"
        "kernel=/b.b00\n"
        "kernelopt=runweasel cdromBoot\n"
        "modules=" + " --- ".join(f"/{name}" for name in modules) + "\n"
        f"build={version}-0.0.{build}\n"
        "updated=0\n"
    )
    (root / "BOOT.CFG").write_text(boot_cfg)
    (root / "EFI/BOOT").mkdir(parents=True)
    (root / "EFI/BOOT/BOOT.CFG").write_text(boot_cfg)
    (root / "VMWARE-ESX-BASE-OSL.TXT").write_bytes(
        f"Open Source Licenses\r\n\r\nESXi {release} GA\r\n\r\n(a stand-in for the tests)\r\n".encode())
    (root / "KS.CFG").write_text(
        "vmaccepteula\nrootpw password123!\ninstall --firstdisk --overwritevmfs\nreboot\n")


def _run(argv: list[str], cwd: Path | None = None, input_bytes: bytes | None = None,
         binary: bool = False):
    result = subprocess.run(argv, cwd=cwd, input=input_bytes, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): "
                           f"{result.stderr.decode(errors='replace').strip()[-2000:]}")
    return result.stdout if binary else result.stdout.decode()
