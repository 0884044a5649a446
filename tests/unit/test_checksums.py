"""Checksum files beside an ISO: what their contents say and which ISO each belongs to."""

from __future__ import annotations

import pytest

from esxi_watcher.checksums import belongs_to, digest_for

SHA256 = "ab" * 32


@pytest.mark.parametrize("text, expected", [
    (f"{SHA256}\n", SHA256),
    (f"{SHA256.upper()}  VMware-ESXi.iso\r\n", SHA256),
    (f"{SHA256} *VMware-ESXi.iso\n", SHA256),
    (f"{'cd' * 32}  other.iso\n{SHA256}  VMware-ESXi.iso\n", SHA256),
    (f"{'cd' * 32}  other.iso\n{'ef' * 32}  third.iso\n", None),
    (f"SHA256 (VMware-ESXi.iso) = {SHA256}\n", SHA256),
    (f"{SHA256}  renamed-since.iso\n", SHA256),  # one line: the file's own name pairs it
    ("d41d8cd98f00b204e9800998ecf8427e\n", None),  # an md5 in a .sha256 file
    ("", None),
])
def test_checksum_file_contents(text, expected):
    assert digest_for(text, "sha256", "VMware-ESXi.iso") == expected


@pytest.mark.parametrize("checksum, iso, pairs", [
    ("X.iso.sha256", "X.iso", True), ("X.sha256", "X.iso", True), ("X.ISO.SHA256", "x.iso", True),
    ("X.MD5", "X.iso", True), ("X.iso.sha1", "X.iso", True), ("Y.iso.sha256", "X.iso", False),
    ("X.iso.txt", "X.iso", False),
])
def test_which_checksum_file_belongs_to_which_iso(checksum, iso, pairs):
    assert belongs_to(checksum, iso) is pairs
