"""`esxi-watcher doctor`: check, one line each, what a build and a registration will need."""

from __future__ import annotations

import os
import shutil
from typing import Iterator

from esxi_watcher.config import Config
from esxi_watcher.errors import EsxiWatcherError


def run_checks(config: Config) -> Iterator[tuple[bool, str]]:
    yield from _folders(config)
    yield from _template(config)
    yield from _kvm(config)
    yield from _api_key(config)


def _folders(config: Config) -> Iterator[tuple[bool, str]]:
    for label, folder in (("drop dir", config.drop_dir), ("state dir", config.state_dir)):
        usable = folder.is_dir() and os.access(folder, os.W_OK)
        yield usable, f"{label} {folder}" + ("" if usable else ": missing or not writable")


def _template(config: Config) -> Iterator[tuple[bool, str]]:
    from esxi_watcher import build

    template = config.build.template_dir
    if not template.is_dir():
        yield False, f"packer-maas template {template}: missing (git clone packer-maas, set build.template_dir)"
        return
    try:
        commands = build.build_commands(template, template / "x.iso", config.build.command, template)
    except EsxiWatcherError as error:
        yield False, f"packer-maas template {template}: {error}"
        return
    yield True, f"packer-maas template {template}: runs {' '.join(commands[-1][:2])}"
    for program in sorted({command[0] for command in commands}):
        found = shutil.which(program)
        yield bool(found), f"{program}: " + (found or "not found on PATH")


def _kvm(config: Config) -> Iterator[tuple[bool, str]]:
    from esxi_watcher import kvm

    if not kvm.template_wants_kvm(config.build.template_dir, config.build.command):
        yield True, "KVM: the template does not ask for it"
        return
    verdict = kvm.kvm_can_run_guests(cache_dir=config.state_dir)
    yield verdict.ok, "KVM: runs guests" if verdict.ok else verdict.reason


def _api_key(config: Config) -> Iterator[tuple[bool, str]]:
    from esxi_watcher import maas

    for target in config.targets:
        try:
            maas.read_api_key(target.api_key_file)
        except EsxiWatcherError as error:
            yield False, f"MAAS API key of target {target.name}: {error}"
            continue
        yield True, f"MAAS API key of target {target.name}: {target.api_key_file}"
