"""The docs follow the CLI: every command and option argparse knows is in the man page, the README's
command list and the bash completion, and every configuration key is in the man page."""

from __future__ import annotations

import argparse
import re

import pytest

from esxi_watcher.cli import _parser
from esxi_watcher.config import OPTIONS
from tests.paths import ROOT

MAN_PAGE = ROOT / "debian" / "esxi-watcher.8"
README = ROOT / "README.md"
COMPLETION = ROOT / "completions" / "esxi-watcher"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(commands.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Given a parser, return its long options but --help (every command has it) and the hidden ones."""
    return {option for action in parser._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings if option.startswith("--") and option != "--help"}


COMMANDS = _subcommands()


def _plain(roff: str) -> str:
    """Given man page source, return its words without font escapes, quotes and roff's \\- dashes."""
    text = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace('"', "")
    return re.sub(r"^\.[A-Z]{1,2} ?", "", text, flags=re.MULTILINE)


def _man_section(name: str) -> str:
    source = MAN_PAGE.read_text()
    match = re.search(rf"^\.SH {name}\n(.*?)(?=^\.SH )", source, flags=re.MULTILINE | re.DOTALL)
    assert match, f"the man page has no {name} section"
    return match.group(1)


def _man_entries(section: str) -> dict[str, str]:
    """Given a man page section of .TP entries, map each entry's first word to its plain text."""
    entries = {}
    for entry in _man_section(section).split(".TP\n")[1:]:
        text = _plain(entry)
        entries[text.split()[0]] = text
    return entries


def _readme_section() -> str:
    match = re.search(r"^## Commands\n(.*?)(?=^## )", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert match, "the README has no '## Commands' section"
    return match.group(1)


def _readme_commands() -> dict[str, str]:
    """The README's command list: each `- `esxi-watcher NAME ...`` line of its Commands section."""
    lines = re.findall(r"^- `esxi-watcher ([a-z-]+)([^`]*)`(.*)$", _readme_section(), flags=re.MULTILINE)
    return {name: synopsis for name, synopsis, _ in lines}


def man_page_gaps(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """Given a command and its parser, return what the man page's COMMANDS section lacks of it."""
    entries = _man_entries("COMMANDS")
    if name not in entries:
        return [f"`{name}` has no entry under COMMANDS in {MAN_PAGE.name}"]
    return [f"the man page's `{name}` entry does not name {option}"
            for option in sorted(_options(parser)) if option not in entries[name]]


def readme_gaps(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """Given a command and its parser, return what the README's command list lacks of it."""
    commands = _readme_commands()
    if name not in commands:
        return [f"`esxi-watcher {name}` is not in the README's command list"]
    return [f"the README's `esxi-watcher {name}` line does not name {option}"
            for option in sorted(_options(parser)) if option not in commands[name]]


def completion_gaps(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """Given a command and its parser, return what the bash completion lacks of it: the command in
    its list of commands, and each option in the words its `case` offers after that command."""
    script = COMPLETION.read_text()
    [command_words] = re.findall(r'_esxi_watcher_reply "(run inspect [^"]*)"', script)
    if name not in command_words.split():
        return [f"the completion does not offer the command `{name}`"]
    cases = re.findall(r"^\s*([a-z| -]+)\)(.*)$", script, flags=re.MULTILINE)
    offered = {option for pattern, words in cases if name in pattern.replace(" ", "").split("|")
               for listed in re.findall(r'options="([^"]*)"', words) for option in listed.split()}
    return [f"the completion of `{name}` does not offer {option}"
            for option in sorted(_options(parser)) if option not in offered]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_its_options_are_in_the_man_page(name):
    assert man_page_gaps(name, COMMANDS[name]) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_its_options_are_in_the_readme_command_list(name):
    assert readme_gaps(name, COMMANDS[name]) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_its_options_are_in_the_completion(name):
    assert completion_gaps(name, COMMANDS[name]) == []


def test_the_global_options_are_in_the_man_page_readme_and_completion():
    options = _plain(_man_section("OPTIONS"))
    readme = _readme_section()
    completion = COMPLETION.read_text()
    for option in sorted(_options(_parser()) | {"--help"}):
        assert option in options, f"{option} is not under OPTIONS in the man page"
        assert option in readme, f"{option} is not in the README's Commands section"
        assert option in completion, f"{option} is not in the completion"


def test_every_configuration_key_is_in_the_man_page():
    configuration = _plain(_man_section("CONFIGURATION"))
    missing = [option.key for option in OPTIONS if not re.search(rf"(?<![\w.]){re.escape(option.key)}\b",
                                                                  configuration)]
    assert not missing, f"the man page's CONFIGURATION section does not name {missing}"


def test_a_command_or_option_without_docs_is_caught():
    """The checks above fail for a command, or an option of a known command, that nobody documented."""
    undocumented = argparse.ArgumentParser(prog="esxi-watcher frobnicate")
    undocumented.add_argument("--wobble", action="store_true")
    for gaps in (man_page_gaps, readme_gaps, completion_gaps):
        assert gaps("frobnicate", undocumented), gaps.__name__
    status = argparse.ArgumentParser(prog="esxi-watcher status")
    status.add_argument("--json", action="store_true")
    status.add_argument("--wobble", action="store_true")
    for gaps in (man_page_gaps, readme_gaps, completion_gaps):
        assert [gap for gap in gaps("status", status) if "--wobble" in gap], gaps.__name__
