"""`esxi-watcher rebuild JOB`: which jobs can be rebuilt, and where their ISO must be."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from esxi_watcher import provenance
from esxi_watcher.config import parse_config
from esxi_watcher.errors import NotRebuildable
from esxi_watcher.rebuild import rebuild_job
from esxi_watcher.store import JobStore, State, Step
from esxi_watcher.watch import file_identity
from tests.paths import TEMPLATES

ISO_BYTES = b"an ESXi installer, as far as this test goes\n" * 100


@pytest.fixture
def site(tmp_path):
    shutil.copytree(TEMPLATES / "file-builder", tmp_path / "packer-maas", symlinks=True)
    config = parse_config({"drop_dir": str(tmp_path / "drop"), "state_dir": str(tmp_path / "state"),
                           "build": {"template_dir": str(tmp_path / "packer-maas" / "vmware-esxi")}})
    (tmp_path / "drop" / "done").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    store = JobStore(tmp_path / "state" / "jobs.sqlite3")
    yield config, store
    store.close()


def _registered(config, store, **changes):
    """A job registered with today's recipe, its ISO in done/."""
    iso = config.drop_dir / "done" / "esxi.iso"
    iso.write_bytes(ISO_BYTES)
    values = dict(state=State.REGISTERED, iso="esxi.iso", iso_path=str(iso), file_identity=file_identity(os.lstat(iso)),
                  sha256=hashlib.sha256(ISO_BYTES).hexdigest(), size=len(ISO_BYTES),
                  facts={"version": "8.0.2"}, fingerprint=provenance.fingerprint_for(config))
    return store.add(**{**values, **changes})


def _change_the_template(config) -> None:
    (config.build.template_dir / "README").write_text("an edit\n")


def test_an_unchanged_recipe_is_not_rebuilt(site):
    config, store = site
    job = _registered(config, store)
    with pytest.raises(NotRebuildable, match=r"built with the current template and kickstart .*nothing to rebuild"):
        rebuild_job(store, job, config)
    assert len(store.jobs()) == 1


def test_a_changed_recipe_queues_a_new_job_on_the_same_file(site):
    config, store = site
    job = _registered(config, store)
    _change_the_template(config)
    new = rebuild_job(store, job, config)
    assert new.id != job.id and new.state is State.QUEUED and new.iso_path == job.iso_path
    assert new.file_identity == job.file_identity and new.sha256 == job.sha256
    assert new.fingerprint != job.fingerprint and new.provenance["rebuild_of"] == job.id
    assert new.provenance["template"]["fingerprint"] == new.fingerprint
    with pytest.raises(NotRebuildable, match=f"job {new.id} .*already builds this ISO"):
        rebuild_job(store, job, config)


@pytest.mark.parametrize("state, step", [(State.QUEUED, None), (State.BUILDING, None), (State.BUILT, None),
                                         (State.FAILED, Step.BUILD), (State.DUPLICATE, None),
                                         (State.REJECTED, None)])
def test_only_a_finished_job_with_an_image_is_rebuilt(site, state, step):
    config, store = site
    job = _registered(config, store, state=state, failed_stage=step)
    _change_the_template(config)
    with pytest.raises(NotRebuildable, match="only a registered job, or one that failed to register"):
        rebuild_job(store, job, config)


def test_a_job_that_failed_to_register_is_rebuilt(site):
    config, store = site
    job = _registered(config, store, state=State.FAILED, failed_stage=Step.REGISTER)
    _change_the_template(config)
    assert rebuild_job(store, job, config).state is State.QUEUED


def test_the_iso_renamed_in_done_is_found_by_identity(site):
    config, store = site
    job = _registered(config, store)
    _change_the_template(config)
    renamed = config.drop_dir / "done" / "renamed.iso"
    os.rename(job.iso_path, renamed)
    assert rebuild_job(store, job, config).iso_path == str(renamed)


def test_a_gone_changed_or_dropped_again_iso_is_refused(site):
    config, store = site
    job = _registered(config, store)
    _change_the_template(config)
    os.rename(job.iso_path, config.drop_dir / "esxi.iso")
    with pytest.raises(NotRebuildable, match="is in the drop dir"):
        rebuild_job(store, job, config)
    (config.drop_dir / "esxi.iso").unlink()
    with pytest.raises(NotRebuildable, match="is gone"):
        rebuild_job(store, job, config)
    Path(job.iso_path).write_bytes(ISO_BYTES + b"more")
    with pytest.raises(NotRebuildable, match="changed since job"):
        rebuild_job(store, job, config)
    os.unlink(job.iso_path)
    os.symlink("/etc/passwd", job.iso_path)
    with pytest.raises(NotRebuildable, match="changed since job"):
        rebuild_job(store, job, config)
    assert len(store.jobs()) == 1
