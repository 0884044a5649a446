"""MAAS's own rules for uploaded boot resources, as the region applies them.

Read from canonical/maas: ``BootResourceForm`` (src/maasserver/forms/__init__.py),
``BootResource.get_next_version_name`` (src/maasserver/models/bootresource.py),
``compose_invalid_choice_text`` (src/maasserver/utils/forms.py) and the OS registry
(src/maascommon/osystem/__init__.py). Written afresh from that reading, not copied.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

# OperatingSystemRegistry, in registration order (the error message lists them so).
SUPPORTED_OSYSTEMS = (
    "ubuntu",
    "ubuntu-core",
    "bootloader",
    "centos",
    "rhel",
    "custom",
    "windows",
    "suse",
    "esxi",
    "ol",
    "onie",
)

# maasserver.models.bootresource.LINUX_OSYSTEMS: what a custom image may be based on.
LINUX_OSYSTEMS = ("ubuntu", "centos", "rhel", "ol")

# Releases MAAS accepts as a custom image's base (is_release_supported); a stand-in list.
SUPPORTED_BASE_RELEASES = {
    "ubuntu": ("focal", "jammy", "noble"),
    "centos": ("centos70", "centos8", "8", "7"),
    "rhel": ("8", "9"),
    "ol": ("8", "9"),
}

# The images a default region has synced from images.maas.io: BootSourceCache os/release
# pairs. Their names and both halves are reserved for uploads.
DEFAULT_SYNCED_NAMES = ("ubuntu/focal", "ubuntu/jammy", "ubuntu/noble", "centos/centos70")

# What list_all_usable_architectures() returns on a region with synced Ubuntu images.
DEFAULT_ARCHITECTURES = (
    "amd64/generic",
    "amd64/ga-22.04",
    "amd64/ga-24.04",
    "amd64/hwe-22.04",
    "amd64/hwe-24.04",
    "arm64/generic",
    "arm64/ga-24.04",
    "i386/generic",
    "ppc64el/generic",
    "s390x/generic",
)

# Commissioning OS/release: the base MAAS gives a custom image sent without base_image.
DEFAULT_COMMISSIONING_BASE = "ubuntu/noble"

# BOOT_RESOURCE_FILE_TYPE_CHOICES_UPLOAD -> BOOT_RESOURCE_FILE_TYPE value.
UPLOAD_FILETYPES = {
    "tgz": "root-tgz",
    "tbz": "root-tbz",
    "txz": "root-txz",
    "ddtgz": "root-dd",
    "ddtbz": "root-dd.tar.bz2",
    "ddtxz": "root-dd.tar.xz",
    "ddtar": "root-dd.tar",
    "ddbz2": "root-dd.bz2",
    "ddgz": "root-dd.gz",
    "ddxz": "root-dd.xz",
    "ddraw": "root-dd.raw",
}

# get_uploaded_filename() (3.5 and later): root tarballs get a real extension.
UPLOADED_FILENAMES = {"root-tgz": "root.tgz", "root-tbz": "root.tbz", "root-txz": "root.txz"}

NAME_MAX_LENGTH = 255


class FormErrors(Exception):
    """Django form errors: field -> list of messages (answered as 400 JSON)."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(errors)
        self.errors = errors


class NameSplitCrash(Exception):
    """clean_name unpacks name.split("/") into two: more than one '/' crashes (500)."""


def parse_boolean_field(value: str | None) -> bool:
    """Given a raw form value, return what Django's BooleanField (CheckboxInput) makes of it.

    Only "true"/"false" (any case) are words; any other non-empty string is True ("0" too).
    """
    if value is None:
        return False
    words = {"true": True, "false": False}
    return bool(words.get(value.lower(), value))


def reserved_names(synced_names: tuple[str, ...] | list[str]) -> set[str]:
    """Given the synced os/release names, return every name an upload may not use."""
    names = set(synced_names)
    for name in synced_names:
        names.update(name.split("/"))
    names.update(SUPPORTED_OSYSTEMS)
    return names


def clean_name(name: str, mode: str, synced_names) -> str:
    """Given a submitted name, return the stored name or raise ValueError(message).

    3.4 to 3.7 strip a leading "custom/"; 3.8 keeps it.
    """
    if "/" in name:
        parts = name.split("/")
        if len(parts) != 2:
            raise NameSplitCrash("too many values to unpack (expected 2)")
        osystem, release = parts
        if osystem == "custom" and mode in ("3.4", "3.5"):
            name = release
        elif osystem not in SUPPORTED_OSYSTEMS:
            raise ValueError(
                "Unsupport operating system %s, supported operating systems: %s"
                % (osystem, list(SUPPORTED_OSYSTEMS))
            )
    if name in reserved_names(synced_names) or re.search(r"^centos\d\d?$", name):
        raise ValueError("%s is a reserved name" % name)
    return name


def clean_base_image(submitted_name: str, base_image: str, existing_base_image: str) -> str:
    """Given the submitted name and base_image, return the base image MAAS stores.

    Only custom images (a bare name, or custom/...) carry a base image.
    """
    split_name = submitted_name.split("/")
    if len(split_name) > 1 and split_name[0] != "custom":
        return ""
    chosen = base_image or existing_base_image
    parts = chosen.split("/")
    if len(parts) != 2:
        if not base_image:
            return DEFAULT_COMMISSIONING_BASE
        raise ValueError("a base image must follow the format: <osystem>/<series>")
    base_osystem, base_release = parts[0].lower(), parts[1].lower()
    if base_osystem not in LINUX_OSYSTEMS:
        raise ValueError("custom images require a valid non-custom OS type base image")
    if base_release not in SUPPORTED_BASE_RELEASES.get(base_osystem, ()):
        raise ValueError("please select a valid base image OS and version")
    return "%s/%s" % (base_osystem, base_release)


def invalid_choice_text(what: str, value: str, choices) -> str:
    """Return MAAS's "invalid choice" message (compose_invalid_choice_text)."""
    return "'%s' is not a valid %s.  It should be one of: %s." % (
        value,
        what,
        ", ".join("'%s'" % choice for choice in choices),
    )


def next_version_name(existing_versions, now: datetime) -> str:
    """Given a resource's set versions and the UTC time, return the new set's version.

    YYYYMMDD for the first set of the day, YYYYMMDD.N (N = highest index + 1) after that.
    """
    today = now.strftime("%Y%m%d")
    todays = [version for version in existing_versions if version.startswith(today)]
    if not todays:
        return today
    highest = 0
    for version in todays:
        if "." in version:
            highest = max(highest, int(version.split(".")[1]))
    return "%s.%d" % (today, highest + 1)


def filename_on_disk(sha256: str, existing: dict[str, str]) -> str:
    """Given a sha256 and the existing {filename_on_disk: sha256}, return the name on disk.

    The same sha256 reuses its name; otherwise the shortest prefix (7 chars or more)
    that no existing name starts with (calculate_filename_on_disk).
    """
    for name, known_sha256 in existing.items():
        if known_sha256 == sha256:
            return name
    length = 7
    while length < 64 and any(name.startswith(sha256[:length]) for name in existing):
        length += 1
    return sha256[:length]


def validate_create_form(fields: dict[str, str], mode: str, synced_names, architectures):
    """Given the submitted fields of a create call, return the cleaned values.

    Raises FormErrors with Django's per-field messages (all fields checked at once).
    """
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, object] = {}

    def required(field):
        value = fields.get(field)
        if value is None or value == "":
            errors.setdefault(field, []).append("This field is required.")
            return None
        return value

    name = required("name")
    if name is not None:
        if len(name) > NAME_MAX_LENGTH:
            errors.setdefault("name", []).append(
                "Ensure this value has at most %d characters (it has %d)."
                % (NAME_MAX_LENGTH, len(name))
            )
        else:
            try:
                cleaned["name"] = clean_name(name, mode, synced_names)
            except ValueError as error:
                errors.setdefault("name", []).append(str(error))

    architecture = required("architecture")
    if architecture is not None:
        if architecture not in architectures:
            errors.setdefault("architecture", []).append(
                invalid_choice_text("architecture", architecture, architectures)
            )
        else:
            cleaned["architecture"] = architecture

    filetype = fields.get("filetype") or "tgz"
    if filetype not in UPLOAD_FILETYPES:
        errors.setdefault("filetype", []).append(
            "Select a valid choice. %s is not one of the available choices." % filetype
        )
    else:
        cleaned["filetype"] = filetype

    sha256 = required("sha256")
    if sha256 is not None:
        if len(sha256) > 64:
            errors.setdefault("sha256", []).append(
                "Ensure this value has at most 64 characters (it has %d)." % len(sha256)
            )
        elif len(sha256) < 64:
            errors.setdefault("sha256", []).append(
                "Ensure this value has at least 64 characters (it has %d)." % len(sha256)
            )
        else:
            cleaned["sha256"] = sha256

    size = required("size")
    if size is not None:
        try:
            cleaned["size"] = int(size.strip())
        except ValueError:
            errors.setdefault("size", []).append("Enter a whole number.")

    cleaned["title"] = fields.get("title") or ""
    cleaned["keep_old"] = parse_boolean_field(fields.get("keep_old"))
    cleaned["base_image_submitted"] = fields.get("base_image") or ""
    if errors:
        raise FormErrors(errors)
    return cleaned


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
