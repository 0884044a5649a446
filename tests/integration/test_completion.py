"""Bash completion as an admin meets it: the script sourced in a real bash, completing commands,
options, ISO files, MAAS target names and job ids read from a real store through the CLI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esxi_watcher.cli import _parser
from esxi_watcher.store import JobStore, State
from tests.harness import write_config
from tests.paths import ROOT

SCRIPT = ROOT / "completions" / "esxi-watcher"
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


@pytest.fixture
def shell_path(tmp_path) -> str:
    """A PATH whose `esxi-watcher` is this checkout's, as the package's /usr/bin/esxi-watcher is."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "esxi-watcher"
    program.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m esxi_watcher "$@"\n')
    program.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def complete(shell_path: str, *words: str, cwd: Path = ROOT, with_bash_completion: bool = False,
             home: Path | None = None) -> list[str]:
    """Given the words of a command line (the last one being completed, "" after a space), return
    what bash offers, as COMPREPLY holds it after our completion function ran."""
    prelude = f"source {BASH_COMPLETION}\n" if with_bash_completion else ""
    program = (prelude + 'source "$0"\n'
               'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
               '"$(complete -p esxi-watcher | sed "s/.*-F \\([^ ]*\\) .*/\\1/")" esxi-watcher\n'
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "-c", program, str(SCRIPT), "esxi-watcher", *words], capture_output=True,
                            text=True, cwd=cwd, env={**os.environ, "PATH": shell_path, "HOME": str(home or Path.home())},
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(commands.choices)


def _visible_options(parser: argparse.ArgumentParser) -> set[str]:
    """Given a parser, return its long options but the hidden ones (-h is --help's short form)."""
    return {option for action in parser._actions if action.help != argparse.SUPPRESS
            for option in action.option_strings if option.startswith("--")}


def _store_with_jobs(site: Path, count: int) -> list[int]:
    (site / "state").mkdir(parents=True, exist_ok=True)
    store = JobStore(site / "state" / "jobs.sqlite3")
    ids = [store.add(state=State.REJECTED, iso=f"n{number}.iso", iso_path=f"/d/n{number}.iso", error="no").id
           for number in range(count)]
    store.close()
    return ids


def test_a_command_is_completed_from_its_first_letters(shell_path):
    assert complete(shell_path, "sh") == ["show"]
    assert complete(shell_path, "st") == ["status"]
    assert sorted(complete(shell_path, "re")) == ["rebuild", "retry"]


def test_every_command_and_option_argparse_knows_is_completed(shell_path):
    commands = _subcommands()
    assert set(commands) <= set(complete(shell_path, ""))
    assert _visible_options(_parser()) <= set(complete(shell_path, "-"))
    for name, parser in commands.items():
        assert _visible_options(parser) <= set(complete(shell_path, name, "-")), name


def test_job_ids_come_from_the_store_of_the_config_given(tmp_path, shell_path):
    config = write_config(tmp_path / "site")
    ids = _store_with_jobs(tmp_path / "site", 3)
    for command in ("logs", "retry", "forget", "show", "rebuild"):
        assert complete(shell_path, "--config", str(config), command, "") == [str(i) for i in ids], command
    assert complete(shell_path, "--config", str(config), "logs", str(ids[0])[:1]) == [str(ids[0])]
    # Once the job is given, only options are left.
    assert complete(shell_path, "--config", str(config), "retry", str(ids[0]), "") == ["--target", "--help"]


def test_target_names_come_from_the_config(tmp_path, shell_path):
    targets = [{"name": name, "url": f"http://{name}.example.com:5240/MAAS/",
                "api_key_file": str(tmp_path / f"{name}.key")} for name in ("site-a", "site-b", "lab")]
    config = write_config(tmp_path / "site", maas=targets)
    assert complete(shell_path, "--config", str(config), "retry", "4", "--target", "") == ["site-a", "site-b",
                                                                                          "lab"]
    assert complete(shell_path, "--config", str(config), "build", "x.iso", "--target", "si") == ["site-a",
                                                                                                "site-b"]


def test_iso_arguments_complete_to_iso_files_and_folders(tmp_path, shell_path):
    isos = tmp_path / "isos"
    (isos / "more").mkdir(parents=True)
    for name in ("a.iso", "B.ISO", "notes.txt", "a.iso.sha256", "more/c.iso"):
        (isos / name).write_bytes(b"")
    assert sorted(complete(shell_path, "inspect", "", cwd=isos)) == ["B.ISO", "a.iso", "more"]
    assert sorted(complete(shell_path, "build", "", cwd=isos)) == ["B.ISO", "a.iso", "more"]
    assert complete(shell_path, "inspect", "more/", cwd=isos) == ["more/c.iso"]


def test_it_works_beside_the_bash_completion_package(tmp_path, shell_path):
    config = write_config(tmp_path / "site")
    ids = _store_with_jobs(tmp_path / "site", 2)
    assert complete(shell_path, "sh", with_bash_completion=True) == ["show"]
    assert complete(shell_path, "--config", str(config), "logs", "", with_bash_completion=True) == [str(i) for i in ids]


def _cli(config: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(config), *arguments],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_job_ids_helper_is_silent_without_a_usable_store(tmp_path):
    config = write_config(tmp_path / "site")
    missing = _cli(config, "status", "--ids")
    assert (missing.returncode, missing.stdout, missing.stderr) == (0, "", "")
    (tmp_path / "site" / "state").mkdir()
    db = tmp_path / "site" / "state" / "jobs.sqlite3"
    db.write_bytes(b"not a database, a file someone copied over it\n" * 100)
    damaged = _cli(config, "status", "--ids")
    assert (damaged.returncode, damaged.stdout, damaged.stderr) == (0, "", "")
    assert db.read_bytes().startswith(b"not a database")  # completing never repairs or moves the store


def test_the_job_ids_helper_is_silent_on_a_locked_store(tmp_path):
    config = write_config(tmp_path / "site")
    _store_with_jobs(tmp_path / "site", 2)
    db = tmp_path / "site" / "state" / "jobs.sqlite3"
    code = ("import sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('PRAGMA locking_mode=EXCLUSIVE')\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "db.execute('UPDATE jobs SET error = error')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = _cli(config, "status", "--ids")
        assert (locked.returncode, locked.stdout, locked.stderr) == (0, "", "")
        assert _cli(config, "status").returncode != 0  # the store really is locked to readers
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_a_config_path_typed_quoted_escaped_or_under_home_is_read(tmp_path, shell_path):
    home = tmp_path / "home dir"
    config = write_config(home / "my site")
    ids = [str(i) for i in _store_with_jobs(home / "my site", 2)]
    typed = [f'"{config}"', f"'{config}'", str(config).replace(" ", "\\ "), "~/my\\ site/config.yaml"]
    for word in typed:
        assert complete(shell_path, "--config", word, "logs", "", home=home) == ids, word


def test_options_written_with_an_equals_sign(tmp_path, shell_path):
    targets = [{"name": name, "url": f"http://{name}.example.com:5240/MAAS/",
                "api_key_file": str(tmp_path / f"{name}.key")} for name in ("site-a", "lab")]
    config = write_config(tmp_path / "site", maas=targets)
    ids = [str(i) for i in _store_with_jobs(tmp_path / "site", 2)]
    # bash hands `--config=FILE` over as three words: --config, =, FILE.
    assert complete(shell_path, "--config", "=", str(config), "logs", "") == ids
    assert complete(shell_path, "--config", "=", str(config), "retry", "--target", "=", "s") == ["site-a"]
    assert complete(shell_path, "--config", "=", str(config), "retry", "--target", "=") == ["site-a", "lab"]
    assert complete(shell_path, "--config", "=", str(config), "retry", "--target", "=", "lab", "") == ids
