"""The disk size a template asks for, read from its HCL or JSON."""

from __future__ import annotations

import pytest

from esxi_watcher.build import space_needed, template_disk_size


@pytest.mark.parametrize("text, size", [
    ('source "qemu" "esxi" {\n  disk_size        = "32G"\n  format = "raw"\n}\n', 32 << 30),
    ('{"builders": [{"type": "qemu", "disk_size": 20480}]}', 20480 << 20),
    ('{"variables": {"disk_size": "10240M"}}', 10240 << 20),
    ('source "qemu" "esxi" {\n  disk_size = var.disk_size\n}\n', 0),
])
def test_the_template_disk_size_is_read_from_the_template(tmp_path, text, size):
    template = tmp_path / "vmware-esxi"
    template.mkdir()
    (template / ("vmware-esxi.json" if text.startswith("{") else "vmware-esxi.pkr.hcl")).write_text(text)
    assert template_disk_size(template) == size
    assert space_needed(template, 3 << 30) == size + (3 << 30)
