"""MAAS names and titles for an ESXi image, rendered from the operator's templates."""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esxi_watcher.iso import IsoFacts

FIELDS = ("major", "minor", "patch", "version", "update", "build", "vendor", "vendor_suffix",
          "vendor_title")
_SAMPLE = {"major": 8, "minor": 0, "patch": 2, "version": "8.0.2", "update": "U2", "build": 22380479,
           "vendor": "Dell", "vendor_suffix": "-dell", "vendor_title": " (Dell)"}
_NAME_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")


def template_fields(facts: IsoFacts) -> dict[str, object]:
    """Given an ESXi ISO's facts, return the values its name and title templates may use.

    {update} is what VMware writes after major.minor: "U2", "U3d", "" (GA up to 8.x) and, from
    ESXi 9 on, the rest of the four-part release (".0.0100" for 9.0.0.0100), so that a title
    "{major}.{minor}{update}" reads as VMware names every release.
    """
    vendor = facts.vendor or ""
    return {
        "major": facts.major, "minor": facts.minor, "patch": facts.patch, "version": facts.version,
        "update": facts.release.removeprefix(f"{facts.major}.{facts.minor}"), "build": facts.build,
        "vendor": vendor,
        "vendor_suffix": "-" + re.sub(r"[^a-z0-9]+", "-", vendor.lower()).strip("-") if vendor else "",
        "vendor_title": f" ({vendor})" if vendor else "",
    }


def _render(template: str, fields: dict[str, object]) -> str:
    unknown = [name for _, name, _, _ in string.Formatter().parse(template) if name and name not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field {{{unknown[0]}}}; known: {', '.join(FIELDS)}")
    return template.format(**fields)


def _check_name(name: str) -> str:
    if not name.startswith("esxi/") or name.count("/") != 1 or name == "esxi/":
        raise ValueError(f"{name!r}: ESXi images must be named esxi/<release> (exactly one '/')")
    if len(name) > 255:
        raise ValueError(f"{name!r}: longer than 255 characters")
    if not _NAME_CHARS.fullmatch(name):
        raise ValueError(f"{name!r}: only letters, digits and . _ + - are allowed")
    return name


def check_name_template(template: str) -> str:
    """Return the template if it renders a valid ESXi name, else raise ValueError saying why."""
    try:
        _check_name(_render(template, _SAMPLE))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(str(error).strip("'\"")) from None
    return template


def check_title_template(template: str) -> str:
    try:
        _render(template, _SAMPLE)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(str(error).strip("'\"")) from None
    return template


def resource_name(template: str, facts: IsoFacts) -> str:
    return _check_name(_render(template, template_fields(facts)))


def resource_title(template: str, facts: IsoFacts) -> str:
    return _render(template, template_fields(facts))


def content_tag(sha256: str) -> str:
    """Given an ISO's sha256, return the tag that tells its image apart: its first 8 hex digits."""
    return sha256[:8].lower()


def distinct_name(name: str, sha256: str) -> str:
    """Given a MAAS name another ISO's image already holds, return this ISO's own: name-<tag>."""
    return _check_name(f"{name}-{content_tag(sha256)}")


def distinct_title(title: str, sha256: str) -> str:
    return f"{title} [{content_tag(sha256)}]"
