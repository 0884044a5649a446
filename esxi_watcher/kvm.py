"""Can KVM run a guest here? Asked before a build whose template wants `accelerator = "kvm"`.

Opening /dev/kvm proves little: on a PVM host (/dev/kvm served by kvm_pvm) qemu starts with
`-accel kvm` and an ordinary guest never runs a single instruction; the build would hang until its
timeout. So the check boots a 512-byte guest (a boot sector that writes a marker to the serial port,
then exits through qemu's isa-debug-exit device) and believes only the marker. The verdict is cached
in a small JSON file, per boot, kernel release and presence of /dev/kvm, for CACHE_TTL seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import structlog

from esxi_watcher.process import run_quick

log = structlog.get_logger(__name__)

QEMU = "qemu-system-x86_64"
MARKER = b"ESXI-WATCHER-KVM-OK"
CACHE_FILE = "kvm-check.json"
CACHE_TTL = 24 * 3600.0
DEFAULT_TIMEOUT = 10.0
# kvm_pvm first: on a PVM host it is the one serving /dev/kvm even when kvm_intel is present too.
VENDOR_MODULES = ("kvm_pvm", "kvm_intel", "kvm_amd")


@dataclass(frozen=True)
class KvmVerdict:
    ok: bool
    reason: str


def kvm_can_run_guests(cache_dir: Path | str | None = None, timeout: float = DEFAULT_TIMEOUT, *,
                       ttl: float = CACHE_TTL, sys_root: Path = Path("/")) -> KvmVerdict:
    """Return whether a guest runs under `-accel kvm` here, and if not, a reason for the operator.

    With cache_dir, a verdict found there for this boot, kernel and /dev/kvm is reused until ttl.
    """
    key = host_key(sys_root)
    cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    cached = _read_cache(cache_path, key, ttl) if cache_path else None
    if cached is not None:
        return cached
    verdict = _check(timeout, sys_root)
    log.info("kvm.checked", ok=verdict.ok, reason=verdict.reason)
    if cache_path is not None:
        _write_cache(cache_path, key, verdict)
    return verdict


def _check(timeout: float, sys_root: Path) -> KvmVerdict:
    device = sys_root / "dev/kvm"
    if not device.exists():
        return KvmVerdict(False, "KVM is not available on this host: /dev/kvm does not exist (is "
                                 "virtualization enabled in the firmware and kvm_intel or kvm_amd loaded?)")
    if shutil.which(QEMU) is None:
        return KvmVerdict(False, f"cannot check KVM: {QEMU} is not installed (Debian: qemu-system-x86)")
    owner = kvm_module(sys_root)
    suffix = f" (/dev/kvm belongs to {owner})" if owner else ""
    ran, detail = run_probe_guest("kvm", timeout)
    if ran:
        return KvmVerdict(True, f"KVM runs guests{suffix}")
    return KvmVerdict(False, f"KVM cannot run guests on this host: a test guest under -accel kvm "
                             f"{detail}{suffix}")


def run_probe_guest(accelerator: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """Given an accelerator (kvm, tcg), boot the probe guest; return (marker seen, what happened)."""
    with tempfile.TemporaryDirectory(prefix="esxi-watcher-kvm-") as scratch:
        disk = Path(scratch) / "probe.img"
        disk.write_bytes(probe_boot_sector())
        result = run_quick(probe_command(accelerator, disk), timeout=timeout)
    if MARKER.decode() in result.stdout:
        return True, "printed its marker"
    if result.returncode == -9 or "(killed after" in result.stderr:
        return False, f"printed nothing in {timeout:g} s"
    error = _last_line(result.stderr) or f"exit status {result.returncode}"
    return False, f"did not start: {error}"


def probe_command(accelerator: str, disk: Path) -> list[str]:
    """Given an accelerator and the probe disk, return the qemu argv (serial on stdout, no display)."""
    return [QEMU, "-accel", accelerator, "-machine", "pc", "-m", "16", "-nodefaults",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={disk},format=raw,if=ide"]


def probe_boot_sector() -> bytes:
    """Return a BIOS boot sector that does what every OS loader does early (enter 32-bit protected
    mode, return through an iret), then prints MARKER on COM1 and exits qemu via isa-debug-exit.

    A guest staying in real mode is not enough: on a PVM host it runs, while isolinux, Linux or
    ESXi's loader stop at their first protected-mode iret ("KVM internal error ... emulation
    failure"). Hand-assembled, loaded by the BIOS at 0000:7C00:
        bits 16: cli; cld; xor ax,ax; mov ds,ax; mov ss,ax; mov sp,0x7c00; lgdt [gdt_pointer]
                 mov eax,cr0; or al,1; mov cr0,eax; jmp dword 0x08:protected
        bits 32: protected: mov ax,0x10; mov ds,ax; mov es,ax; mov ss,ax; mov esp,0x7c00
                 pushfd; push 0x08; push after_iret; iretd
                 after_iret: mov esi,message; mov dx,0x3f8
                 next: lodsb; test al,al; jz done; out dx,al; jmp next
                 done: mov dx,0xf4; mov al,1; out dx,al; halt: hlt; jmp halt
        gdt: null, flat 32-bit code (0x08), flat data (0x10); gdt_pointer: dw 23, dd gdt
    """
    base = 0x7C00
    protected, after_iret, gdt, gdt_pointer, message = 32, 56, 88, 112, 118
    code = (b"\xfa\xfc\x31\xc0\x8e\xd8\x8e\xd0\xbc\x00\x7c"
            + b"\x0f\x01\x16" + struct.pack("<H", base + gdt_pointer)
            + b"\x0f\x20\xc0\x0c\x01\x0f\x22\xc0"
            + b"\x66\xea" + struct.pack("<IH", base + protected, 0x08))
    assert len(code) == protected
    code += (b"\x66\xb8\x10\x00\x8e\xd8\x8e\xc0\x8e\xd0"
             + b"\xbc" + struct.pack("<I", base)
             + b"\x9c\x6a\x08" + b"\x68" + struct.pack("<I", base + after_iret) + b"\xcf")
    assert len(code) == after_iret
    code += (b"\xbe" + struct.pack("<I", base + message) + b"\x66\xba\xf8\x03"
             + b"\xac\x84\xc0\x74\x03\xee\xeb\xf8"
             + b"\x66\xba\xf4\x00\xb0\x01\xee\xf4\xeb\xfd")
    code = code.ljust(gdt, b"\0")
    code += struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
    code += struct.pack("<HI", 23, base + gdt)
    assert len(code) == message
    sector = bytearray(512)
    payload = code + MARKER + b"\r\n\0"
    sector[:len(payload)] = payload
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def kvm_module(sys_root: Path = Path("/")) -> str | None:
    """Return the vendor KVM module this kernel has (kvm_pvm, kvm_intel, kvm_amd), if any."""
    for name in VENDOR_MODULES:
        if (sys_root / "sys/module" / name).is_dir():
            return name
    return None


def host_key(sys_root: Path = Path("/")) -> dict:
    """Return what a cached verdict is valid for: this boot, this kernel, /dev/kvm present or not."""
    return {"boot_id": _read_text(sys_root / "proc/sys/kernel/random/boot_id"),
            "kernel": os.uname().release,
            "dev_kvm": (sys_root / "dev/kvm").exists()}


def _read_cache(path: Path, key: dict, ttl: float) -> KvmVerdict | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["key"] != key or not 0 <= time.time() - float(entry["checked_at"]) < ttl:
            return None
        return KvmVerdict(ok=bool(entry["ok"]), reason=str(entry["reason"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: dict, verdict: KvmVerdict) -> None:
    entry = {"key": key, "checked_at": time.time(), **asdict(verdict)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(entry, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        log.warning("kvm.cache_not_written", path=str(path), error=str(error))


def template_wants_kvm(template_dir: Path | str, command: Sequence[str] | None = None) -> bool:
    """Given the template folder and the configured build command, return whether it runs qemu
    with KVM: `-var accelerator=...` on the command decides; otherwise the templates' qemu sources
    (an accelerator literal, a variable's default, or none: Packer's qemu default is kvm).
    """
    from_command = _accelerator_from_command(command or ())
    if from_command is not None:
        return from_command == "kvm"
    for path in sorted(Path(template_dir).glob("*.pkr.hcl")) + sorted(Path(template_dir).glob("*.json")):
        text = _read_text(path)
        accelerator = (_hcl_accelerator(text) if path.name.endswith(".pkr.hcl")
                       else _json_accelerator(text))
        if accelerator == "kvm":
            return True
    return False


def _accelerator_from_command(command: Sequence[str]) -> str | None:
    words = list(command)
    for index, word in enumerate(words):
        value = None
        if word in ("-var", "--var") and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith(("-var=", "--var=")):
            value = word.split("=", 1)[1]
        if value and value.startswith("accelerator="):
            return value.split("=", 1)[1].strip().lower()
    return None


_HCL_QEMU_SOURCE = re.compile(r'source\s+"qemu"\s+"[^"]*"\s*\{')
_HCL_ACCELERATOR = re.compile(r'^\s*accelerator\s*=\s*(?:"([^"]*)"|var\.(\w+))', re.MULTILINE)


def _hcl_accelerator(text: str) -> str | None:
    """Given a .pkr.hcl file, return the accelerator its qemu source uses (None: no qemu source)."""
    if not _HCL_QEMU_SOURCE.search(text):
        return None
    match = _HCL_ACCELERATOR.search(text)
    if match is None:
        return "kvm"
    if match.group(1) is not None:
        return match.group(1).lower()
    variable = re.search(r'variable\s+"' + re.escape(match.group(2)) + r'"\s*\{[^}]*?default\s*=\s*"([^"]*)"',
                         text, re.DOTALL)
    return variable.group(1).lower() if variable else "kvm"


def _json_accelerator(text: str) -> str | None:
    """Given a Packer JSON template, return the accelerator of its first qemu builder, if any."""
    try:
        template = json.loads(text)
        builders = [b for b in template.get("builders", []) if b.get("type") == "qemu"]
        variables = template.get("variables") or {}
    except (ValueError, AttributeError):
        return None
    if not builders:
        return None
    accelerator = str(builders[0].get("accelerator") or "kvm")
    reference = re.fullmatch(r"\{\{\s*user\s+`(\w+)`\s*\}\}", accelerator)
    if reference:
        accelerator = str(variables.get(reference.group(1)) or "kvm")
    return accelerator.lower()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
