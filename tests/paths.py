"""Where things are in the checkout, for the tests of every tier."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
TESTS = ROOT / "tests"
TEMPLATES = TESTS / "templates"
