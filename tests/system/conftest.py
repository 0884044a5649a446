"""Fixtures of the system tests: the two .debs, built once per session."""

from __future__ import annotations

import time

import pytest

from tests.system.build_debs import build_debs


@pytest.fixture(scope="session")
def debs(tmp_path_factory):
    started = time.monotonic()
    built = build_debs(tmp_path_factory.mktemp("debs"))
    print(f"\nbuild-debs: {time.monotonic() - started:.1f} s: {[deb.name for deb in built]}")
    return built
