"""lintian of Debian 13 and unstable on the .deb built on Debian 12 (build-debs runs Debian 12's own).

Each release's lintian runs in a cached root of that release (debootstrap + lintian), not booted, on a
throw-away overlay, as nobody; the .deb is bound in read-only. Errors fail the test; every tag is
printed.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.system.container import SUITES, HOST_SUITE, cached_root, nspawn_env


@pytest.mark.parametrize("suite", [suite for suite in SUITES if suite != HOST_SUITE])
def test_lintian_of_newer_releases(suite, debs, ci_log):
    deb = next(deb for deb in debs if deb.name.startswith("esxi-watcher_"))
    with ci_log():
        started = time.monotonic()
        root = cached_root(["lintian"], suite)
        # As nobody, as lintian asks; the .deb alone is bound in (its folder is root's only).
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "--as-pid2", "--console=pipe",
                "-D", str(root), "--volatile=overlay", "--user=nobody", "--chdir=/tmp",
                f"--bind-ro={deb}:/srv/{deb.name}", "--setenv=LANG=C.UTF-8",
                "lintian", "--pedantic", "--display-info", "--info", f"/srv/{deb.name}"]
        result = subprocess.run(argv, capture_output=True, text=True, env=nspawn_env(), timeout=900)
        version = subprocess.run([*argv[:argv.index("lintian")], "lintian", "--version"], capture_output=True,
                                 text=True, env=nspawn_env()).stdout.strip()
        tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
        counts = {kind: sum(line.startswith(kind) for line in tags) for kind in "EWIPX"}
        print(f"\nlintian on {suite} ({version}): " + ", ".join(f"{kind}: {n}" for kind, n in counts.items())
              + f" ({time.monotonic() - started:.1f} s)")
        print("\n".join(tags))
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
    assert counts["E"] == 0, result.stdout
