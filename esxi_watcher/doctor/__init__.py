"""`esxi-watcher doctor`: check, one line each, what a build and a registration will need.

Each check yields Check records (PASS, WARN or FAIL, a one-line detail and the fix); a FAIL means
a build or a registration will fail as things are, a WARN that it may, or that it needs something
the host may not have when it runs (the network, for an offline MAAS host).
"""

from __future__ import annotations

from typing import Callable, Iterator

from esxi_watcher.config import Config
from esxi_watcher.doctor import machine, network, template, targets
from esxi_watcher.doctor.verdict import FAIL, PASS, WARN, Check

__all__ = ["Check", "FAIL", "PASS", "WARN", "exit_code", "run_checks"]

HOST_CHECKS: tuple[Callable[[Config], Iterator[Check]], ...] = (
    machine.folders, template.template, template.root_password, template.makefile_packages, template.packer,
    template.plugins, machine.kvm, machine.fuse, machine.memory, machine.disk, network.build_environment)


def run_checks(config: Config) -> Iterator[Check]:
    """Given the configuration, yield every check's verdict, host first, then each MAAS target."""
    for check in HOST_CHECKS:
        yield from _guarded(check.__name__, check, config)
    for target in config.targets:
        yield from _guarded(f"maas[{target.name}]", targets.maas_target, target)


def _guarded(name: str, check, argument) -> Iterator[Check]:
    """Run one check; a check that breaks on something unforeseen says so and the others still run."""
    try:
        yield from check(argument)
    except Exception as error:  # noqa: BLE001 - doctor reports on a host that may hold anything
        yield Check(name, FAIL, f"could not be checked: {type(error).__name__}: {error}",
                    "report this as a bug of esxi-watcher, with this line")


def exit_code(checks: list[Check]) -> int:
    """Given the verdicts, return the command's exit status: 1 on any FAIL, else 0."""
    return 1 if any(check.status == FAIL for check in checks) else 0
