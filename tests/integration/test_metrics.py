"""The metrics textfile written by a real daemon, parsed by Prometheus's own parser."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso


def _samples(path) -> dict[tuple[str, tuple], float]:
    text = path.read_text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_after_a_registration_the_textfile_holds_it(tmp_path, simulator, daemon_factory):
    textfile = tmp_path / "textfile" / "esxi-watcher.prom"
    textfile.parent.mkdir()
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, metrics__textfile=str(textfile)))
    wait_for(textfile.exists, 30, "the textfile written at start")
    assert _samples(textfile)[("esxi_watcher_jobs", (("state", "registered"),))] == 0
    iso = make_esxi_iso(tmp_path / "a.iso", payload_size=1 << 16)
    drop(iso, daemon.drop_dir)
    job = daemon.wait_for_state("a.iso", "registered")
    record = job["registrations"][0]
    image_size = os.stat(job["artifact"]).st_size

    def written():
        samples = _samples(textfile)
        return samples if samples.get(("esxi_watcher_jobs", (("state", "registered"),))) == 1 else None
    samples = wait_for(written, 30, "the textfile to show the registration")
    assert samples[("esxi_watcher_registration_last_success_timestamp_seconds", (("target", "default"),))] == \
        record["updated"]
    assert samples[("esxi_watcher_uploaded_bytes_total", (("target", "default"),))] == image_size
    assert samples[("esxi_watcher_registration_failures", (("target", "default"),))] == 0
    assert samples[("esxi_watcher_registration_attempts_total", (("target", "default"),))] == 1
    assert samples[("esxi_watcher_up", ())] == 1
    assert os.listdir(textfile.parent) == [textfile.name]  # no temp files left
    daemon.stop()
    assert _samples(textfile)[("esxi_watcher_up", ())] == 0


def test_a_missing_metrics_folder_is_one_warning_and_the_daemon_goes_on(tmp_path, simulator, daemon_factory):
    textfile = tmp_path / "no-such-folder" / "esxi-watcher.prom"
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, metrics__textfile=str(textfile)))
    iso = make_esxi_iso(tmp_path / "a.iso", payload_size=1 << 16)
    drop(iso, daemon.drop_dir)
    daemon.wait_for_state("a.iso", "registered")
    warnings = [e for e in daemon.log_events() if e.get("event") == "metrics.not_written"]
    assert len(warnings) == 1 and warnings[0]["reason"] == "No such file or directory"
    assert not textfile.parent.exists()
