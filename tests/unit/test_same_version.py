"""Same version, other bytes: the tag that gives a re-mastered ISO a MAAS name of its own."""

from __future__ import annotations

from esxi_watcher.naming import content_tag, distinct_name, distinct_title

NAME = "esxi/8.0.2-22380479"
SHA = "3FA1C29E" + "0" * 56


def test_the_tag_is_the_first_8_hex_digits_of_the_sha256():
    assert content_tag(SHA) == "3fa1c29e"
    assert distinct_name(NAME, SHA) == "esxi/8.0.2-22380479-3fa1c29e"
    assert distinct_title("VMware ESXi 8.0U2 22380479", SHA) == "VMware ESXi 8.0U2 22380479 [3fa1c29e]"
