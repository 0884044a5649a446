"""Every name the file system takes: outcome names fit NAME_MAX (with their .reason.txt), and a move
that cannot happen says so in its reason."""

from __future__ import annotations

import os
from pathlib import Path

from esxi_watcher.outcomes import NAME_MAX, REASON_SUFFIX, fitted_name, move_to_outcome

LONG_ASCII = "VMware-VMvisor-Installer-8.0U2-22380479-" + "x" * 209 + ".iso"  # 253 bytes
LONG_UTF8 = "ESXi-8.0U2-" + "ü" * 119 + ".iso"  # 253 bytes, 134 characters


def _bytes(name: str) -> int:
    return len(os.fsencode(name))


def test_the_names_are_what_the_examples_say():
    assert _bytes(LONG_ASCII) == 253 and _bytes(LONG_UTF8) == 253


def test_a_long_stem_is_shortened_on_a_character_boundary_and_keeps_its_extension():
    name = fitted_name("ü" * 200, ".job12", ".iso")
    assert name.endswith("ü.job12.iso")
    assert _bytes(name) + len(REASON_SUFFIX) <= NAME_MAX
    assert _bytes(name) + len(REASON_SUFFIX) >= NAME_MAX - 1  # a 2-byte character did not fit whole
    assert fitted_name("short", "", ".iso") == "short.iso"


def test_a_move_with_a_long_name_says_so_in_its_reason(tmp_path):
    drop_dir = tmp_path / "drop"
    drop_dir.mkdir()
    dropped = drop_dir / LONG_UTF8
    dropped.write_bytes(b"iso")
    moved = move_to_outcome(drop_dir, dropped, "rejected", 7, "not an ESXi installer ISO: test")
    assert moved.parent == drop_dir / "rejected" and moved.name.endswith(".iso")
    assert _bytes(moved.name) + len(REASON_SUFFIX) <= NAME_MAX
    note = Path(f"{moved}{REASON_SUFFIX}").read_text(encoding="utf-8").splitlines()
    assert note[0] == "not an ESXi installer ISO: test"
    assert note[1].startswith(f"renamed to {moved.name}: the name was too long")
    assert note[1].endswith(f"It was dropped as {LONG_UTF8}")
    assert moved.read_bytes() == b"iso"
