"""Every name the file system takes: outcome names fit NAME_MAX (with their .reason.txt), and a move
that cannot happen is logged once, adds no job rows, and never turns a registered image into a failure."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from esxi_watcher.outcomes import NAME_MAX, REASON_SUFFIX
from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso
from tests.unit.test_outcome_names import LONG_ASCII, LONG_UTF8, _bytes


def _esxi(tmp_path: Path, salt: str) -> Path:
    folder = tmp_path / "src" / salt
    folder.mkdir(parents=True)
    return make_esxi_iso(folder / "esxi.iso", salt=salt.encode())


@pytest.mark.parametrize("name", [LONG_ASCII, LONG_UTF8], ids=["ascii-253-bytes", "utf8-253-bytes"])
def test_a_long_name_registers_and_lands_in_done_under_a_shortened_name(tmp_path, simulator, daemon_factory,
                                                                        name):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    done = daemon.drop_dir / "done"
    done.mkdir()
    (done / name).write_text("an earlier file of that name, kept\n")  # the move needs a .jobN tag too
    source = _esxi(tmp_path, "long")
    drop(source, daemon.drop_dir, name)
    job = daemon.wait_for_state(name, "registered")
    moved = Path(job["iso_path"])
    assert moved.parent == done and moved.name != name and moved.name.endswith(".iso")
    assert _bytes(moved.name) + len(REASON_SUFFIX) <= NAME_MAX
    assert moved.read_bytes() == source.read_bytes()
    reason = Path(f"{moved}{REASON_SUFFIX}").read_text(encoding="utf-8")
    assert reason.startswith(f"renamed to {moved.name}: the name was too long")
    assert (done / name).read_text() == "an earlier file of that name, kept\n"
    assert not [e for e in daemon.log_events() if e.get("event") in ("job.internal_error", "intake.crashed")]


def test_the_same_long_name_twice_gives_a_duplicate_with_its_reason(tmp_path, simulator, daemon_factory):
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    source = _esxi(tmp_path, "twice")
    drop(source, daemon.drop_dir, LONG_UTF8)
    daemon.wait_for_state(LONG_UTF8, "registered")
    drop(source, daemon.drop_dir, LONG_UTF8)
    wait_for(lambda: [j for j in daemon.jobs() if j["state"] == "duplicate"
                      and Path(j["iso_path"]).parent.name == "done"], 30, "the duplicate to reach done/")
    names = sorted(os.listdir(daemon.drop_dir / "done"))
    isos = [n for n in names if n.endswith(".iso")]
    assert len(isos) == 2 and all(_bytes(n) + len(REASON_SUFFIX) <= NAME_MAX for n in isos)
    for iso in isos:
        assert iso.encode("utf-8").decode("utf-8") == iso  # whole characters only
        assert f"{iso}{REASON_SUFFIX}" in names
    assert len(daemon.jobs()) == 2


def test_a_move_that_cannot_happen_is_logged_once_and_changes_no_job(tmp_path, simulator, daemon_factory):
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    for outcome in ("done", "rejected"):  # files where the folders should be: no move can happen
        (daemon.drop_dir / outcome).write_text("not a folder\n")
    good = drop(_esxi(tmp_path, "stuck"), daemon.drop_dir, "stuck.iso")
    junk = daemon.drop_dir / "notes.iso"
    junk.write_text("not an ISO\n")
    wait_for(lambda: {j["state"] for j in daemon.jobs()} == {"registered", "rejected"}, 60,
             "one registered and one rejected job")
    time.sleep(6)  # several settle periods (1 s) and drop-dir rescans
    jobs = daemon.jobs()
    assert sorted(j["state"] for j in jobs) == ["registered", "rejected"]
    assert good.exists() and junk.exists()
    events = daemon.log_events()
    failed_moves = [e for e in events if e.get("event") == "iso.move_failed"]
    assert sorted(e["job"] for e in failed_moves) == sorted(j["id"] for j in jobs)
    assert not [e for e in events if e.get("event") in ("job.internal_error", "intake.crashed")]
    assert not [e for e in events if "exception" in e]

    # Once the folders can be made, the next start moves both where they belong.
    daemon.stop()
    for outcome in ("done", "rejected"):
        (daemon.drop_dir / outcome).unlink()
    restarted = daemon_factory(config)
    wait_for(lambda: (restarted.drop_dir / "done" / "stuck.iso").exists()
             and (restarted.drop_dir / "rejected" / "notes.iso").exists(), 30, "the moves to happen")
    assert sorted(j["state"] for j in restarted.jobs()) == ["registered", "rejected"]
    assert Path(restarted.job_for("stuck.iso")["iso_path"]) == restarted.drop_dir / "done" / "stuck.iso"
