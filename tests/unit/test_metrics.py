"""The metrics textfile: figures read from a real job store, rendered, parsed by Prometheus's parser."""

from __future__ import annotations

import os
import stat

from prometheus_client.parser import text_string_to_metric_families

from esxi_watcher import __version__
from esxi_watcher.metrics import Figures, TargetFigures, figures, render, write_textfile
from esxi_watcher.store import JobStore, State, Target


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _store(tmp_path) -> JobStore:
    store = JobStore(tmp_path / "jobs.sqlite3")
    image = tmp_path / "1.dd.gz"
    image.write_bytes(b"x" * 1000)
    old = store.add(state=State.REGISTERED, iso="a.iso", iso_path="/d/done/a.iso", sha256="1" * 64,
                    artifact=str(image), provenance={"durations": {"build": 1500.5}})
    store.add_registration(old.id, "site-a", "esxi/8.0.2-1")
    store.update_registration(old.id, "site-a", state=Target.REGISTERED, attempts=3)
    store.add_registration(old.id, "site-b", "esxi/8.0.2-1")
    store.update_registration(old.id, "site-b", state=Target.FAILED, attempts=1, error="refused")
    new = store.add(state=State.REGISTERED, iso="b.iso", iso_path="/d/done/b.iso", sha256="2" * 64,
                    provenance={"durations": {"build": 600}, "artifact": {"size": 4096, "sha256": "f" * 64}})
    store.add_registration(new.id, "site-a", "esxi/8.0.3-2")
    store.update_registration(new.id, "site-a", state=Target.REGISTERED, attempts=1)
    store.add(state=State.QUEUED, iso="c.iso", iso_path="/d/c.iso", sha256="3" * 64)
    return store


def test_the_textfile_parses_and_holds_the_store_s_figures(tmp_path):
    store = _store(tmp_path)
    text = render(figures(store, ["site-a", "site-b", "site-c"]))
    samples = _samples(text)
    assert samples[("esxi_watcher_up", ())] == 1
    assert samples[("esxi_watcher_info", (("version", __version__),))] == 1
    assert samples[("esxi_watcher_jobs", (("state", "registered"),))] == 2
    assert samples[("esxi_watcher_jobs", (("state", "queued"),))] == 1
    assert samples[("esxi_watcher_jobs", (("state", "duplicate"),))] == 0  # every state, zeros too
    assert samples[("esxi_watcher_registration_failures", (("target", "site-b"),))] == 1
    assert samples[("esxi_watcher_registration_failures", (("target", "site-c"),))] == 0
    assert samples[("esxi_watcher_registration_attempts_total", (("target", "site-a"),))] == 4
    # provenance's size when recorded, else the kept image's
    assert samples[("esxi_watcher_uploaded_bytes_total", (("target", "site-a"),))] == 4096 + 1000
    assert samples[("esxi_watcher_uploaded_bytes_total", (("target", "site-b"),))] == 0
    assert samples[("esxi_watcher_last_build_duration_seconds", ())] == 600  # the newest job's
    newest = max(record.updated for record in store.registrations() if record.state is Target.REGISTERED)
    assert samples[("esxi_watcher_registration_last_success_timestamp_seconds", (("target", "site-a"),))] == newest
    assert ("esxi_watcher_registration_last_success_timestamp_seconds", (("target", "site-b"),)) not in samples
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["esxi_watcher_uploaded_bytes"] == "counter" and types["esxi_watcher_jobs"] == "gauge"
    assert all(f"# HELP {name}" in text for name in ("esxi_watcher_jobs", "esxi_watcher_up"))


def test_without_provenance_there_is_no_build_duration_and_labels_are_escaped():
    text = render(Figures(jobs={}, targets=[TargetFigures('a "b"\\c')], up=False))
    samples = _samples(text)
    assert "esxi_watcher_last_build_duration_seconds" not in text
    assert samples[("esxi_watcher_up", ())] == 0
    assert samples[("esxi_watcher_registration_failures", (("target", 'a "b"\\c'),))] == 0


def test_the_file_is_replaced_whole_and_readable_by_node_exporter(tmp_path):
    path = tmp_path / "esxi-watcher.prom"
    path.write_text("old\n")
    inode = path.stat().st_ino
    write_textfile(path, "esxi_watcher_up 1\n")
    assert path.read_text() == "esxi_watcher_up 1\n"
    assert path.stat().st_ino != inode  # renamed over, never rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == [path.name]  # no temp file left


def test_an_image_retention_removed_still_counts_as_uploaded(tmp_path):
    store = _store(tmp_path)
    before = _samples(render(figures(store, ["site-a"])))
    old = store.jobs()[0]
    store.update_registration(old.id, "site-a", state=Target.REMOVED, removed=1.0, removal="deleted resource 1")
    after = _samples(render(figures(store, ["site-a"])))
    key = ("esxi_watcher_uploaded_bytes_total", (("target", "site-a"),))
    assert after[key] == before[key] == 4096 + 1000  # a counter never goes down when MAAS is tidied
