"""Configuration: every problem reported at once by dotted key; the example file is generated."""

from __future__ import annotations

import subprocess
import sys


def test_cli_exits_2_with_every_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("build:\n  timeout: nope\nmaas:\n  architecture: ''\n")
    result = subprocess.run([sys.executable, "-m", "esxi_watcher", "--config", str(path), "status"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "At 'build.timeout'" in result.stderr and "At 'maas.architecture'" in result.stderr
    assert result.stderr.count("\n") == 1


