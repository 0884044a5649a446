"""Fixtures of the system tests: the two .debs (built once per session) and output for the CI log.

What the system tests print (`systemctl status`, `systemd-analyze security`, timings) goes to the
terminal even under pytest's capture, so it lands in the CI log.
"""

from __future__ import annotations

import time

import pytest

from tests.system.build_debs import build_debs


@pytest.fixture(scope="session")
def ci_log(pytestconfig):
    """Return a context manager under which prints reach the terminal, captured or not."""
    return pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled


@pytest.fixture(scope="session")
def debs(tmp_path_factory, ci_log):
    with ci_log():
        started = time.monotonic()
        built = build_debs(tmp_path_factory.mktemp("debs"))
        print(f"\nbuild-debs: {time.monotonic() - started:.1f} s: {[deb.name for deb in built]}")
    return built
