"""The build's kickstart settings: build.kickstart and build.root_password_file in a job's work copy.

packer-maas's images carry its default root password (`password123!`) in three places of every
template generation: the kickstart's `rootpw` line (`KS.CFG` since 2021, `http/vmware-esxi-ks.cfg`
before), the same kickstart's `--esxi-password='...'` argument of the first-boot vCenter
registration, and the `--esxi-password` default of that registration script (`maas/vcenter` since
2021, `vcenter` in the template folder before). The configured password goes into all three.

A crypt hash (`rootpw --iscrypted`) cannot log in to vCenter as root: with a hash, the two vCenter
places are emptied (with a warning) rather than left with the well-known default, and the build goes
on, because most MAAS sites never configure vCenter registration; a site that does gives a plain
password.

ESXi's installer stops (and the build then hangs until its timeout) when the root password breaks
ESXi's password rules, so a plain password is checked first. The rules, from VMware's "ESXi
Passwords" (vSphere Security, 7.0 and 8.0) and pam_passwdqc(8), with ESXi's default
Security.PasswordQualityControl `retry=3 min=disabled,disabled,disabled,7,7`:
- at least 7 characters and fewer than 40;
- characters from at least 3 of the 4 classes (lowercase, uppercase, digits, others); an uppercase
  first character and a digit last character do not count toward the classes;
- not the user name (root). Dictionary words, which ESXi also refuses, are not checked here.
And what the kickstart line and the first-boot shell line (`--esxi-password='...'`) can carry:
printable ASCII without whitespace, quotes, backslash or `#` (a comment in a kickstart line).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from esxi_watcher.errors import BadKickstartSettings
from esxi_watcher.logs import add_secret
from esxi_watcher.private_file import read_private_file

if TYPE_CHECKING:
    from esxi_watcher.config import BuildConfig

log = structlog.get_logger(__name__)

KICKSTART_FILES = ("KS.CFG", "http/vmware-esxi-ks.cfg")  # newest generation first
VCENTER_SCRIPTS = ("maas/vcenter", "vcenter")
TEMPLATE_DEFAULT_PASSWORD = "password123!"
MIN_LENGTH = 7
MAX_LENGTH = 39  # "fewer than 40"
MIN_CLASSES = 3
FORBIDDEN = "'\"`\\#"
# crypt(3) schemes ESXi's /etc/shadow uses or accepts: MD5 ($1$), SHA-256 ($5$), SHA-512 ($6$).
_CRYPT_HASH = re.compile(r"\$(1|5|6)\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}")
_ANY_CRYPT_HASH = re.compile(r"\$[0-9a-z]{1,4}\$[^\s]+\$[^\s]+")
_ROOTPW_LINE = re.compile(r"^([ \t]*)rootpw(?=[ \t\r\n]|$)[^\r\n]*", re.MULTILINE)
_FIRST_SECTION = re.compile(r"^%", re.MULTILINE)  # %pre, %post, %firstboot: scripts, not commands
_ESXI_PASSWORD_ARGUMENT = re.compile(r"--esxi-password=(?:'[^'\n]*'|\"[^\"\n]*\"|[^\s\\]+)")
# argparse: "--esxi-password", ... default="...": the option's default, up to the call's end
_VCENTER_DEFAULT = re.compile(r"""(["']--esxi-password["'][^)]*?\bdefault\s*=\s*)(["'])[^"'\n]*\2""")


@dataclass(frozen=True)
class RootPassword:
    """The images' root password as its file holds it: plain text, or a crypt hash."""

    text: str
    hashed: bool
    source: Path


def is_crypt_hash(text: str) -> bool:
    """Given the password file's text, return whether it is a crypt hash ($1$, $5$, $6$, $y$ ...)."""
    return bool(_ANY_CRYPT_HASH.fullmatch(text))


def rule_broken(password: str) -> str | None:
    """Given a plain password, return the ESXi rule (see the module docstring) it breaks, or None."""
    if any(char.isspace() or not char.isprintable() or not char.isascii() for char in password):
        return ("holds whitespace, a control or a non-ASCII character, which a kickstart line "
                "cannot carry")
    if any(char in FORBIDDEN for char in password):
        return "holds a quote, a backslash or '#', which a kickstart line cannot carry"
    if len(password) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters (ESXi's minimum)"
    if len(password) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters (ESXi takes fewer than {MAX_LENGTH + 1})"
    classes = character_classes(password)
    if classes < MIN_CLASSES:
        return (f"uses {classes} of the 4 character classes (lowercase, uppercase, digits, others) "
                f"where ESXi asks for {MIN_CLASSES}; an uppercase first character and a digit last "
                f"character do not count")
    if "root" in password.lower():
        return "contains the user name root, which ESXi refuses"
    return None


def character_classes(password: str) -> int:
    """Given a password, return how many character classes count toward ESXi's rule (passwdqc's way)."""
    lowers = sum(char.islower() for char in password)
    uppers = sum(char.isupper() for char in password)
    digits = sum(char.isdigit() for char in password)
    others = len(password) - lowers - uppers - digits
    if password[:1].isupper():
        uppers -= 1
    if password[-1:].isdigit():
        digits -= 1
    return sum(count > 0 for count in (lowers, uppers, digits, others))


def read_root_password(path: Path) -> RootPassword:
    """Given build.root_password_file, return the password it holds, registered as a secret.

    Raise BadKickstartSettings with a one-line reason (never the password) for a file others may
    read, an empty one, a hash of an unknown scheme, or a plain password ESXi refuses.
    """
    text = read_private_file(path, "root password file", BadKickstartSettings)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BadKickstartSettings(f"root password file {path} holds no password")
    password = lines[0]
    add_secret(password)
    if is_crypt_hash(password):
        if not _CRYPT_HASH.fullmatch(password):
            raise BadKickstartSettings(
                f"root password file {path} holds a crypt hash of a scheme ESXi does not use: "
                f"give a $6$ (SHA-512) hash, e.g. from `openssl passwd -6`, or a plain password")
        return RootPassword(password, hashed=True, source=Path(path))
    broken = rule_broken(password)
    if broken:
        raise BadKickstartSettings(f"the root password in {path} {broken}: ESXi's installer would "
                                   f"stop on it; nothing was built")
    return RootPassword(password, hashed=False, source=Path(path))


def root_password_problem(build_config: BuildConfig) -> str | None:
    """Given the build config, return why its root password cannot be used, or None (fine or not set)."""
    if build_config.root_password_file is None:
        return None
    try:
        read_root_password(build_config.root_password_file)
    except BadKickstartSettings as error:
        return str(error)
    return None


def template_kickstarts(template_copy: Path) -> list[Path]:
    """Given a template folder, return the kickstart files of ours it has (normally one)."""
    return [template_copy / name for name in KICKSTART_FILES if os.path.lexists(template_copy / name)]


def apply_settings(template_copy: Path, build_config: BuildConfig) -> list[str]:
    """Given a prepared work copy of the template, put the configured kickstart and root password in
    it; return what was done, one line each, for the build log (never the password).

    Raise BadKickstartSettings when a setting cannot be used or the template has no place for it.
    """
    done: list[str] = []
    if build_config.kickstart is None and build_config.root_password_file is None:
        return done
    password = None
    if build_config.root_password_file is not None:
        password = read_root_password(build_config.root_password_file)
    kickstarts = template_kickstarts(template_copy)
    if not kickstarts:
        setting = "build.kickstart" if build_config.kickstart else "build.root_password_file"
        raise BadKickstartSettings(
            f"{setting} is set but the template folder {template_copy.name} has no kickstart "
            f"({' or '.join(KICKSTART_FILES)}) to put it in")
    if build_config.kickstart is not None:
        source = Path(build_config.kickstart)
        text = _read(source, f"build.kickstart {source}")
        if password is None:
            _check_own_rootpw(text, source)
        for kickstart in kickstarts:
            _rewrite(kickstart, text)
            done.append(f"kickstart {_relative(kickstart, template_copy)} replaced by {source}")
    if password is not None:
        done.extend(_put_password(template_copy, kickstarts, password))
    return done


def _check_own_rootpw(text: str, source: Path) -> None:
    """Given build.kickstart's text (no password file), refuse a plain rootpw that ESXi would refuse;
    the password it holds is registered as a secret."""
    for line in _split_sections(text)[0].splitlines():
        words = line.split()
        if not words or words[0] != "rootpw" or "--iscrypted" in words:
            continue
        plain = line.split(None, 1)[1].strip() if len(words) > 1 else ""
        if plain:
            add_secret(plain)
        broken = rule_broken(plain) if plain else "is empty"
        if broken:
            raise BadKickstartSettings(f"the rootpw password in build.kickstart {source} {broken}: "
                                       f"ESXi's installer would stop on it; nothing was built")


def _split_sections(text: str) -> tuple[str, str]:
    """Given a kickstart, return its commands (where rootpw is) and the script sections after them."""
    first = _FIRST_SECTION.search(text)
    return (text, "") if first is None else (text[:first.start()], text[first.start():])


def _put_password(template_copy: Path, kickstarts: list[Path], password: RootPassword) -> list[str]:
    """Put the password in every place of the work copy that carries the template's; return where."""
    rootpw = f"rootpw --iscrypted {password.text}" if password.hashed else f"rootpw {password.text}"
    vcenter_password = "" if password.hashed else password.text
    done, places = [], []
    for kickstart in kickstarts:
        commands, scripts = _split_sections(_read(kickstart))
        commands, lines = _ROOTPW_LINE.subn(lambda match: match.group(1) + rootpw, commands)
        text = commands + scripts
        text, arguments = _ESXI_PASSWORD_ARGUMENT.subn(
            lambda _: f"--esxi-password='{vcenter_password}'", text)
        if not lines:
            raise BadKickstartSettings(
                f"the kickstart {_relative(kickstart, template_copy)} has no rootpw line: "
                f"build.root_password_file has no place to go")
        _rewrite(kickstart, text)
        name = _relative(kickstart, template_copy)
        done.append(f"root password from {password.source} "
                    f"({'crypt hash' if password.hashed else 'plain'}) put in {name}: rootpw ({lines} line(s))")
        if arguments:
            places.append(f"{name} --esxi-password ({arguments})")
    for script in (template_copy / relative for relative in VCENTER_SCRIPTS):
        if script.is_file():
            script_text, defaults = _VCENTER_DEFAULT.subn(
                lambda match: f"{match.group(1)}\"{vcenter_password}\"", _read(script))
            if defaults:
                _rewrite(script, script_text)
                places.append(f"{_relative(script, template_copy)} --esxi-password default")
    if places and password.hashed:
        log.warning("kickstart.vcenter_password_emptied", places=places,
                    why="a crypt hash cannot log in to vCenter as root")
        done.append("emptied (a crypt hash cannot log in to vCenter; give a plain password for "
                    "vCenter registration): " + ", ".join(places))
    elif places:
        done.append("also put in: " + ", ".join(places))
    _check_no_default_left(template_copy, password)
    return done


def _check_no_default_left(template_copy: Path, password: RootPassword) -> None:
    """Refuse a work copy that still carries the template's default password somewhere we patch."""
    if password.text == TEMPLATE_DEFAULT_PASSWORD:
        return
    for relative in (*KICKSTART_FILES, *VCENTER_SCRIPTS):
        path = template_copy / relative
        if not path.is_file():
            continue
        for number, line in enumerate(_read(path).splitlines(), start=1):
            if TEMPLATE_DEFAULT_PASSWORD in line:
                raise BadKickstartSettings(
                    f"{relative} line {number} still carries packer-maas's default root password in "
                    f"a place esxi-watcher does not know: edit it there, or set build.kickstart")


def _read_text(path: Path) -> str:
    """Given a text file, return its text with its own line ends (CRLF stays CRLF)."""
    with open(path, encoding="utf-8", newline="") as file:
        return file.read()


def _read(path: Path, label: str | None = None) -> str:
    """Given a text file (named in a failure as label, else as a template file), return its text."""
    try:
        return _read_text(path)
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise BadKickstartSettings(f"{label or f'template file {path.name}'}: {reason}") from None


def _rewrite(path: Path, text: str) -> None:
    """Replace the file at path (a symlink itself, never what it points to) by one holding text,
    readable by its owner only (it may hold the root password), keeping its execute bit."""
    try:
        mode = path.stat().st_mode & 0o700 if path.exists() else 0o600
    except OSError:
        mode = 0o600
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.chmod(temporary, mode | 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


def _relative(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder))
