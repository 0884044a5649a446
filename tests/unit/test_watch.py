"""The drop-dir watcher's decisions without inotify: temporary names, and a file still open for
writing."""

from __future__ import annotations

import pytest

from esxi_watcher.watch import is_temporary_name, open_for_writing


@pytest.mark.parametrize("name, temporary", [
    ("VMware-ESXi.iso", False), (".VMware-ESXi.iso.Xa81k2", True), ("x.iso.part", True),
    ("x.iso.crdownload", True), ("x.iso.tmp", True), ("x.iso", False), ("x.ISO~", True),
])
def test_temporary_names(name, temporary):
    assert is_temporary_name(name) is temporary


def test_writer_check_sees_open_file(tmp_path):
    path = tmp_path / "open.iso"
    with open(path, "wb") as handle:
        handle.write(b"abc")
        assert open_for_writing(path)
    assert not open_for_writing(path)
