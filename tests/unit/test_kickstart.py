"""The kickstart settings: ESXi's password rules, crypt hashes, the password file's checks, and the
password put into work copies shaped like each packer-maas generation (our own stand-in files)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from esxi_watcher import kickstart
from esxi_watcher.errors import BadKickstartSettings
from esxi_watcher.logs import redact

DEFAULT = "password123!"
GOOD = "xQaT3%A-walk"
SHA512 = "$6$saltsalt$" + "a" * 86


@dataclass(frozen=True)
class Settings:
    """The build config's kickstart keys, as kickstart reads them."""

    kickstart: Path | None = None
    root_password_file: Path | None = None
    environment: dict = field(default_factory=dict)


# Stand-ins for the three places, written for these tests in the shapes the templates use.
KICKSTART_TEXT = f"""vmaccepteula
# root's password; keep the vcenter call below in step
rootpw {DEFAULT}
install --firstdisk
%firstboot --interpreter=busybox
    /altbootbank/maas/vcenter \\
        --host=$addr \\
        --esxi-password='{DEFAULT}'
"""
VCENTER_2023 = f"""#!/usr/bin/env python3
import argparse
parser = argparse.ArgumentParser()
parser.add_argument(
    "--esxi-password",
    default="{DEFAULT}",
    help="root's password",
)
"""
VCENTER_2019 = f"""#!/usr/bin/env python3
import argparse
parser = argparse.ArgumentParser()
parser.add_argument('-P', '--esxi-password', default='{DEFAULT}', help=(
    "root's password"))
"""


def generation(tmp_path: Path, name: str) -> Path:
    """A work copy shaped like one packer-maas generation: 2019 (JSON, http/ kickstart, vcenter at
    the top), 2022 (HCL, KS.CFG, vcenter at the top), 2023 (Makefile, KS.CFG, maas/vcenter)."""
    folder = tmp_path / name / "vmware-esxi"
    kickstart_path, vcenter, build_file = {
        "2019": ("http/vmware-esxi-ks.cfg", ("vcenter", VCENTER_2019), "vmware-esxi.json"),
        "2022": ("KS.CFG", ("vcenter", VCENTER_2019), "vmware-esxi.pkr.hcl"),
        "2023": ("KS.CFG", ("maas/vcenter", VCENTER_2023), "Makefile"),
    }[name]
    for relative, text in ((kickstart_path, KICKSTART_TEXT), vcenter, (build_file, "")):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    (folder / vcenter[0]).chmod(0o755)
    return folder


def password_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "root-password"
    path.write_text(text)
    path.chmod(mode)
    return path


# ESXi's rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("password", ["xQaTEhb!", "xQaT3!A", "password123!", "Ab1!efgh", "a$&|;()*?[]{}^%@<>~=+,./:-1B"])
def test_passwords_esxi_takes_pass(password):
    assert kickstart.rule_broken(password) is None


@pytest.mark.parametrize("password, rule", [
    ("xQ3!a", "shorter than 7"),
    ("xQ3!a" * 8, "longer than 39"),
    ("Xqat3hi", "uses 2 of the 4 character classes"),  # VMware's example: uppercase first
    ("xQaTEh2", "uses 2 of the 4 character classes"),  # VMware's example: digit last
    ("abcdefgh", "uses 1 of the 4"),
    ("myRoot!9x", "user name root"),
    ("xQaT 3!A", "whitespace"),
    ("xQaT3!A\t", "whitespace"),
    ("xQaTé3!A", "non-ASCII"),
    ("xQa'T3!A", "quote"),
    ("xQaT3#A", "'#'"),  # VMware's own example, but a kickstart line may read it as a comment
    ('xQa"T3!A', "quote"),
    ("xQa\\T3!A", "backslash"),
    ("xQaT3!A", None),
])
def test_each_rule_esxi_refuses_is_named(password, rule):
    broken = kickstart.rule_broken(password)
    if rule is None:
        assert broken is None
    else:
        assert rule in broken


def test_uppercase_first_counts_when_another_uppercase_follows():
    assert kickstart.character_classes("XaBcdef") == 2
    assert kickstart.character_classes("Xabcdef1") == 1
    assert kickstart.character_classes("xabc1def") == 2


@pytest.mark.parametrize("text, is_hash", [
    (SHA512, True), ("$1$abc$" + "b" * 22, True), ("$5$rounds=5000$salt$" + "c" * 43, True),
    ("$y$j9T$salt$hash", True), ("$2b$12$" + "d" * 53, True), ("xQaT3!A$", False), (GOOD, False),
])
def test_crypt_hashes_are_told_from_plain_passwords(text, is_hash):
    assert kickstart.is_crypt_hash(text) is is_hash


# The password file ---------------------------------------------------------------------------

def test_a_password_file_others_can_read_is_refused_in_one_line(tmp_path):
    path = password_file(tmp_path, GOOD + "\n", mode=0o644)

    problem = kickstart.root_password_problem(Settings(root_password_file=path))

    assert problem == f"root password file {path} is readable by others: chmod 600 {path}"


def test_a_missing_password_file_is_one_line(tmp_path):
    problem = kickstart.root_password_problem(Settings(root_password_file=tmp_path / "nope"))

    assert problem == f"root password file {tmp_path / 'nope'} does not exist"


def test_a_weak_password_names_the_rule_and_never_shows_the_password(tmp_path):
    path = password_file(tmp_path, "Xqat3hiq1\n")

    problem = kickstart.root_password_problem(Settings(root_password_file=path))

    assert "uses 2 of the 4 character classes" in problem and "nothing was built" in problem
    assert "Xqat3hiq1" not in problem
    assert "\n" not in problem


def test_no_password_configured_is_no_problem():
    assert kickstart.root_password_problem(Settings()) is None


def test_an_empty_password_file_is_refused(tmp_path):
    path = password_file(tmp_path, "\n\n")

    assert "holds no password" in kickstart.root_password_problem(Settings(root_password_file=path))


def test_a_hash_of_a_scheme_esxi_does_not_use_is_refused(tmp_path):
    path = password_file(tmp_path, "$y$j9T$salt$hash\n")

    assert "scheme ESXi does not use" in kickstart.root_password_problem(Settings(root_password_file=path))


def test_a_read_password_is_masked_in_every_later_log_line(tmp_path):
    password = "Mask3d-Only!x"
    kickstart.read_root_password(password_file(tmp_path, password + "\n"))

    assert password not in redact(f"line with {password} in it")


# Putting it into each generation ------------------------------------------------------------

@pytest.mark.parametrize("name, kickstart_path, vcenter", [
    ("2019", "http/vmware-esxi-ks.cfg", "vcenter"),
    ("2022", "KS.CFG", "vcenter"),
    ("2023", "KS.CFG", "maas/vcenter"),
])
def test_a_plain_password_goes_into_every_place_of_each_generation(tmp_path, name, kickstart_path, vcenter):
    folder = generation(tmp_path, name)
    settings = Settings(root_password_file=password_file(tmp_path, GOOD + "\n"))

    done = kickstart.apply_settings(folder, settings)

    ks = (folder / kickstart_path).read_text()
    assert f"\nrootpw {GOOD}\n" in ks
    assert f"--esxi-password='{GOOD}'" in ks
    script = (folder / vcenter).read_text()
    assert (f'default="{GOOD}"' in script)
    for path in (folder / kickstart_path, folder / vcenter):
        assert DEFAULT not in path.read_text()
        assert not path.stat().st_mode & 0o077
    assert (folder / vcenter).stat().st_mode & stat.S_IXUSR
    assert all(GOOD not in line for line in done)
    assert any("rootpw" in line for line in done)


def test_the_rest_of_the_kickstart_is_kept(tmp_path):
    folder = generation(tmp_path, "2023")
    kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))

    lines = (folder / "KS.CFG").read_text().splitlines()
    assert lines[:2] == ["vmaccepteula", "# root's password; keep the vcenter call below in step"]
    assert lines[3:7] == KICKSTART_TEXT.splitlines()[3:7]


def test_a_hash_becomes_rootpw_iscrypted_and_empties_the_vcenter_places(tmp_path):
    folder = generation(tmp_path, "2023")

    done = kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, SHA512)))

    ks = (folder / "KS.CFG").read_text()
    assert f"\nrootpw --iscrypted {SHA512}\n" in ks
    assert "--esxi-password=''" in ks
    assert 'default=""' in (folder / "maas/vcenter").read_text()
    assert any("emptied" in line and "maas/vcenter" in line for line in done)


@pytest.mark.parametrize("password", ["a$1&\\0|;x*?.[B]^{2}%9", "Q&&$$1//\\1s|x", "p$(id)`X9"])
def test_characters_special_to_sed_regex_and_shell_are_put_literally(tmp_path, password):
    password = password.replace("\\", "").replace("`", "~")  # a kickstart line cannot carry those
    assert kickstart.rule_broken(password) is None
    folder = generation(tmp_path, "2023")

    kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, password)))

    ks = (folder / "KS.CFG").read_text()
    assert f"\nrootpw {password}\n" in ks
    assert f"--esxi-password='{password}'" in ks
    assert f'default="{password}"' in (folder / "maas/vcenter").read_text()


def test_build_kickstart_replaces_the_templates_and_gets_the_password(tmp_path):
    folder = generation(tmp_path, "2019")
    ours = tmp_path / "ks.cfg"
    ours.write_text("vmaccepteula\nrootpw Site-Default1x\ninstall --firstdisk\n")

    kickstart.apply_settings(folder, Settings(kickstart=ours, root_password_file=password_file(tmp_path, GOOD)))

    assert (folder / "http/vmware-esxi-ks.cfg").read_text() == f"vmaccepteula\nrootpw {GOOD}\ninstall --firstdisk\n"
    assert ours.read_text() == "vmaccepteula\nrootpw Site-Default1x\ninstall --firstdisk\n"


def test_build_kickstart_alone_is_copied_as_it_is(tmp_path):
    folder = generation(tmp_path, "2023")
    ours = tmp_path / "ks.cfg"
    ours.write_text("vmaccepteula\nrootpw Site-Default1x\n")

    done = kickstart.apply_settings(folder, Settings(kickstart=ours))

    assert (folder / "KS.CFG").read_text() == ours.read_text()
    assert done == [f"kickstart KS.CFG replaced by {ours}"]


def test_a_kickstart_symlinked_out_of_the_copy_is_replaced_not_written_through(tmp_path):
    folder = generation(tmp_path, "2023")
    outside = tmp_path / "site-ks.cfg"
    outside.write_text(KICKSTART_TEXT)
    (folder / "KS.CFG").unlink()
    os.symlink(outside, folder / "KS.CFG")

    kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))

    assert outside.read_text() == KICKSTART_TEXT
    assert not (folder / "KS.CFG").is_symlink()
    assert f"rootpw {GOOD}" in (folder / "KS.CFG").read_text()


def test_a_template_without_a_kickstart_has_no_place_for_the_password(tmp_path):
    folder = tmp_path / "vmware-esxi"
    folder.mkdir()
    (folder / "vmware-esxi.json").write_text("{}")

    with pytest.raises(BadKickstartSettings, match="has no kickstart .KS.CFG or http/vmware-esxi-ks.cfg."):
        kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))


def test_a_kickstart_without_rootpw_has_no_place_for_the_password(tmp_path):
    folder = generation(tmp_path, "2023")
    ours = tmp_path / "ks.cfg"
    ours.write_text("vmaccepteula\n# rootpw is set by hand\n")

    with pytest.raises(BadKickstartSettings, match="has no rootpw line"):
        kickstart.apply_settings(folder, Settings(kickstart=ours, root_password_file=password_file(tmp_path, GOOD)))


def test_the_default_left_in_an_unknown_place_fails_the_build(tmp_path):
    folder = generation(tmp_path, "2023")
    with open(folder / "KS.CFG", "a") as ks:
        ks.write(f"esxcli system account set -i root -p '{DEFAULT}'\n")

    with pytest.raises(BadKickstartSettings, match="KS.CFG line 9 still carries packer-maas's default"):
        kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))


def test_a_weak_password_fails_before_anything_is_changed(tmp_path):
    folder = generation(tmp_path, "2023")

    with pytest.raises(BadKickstartSettings, match="shorter than 7"):
        kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, "aB3!")))

    assert (folder / "KS.CFG").read_text() == KICKSTART_TEXT


def test_nothing_configured_changes_nothing(tmp_path):
    folder = generation(tmp_path, "2023")

    assert kickstart.apply_settings(folder, Settings()) == []
    assert (folder / "KS.CFG").read_text() == KICKSTART_TEXT


def test_build_kickstarts_own_weak_rootpw_fails_before_the_build(tmp_path):
    folder = generation(tmp_path, "2023")
    ours = tmp_path / "ks.cfg"
    ours.write_text("vmaccepteula\nrootpw abcdefgh\n")

    with pytest.raises(BadKickstartSettings, match="rootpw password in build.kickstart .* uses 1 of the 4") as failure:
        kickstart.apply_settings(folder, Settings(kickstart=ours))

    assert "abcdefgh" not in str(failure.value)


def test_build_kickstarts_own_hash_is_taken_as_it_is(tmp_path):
    folder = generation(tmp_path, "2023")
    ours = tmp_path / "ks.cfg"
    ours.write_text(f"vmaccepteula\nrootpw --iscrypted {SHA512}\n")

    kickstart.apply_settings(folder, Settings(kickstart=ours))

    assert (folder / "KS.CFG").read_text() == ours.read_text()


def test_a_weak_password_is_reported_before_a_missing_kickstart(tmp_path):
    folder = tmp_path / "vmware-esxi"
    folder.mkdir()

    with pytest.raises(BadKickstartSettings, match="shorter than 7"):
        kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, "aB3!")))


def test_a_huge_password_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "root-password"
    with open(path, "wb") as file:
        file.truncate(2 << 20)
    path.chmod(0o600)

    assert "larger than" in kickstart.root_password_problem(Settings(root_password_file=path))


def test_a_template_with_both_kickstarts_gets_the_password_in_both(tmp_path):
    folder = generation(tmp_path, "2023")
    (folder / "http").mkdir()
    (folder / "http/vmware-esxi-ks.cfg").write_text(KICKSTART_TEXT)

    kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))

    for name in ("KS.CFG", "http/vmware-esxi-ks.cfg"):
        assert f"\nrootpw {GOOD}\n" in (folder / name).read_text()


def test_a_crlf_kickstart_keeps_its_line_ends(tmp_path):
    folder = generation(tmp_path, "2023")
    (folder / "KS.CFG").write_bytes(KICKSTART_TEXT.replace("\n", "\r\n").encode())

    kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))

    assert f"\r\nrootpw {GOOD}\r\n".encode() in (folder / "KS.CFG").read_bytes()


def test_a_password_file_that_is_a_folder_is_refused(tmp_path):
    folder = tmp_path / "root-password"
    folder.mkdir(mode=0o700)

    assert kickstart.root_password_problem(Settings(root_password_file=folder)) == \
        f"root password file {folder} is not a regular file"


def test_an_unreadable_build_kickstart_is_one_line(tmp_path):
    folder = generation(tmp_path, "2023")

    with pytest.raises(BadKickstartSettings, match=r"^build.kickstart .*/nope: No such file or directory$"):
        kickstart.apply_settings(folder, Settings(kickstart=tmp_path / "nope"))


def test_rootpw_in_a_script_section_is_not_a_command(tmp_path):
    folder = generation(tmp_path, "2023")
    with open(folder / "KS.CFG", "a") as ks:
        ks.write("rootpw=$(cat /tmp/x)\nrootpw_tool --check\n")

    kickstart.apply_settings(folder, Settings(root_password_file=password_file(tmp_path, GOOD)))

    text = (folder / "KS.CFG").read_text()
    assert text.count(f"rootpw {GOOD}") == 1
    assert text.endswith("rootpw=$(cat /tmp/x)\nrootpw_tool --check\n")
