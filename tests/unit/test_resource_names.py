"""MAAS names and titles as the README promises them, from generated ISOs read by the real inspector."""

from __future__ import annotations

import pytest

from esxi_watcher.config import OPTIONS
from esxi_watcher.iso import inspect_iso
from esxi_watcher.naming import check_name_template, resource_name, resource_title
from tests.isogen import make_esxi_iso

DEFAULTS = {option.key: option.default for option in OPTIONS}
NAME, TITLE = DEFAULTS["maas.name_template"], DEFAULTS["maas.title_template"]


def test_stock_iso_gets_the_readme_name_and_title(tmp_path):
    facts = inspect_iso(make_esxi_iso(tmp_path / "stock.iso", version="8.0U2", build=22380479))
    assert resource_name(NAME, facts) == "esxi/8.0.2-22380479"
    assert resource_title(TITLE, facts) == "VMware ESXi 8.0U2 22380479"


def test_dell_iso_of_a_build_does_not_collide_with_the_stock_one(tmp_path):
    facts = inspect_iso(make_esxi_iso(tmp_path / "dell.iso", version="8.0U3b", build=24280767, vendor="Dell"))
    assert resource_name(NAME, facts) == "esxi/8.0.3-24280767-dell"
    assert resource_title(TITLE, facts) == "VMware ESXi 8.0U3b 24280767 (Dell)"
    stock = inspect_iso(make_esxi_iso(tmp_path / "stock.iso", version="8.0U3b", build=24280767))
    assert resource_name(NAME, stock) == "esxi/8.0.3-24280767"


@pytest.mark.parametrize("template, why", [
    ("vmware-esxi-{version}", "esxi/<release>"),
    ("esxi/{version}/{build}", "exactly one '/'"),
    ("esxi/{version} {build}", "only letters"),
    ("esxi/{release}", "unknown field {release}"),
])
def test_bad_name_templates_say_why(template, why):
    with pytest.raises(ValueError, match=f".*{why.replace('{', '.').replace('}', '.')}"):
        check_name_template(template)
