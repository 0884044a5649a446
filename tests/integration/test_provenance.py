"""Provenance: each job records what built its image (`esxi-watcher show`); the same ISO dropped again
is a duplicate while the template and kickstart are unchanged and is built again once they changed;
`esxi-watcher rebuild` builds a registered image again with today's template."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from esxi_watcher import provenance
from tests.harness import drop, wait_for, write_config
from tests.isogen import make_esxi_iso
from tests.paths import TEMPLATES
from tests.unit.test_same_version import NAME


def _git(folder: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *arguments], check=True, capture_output=True,
                          text=True).stdout.strip()


def _checkout(tmp_path: Path, *, git: bool = True) -> Path:
    """A packer-maas-like checkout of our test template (a copy: the tree's own is never edited)."""
    checkout = tmp_path / "packer-maas"
    shutil.copytree(TEMPLATES / "file-builder", checkout, symlinks=True)
    if git:
        _git(checkout, "init", "-q")
        _git(checkout, "add", "-A")
        _git(checkout, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "template")
    return checkout


def _site_on_checkout(tmp_path, simulator, daemon_factory, iso_name: str):
    """A git checkout of the test template, an ESXi ISO to drop, and a daemon building from the checkout."""
    checkout = _checkout(tmp_path)
    (tmp_path / "src").mkdir()
    iso = make_esxi_iso(tmp_path / "src" / iso_name)
    config = write_config(tmp_path / "site", simulator, build__template_dir=str(checkout / "vmware-esxi"))
    daemon = daemon_factory(config)
    return checkout, iso, daemon


def _change_the_template(checkout: Path) -> None:
    """An admin's edit of the template's script: the image it makes differs too."""
    with open(checkout / "scripts" / "shape-disk", "a") as script:
        script.write('echo "recipe=changed" >> "$disk"\n')


def _show(daemon, job_id: int) -> dict:
    result = daemon.cli("show", str(job_id), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _job(daemon, job_id: int) -> dict | None:
    return next((job for job in daemon.jobs() if job["id"] == job_id), None)


def _wait_for_job(daemon, job_id: int, state: str, timeout: float = 60) -> dict:
    try:
        return wait_for(lambda: (_job(daemon, job_id) or {}).get("state") == state and _job(daemon, job_id),
                        timeout, f"job {job_id} to be {state}")
    except AssertionError:
        raise AssertionError(f"{_job(daemon, job_id)}\n{daemon.log_tail()}") from None


def _sets(simulator, name: str) -> dict:
    [resource] = [r for r in simulator.resources() if r["name"] == name]
    return resource


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_full_provenance(shown: dict, iso: Path, simulator) -> None:
    record = shown["provenance"]
    assert shown["sha256"] == record["iso"]["sha256"] == _sha256(iso.read_bytes())
    assert record["iso"]["size"] == iso.stat().st_size
    assert record["esxi"]["version"] == "8.0.2" and record["esxi"]["build"] == 22380479
    assert record["template"]["fingerprint"] == shown["fingerprint"] and len(shown["fingerprint"]) == 64
    assert record["packer_version"] == "1.6.6"
    assert record["commands"] and record["commands"][0][:2] == ["packer", "build"]
    assert record["kickstart"] == {"file": None, "root_password": "template default"}
    durations = record["durations"]
    assert {"queued", "build", "register:default", "build:post-processing"} <= set(durations)
    assert sum(value for key, value in durations.items() if key.startswith("build:")) == pytest.approx(
        durations["build"], abs=0.01)
    assert all(isinstance(value, (int, float)) and value >= 0 for value in durations.values())
    [registration] = shown["registrations"]
    resource = _sets(simulator, registration["resource"])
    assert registration["state"] == "registered" and registration["resource_id"] == resource["id"]
    held = resource["sets"][registration["set_version"]]["files"]
    assert [f["sha256"] for f in held.values()] == [record["artifact"]["sha256"]]
    assert record["artifact"]["size"] == resource["sets"][registration["set_version"]]["size"]


def test_same_iso_changed_template_is_built_again_unchanged_is_a_duplicate(tmp_path, simulator, daemon_factory):
    checkout, iso, daemon = _site_on_checkout(tmp_path, simulator, daemon_factory,
                                              "VMware-VMvisor-Installer-8.0U2-22380479.x86_64.iso")

    drop(iso, daemon.drop_dir)
    first = daemon.wait_for_state(iso.name, "registered")
    assert first["resource"] == NAME
    shown_first = _show(daemon, first["id"])
    _assert_full_provenance(shown_first, iso, simulator)
    assert shown_first["provenance"]["artifact"]["sha256"] == _sha256(simulator.file_bytes(NAME))
    template = shown_first["provenance"]["template"]
    assert template["git_commit"] == _git(checkout, "rev-parse", "HEAD") and template["git_dirty"] is False
    first_set = shown_first["registrations"][0]["set_version"]
    first_bytes = simulator.file_bytes(NAME)

    drop(iso, daemon.drop_dir, "again.iso")
    duplicate = daemon.wait_for_state("again.iso", "duplicate")
    assert duplicate["duplicate_of"] == first["id"]
    assert "same template and kickstart" in duplicate["error"]
    assert _show(daemon, duplicate["id"])["fingerprint"] == shown_first["fingerprint"]

    _change_the_template(checkout)
    drop(iso, daemon.drop_dir, "after the change.iso")
    third = daemon.wait_for_state("after the change.iso", "registered")
    assert third["id"] not in (first["id"], duplicate["id"]) and third["resource"] == NAME  # not tagged "other bytes"
    shown_third = _show(daemon, third["id"])
    _assert_full_provenance(shown_third, iso, simulator)
    assert shown_third["fingerprint"] != shown_first["fingerprint"]
    assert shown_third["provenance"]["template"]["git_dirty"] is True
    assert shown_third["provenance"]["template"]["git_commit"] == template["git_commit"]
    assert shown_third["provenance"]["artifact"]["sha256"] == _sha256(simulator.file_bytes(NAME))
    assert simulator.file_bytes(NAME) != first_bytes

    resource = _sets(simulator, NAME)  # a second set on the same resource, the first one intact
    assert len(resource["sets"]) == 2 and first_set in resource["sets"]
    assert [f["sha256"] for f in resource["sets"][first_set]["files"].values()] == [
        shown_first["provenance"]["artifact"]["sha256"]]
    assert _show(daemon, first["id"])["registrations"] == shown_first["registrations"]  # as it was
    assert shown_third["registrations"][0]["resource_id"] == shown_first["registrations"][0]["resource_id"]
    assert shown_third["registrations"][0]["set_version"] != first_set

    for name in (iso.name, "again.iso", "after the change.iso"):  # every dropped file kept, in done/
        assert (daemon.drop_dir / "done" / name).is_file()
    text = daemon.cli("show", str(third["id"]))
    assert text.returncode == 0 and shown_third["fingerprint"] in text.stdout and "packer:" in text.stdout
    assert f"esxi-watcher show {third['id']}" in " ".join(n["message"] for n in simulator.notifications())


def test_rebuild_refused_while_unchanged_accepted_after_a_change(tmp_path, simulator, daemon_factory):
    checkout, iso, daemon = _site_on_checkout(tmp_path, simulator, daemon_factory, "esxi.iso")
    drop(iso, daemon.drop_dir)
    first = daemon.wait_for_state(iso.name, "registered")

    refused = daemon.cli("rebuild", str(first["id"]))
    assert refused.returncode == 2 and "nothing to rebuild" in refused.stderr
    assert "current template and kickstart" in refused.stderr and len(daemon.jobs()) == 1

    _change_the_template(checkout)
    accepted = daemon.cli("rebuild", str(first["id"]))
    assert accepted.returncode == 0, accepted.stderr
    new_id = int(accepted.stdout.split()[1])
    rebuilt = _wait_for_job(daemon, new_id, "registered")
    assert rebuilt["resource"] == NAME and rebuilt["iso_path"] == str(daemon.drop_dir / "done" / iso.name)
    assert (daemon.drop_dir / "done" / iso.name).is_file()
    shown = _show(daemon, new_id)
    _assert_full_provenance(shown, iso, simulator)
    assert shown["provenance"]["rebuild_of"] == first["id"]
    assert shown["fingerprint"] != _show(daemon, first["id"])["fingerprint"]
    assert len(_sets(simulator, NAME)["sets"]) == 2
    assert _job(daemon, first["id"])["state"] == "registered"

    again = daemon.cli("rebuild", str(first["id"]))  # job 2 holds today's recipe already
    assert again.returncode == 2 and "nothing to rebuild" in again.stderr
    assert daemon.cli("rebuild", str(new_id)).returncode == 2

    os.rename(daemon.drop_dir / "done" / iso.name, tmp_path / "taken away.iso")
    (checkout / "vmware-esxi" / "README").write_text("another change\n")
    gone = daemon.cli("rebuild", str(first["id"]))
    assert gone.returncode == 2 and "is gone" in gone.stderr and len(daemon.jobs()) == 2
    assert daemon.cli("rebuild", "999").returncode == 2


def test_a_duplicate_or_unfinished_job_is_not_rebuilt(tmp_path, simulator, daemon_factory):
    (tmp_path / "src").mkdir()
    iso = make_esxi_iso(tmp_path / "src" / "esxi.iso")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator))
    drop(iso, daemon.drop_dir)
    daemon.wait_for_state(iso.name, "registered")
    drop(iso, daemon.drop_dir, "copy.iso")
    duplicate = daemon.wait_for_state("copy.iso", "duplicate")
    result = daemon.cli("rebuild", str(duplicate["id"]))
    assert result.returncode == 2 and "only a registered job" in result.stderr
    shown = daemon.cli("show", str(duplicate["id"]))
    assert shown.returncode == 0 and "same template and kickstart" in shown.stdout


def test_template_source_when_the_service_user_does_not_own_the_checkout(tmp_path):
    checkout = _checkout(tmp_path)
    head = _git(checkout, "rev-parse", "HEAD")
    assert provenance.template_source(checkout / "vmware-esxi") == {"git_commit": head, "git_dirty": False}
    subprocess.run(["chown", "-R", "nobody", str(checkout)], check=True)  # "dubious ownership" for root
    assert provenance.template_source(checkout / "vmware-esxi") == {"git_commit": head, "git_dirty": False}
    (checkout / "vmware-esxi" / "KS.CFG").write_text("rootpw changed\n")
    assert provenance.template_source(checkout / "vmware-esxi") == {"git_commit": head, "git_dirty": True}


def test_a_change_elsewhere_in_the_checkout_is_not_the_template_s(tmp_path):
    checkout = _checkout(tmp_path)
    (checkout / "ubuntu").mkdir()
    (checkout / "ubuntu" / "notes").write_text("another template's work\n")
    assert provenance.template_source(checkout / "vmware-esxi")["git_dirty"] is False
    (checkout / "vmware-esxi" / "output-qemu").mkdir()  # a build run in the checkout itself
    (checkout / "vmware-esxi" / "output-qemu" / "packer-qemu").write_text("disk")
    (checkout / "vmware-esxi" / "vmware-esxi.dd.gz").write_bytes(b"\x1f\x8b")
    assert provenance.template_source(checkout / "vmware-esxi")["git_dirty"] is False
    with open(checkout / "scripts" / "shape-disk", "a") as script:
        script.write("# local tweak\n")
    assert provenance.template_source(checkout / "vmware-esxi")["git_dirty"] is True


def test_template_source_without_a_checkout_or_without_git(tmp_path, monkeypatch):
    plain = _checkout(tmp_path, git=False)
    assert provenance.template_source(plain / "vmware-esxi") == {"git_commit": None, "git_dirty": None}
    (tmp_path / "other").mkdir()
    checkout = _checkout(tmp_path / "other")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert provenance.template_source(checkout / "vmware-esxi") == {"git_commit": None, "git_dirty": None}
    assert provenance.packer_version() is None
    monkeypatch.undo()
    assert provenance.packer_version() == "1.6.6"


def test_a_failed_rebuild_is_retried_with_its_iso_left_in_done(tmp_path, simulator, daemon_factory):
    checkout, iso, daemon = _site_on_checkout(tmp_path, simulator, daemon_factory, "esxi.iso")
    drop(iso, daemon.drop_dir)
    first = daemon.wait_for_state(iso.name, "registered")
    in_done = daemon.drop_dir / "done" / iso.name
    script = checkout / "scripts" / "shape-disk"
    working = script.read_text()
    script.write_text(working.replace("set -eu\n", 'set -eu\necho "shape-disk: broken by an edit" >&2; exit 3\n'))
    accepted = daemon.cli("rebuild", str(first["id"]))
    assert accepted.returncode == 0, accepted.stderr
    new_id = int(accepted.stdout.split()[1])
    failed = _wait_for_job(daemon, new_id, "failed")
    assert "broken by an edit" in failed["error"] and in_done.is_file()
    assert not (daemon.drop_dir / "failed" / iso.name).exists()

    script.write_text(working + "# fixed\n")
    retried = daemon.cli("retry", str(new_id))
    assert retried.returncode == 0, retried.stderr
    registered = _wait_for_job(daemon, new_id, "registered")
    assert registered["iso_path"] == str(in_done) == _job(daemon, first["id"])["iso_path"] and in_done.is_file()
    assert not any(path.name.endswith(".iso") for path in daemon.drop_dir.iterdir())
    assert not [e for e in daemon.log_events() if e.get("event") == "iso.moved" and e.get("job") == new_id]
    shown = _show(daemon, new_id)
    assert shown["fingerprint"] == provenance.recipe_fingerprint(
        _build_config(checkout), salt=(daemon.state_dir / provenance.SALT_FILE).read_bytes())
    assert len(_sets(simulator, NAME)["sets"]) == 2


def test_a_rebuild_refuses_an_iso_that_changed_in_place(tmp_path, simulator, daemon_factory):
    checkout, iso, daemon = _site_on_checkout(tmp_path, simulator, daemon_factory, "esxi.iso")
    drop(iso, daemon.drop_dir)
    first = daemon.wait_for_state(iso.name, "registered")
    _change_the_template(checkout)
    in_done = daemon.drop_dir / "done" / iso.name
    shutil.copyfile(make_esxi_iso(tmp_path / "src" / "other.iso", salt=b"other bytes"), in_done)
    result = daemon.cli("rebuild", str(first["id"]))
    assert result.returncode == 2 and "changed since job" in result.stderr and len(daemon.jobs()) == 1
    shutil.copyfile(iso, in_done)  # the same bytes put back (a new inode): fine
    result = daemon.cli("rebuild", str(first["id"]))
    assert result.returncode == 0, result.stderr
    _wait_for_job(daemon, int(result.stdout.split()[1]), "registered")


def _build_config(checkout: Path):
    from esxi_watcher.config import BuildConfig

    return BuildConfig(template_dir=checkout / "vmware-esxi", command=None, artifact="vmware-esxi.dd.gz",
                       console_log="serial.log", timeout=60, retries=0)


def test_a_failed_build_dropped_again_after_a_template_fix_is_the_same_job_built_again(tmp_path, simulator,
                                                                                     daemon_factory):
    checkout = _checkout(tmp_path)
    script = checkout / "scripts" / "shape-disk"
    working = script.read_text()
    script.write_text(working.replace("set -eu\n", 'set -eu\necho "shape-disk: template bug" >&2; exit 3\n'))
    (tmp_path / "src").mkdir()
    iso = make_esxi_iso(tmp_path / "src" / "esxi.iso")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator,
                                         build__template_dir=str(checkout / "vmware-esxi")))
    drop(iso, daemon.drop_dir)
    failed = daemon.wait_for_state(iso.name, "failed")
    broken = _show(daemon, failed["id"])["fingerprint"]

    script.write_text(working)  # the admin fixed the template, and moves the ISO back
    os.rename(daemon.drop_dir / "failed" / iso.name, daemon.drop_dir / iso.name)
    again = daemon.wait_for_state(iso.name, "registered")
    assert again["id"] == failed["id"] and len(daemon.jobs()) == 1
    shown = _show(daemon, again["id"])
    assert shown["fingerprint"] != broken and shown["provenance"]["template"]["fingerprint"] == shown["fingerprint"]
    assert not (daemon.drop_dir / "failed" / f"{iso.name}.reason.txt").exists()


def test_show_gives_each_target_its_resource_set_and_registration_time(tmp_path, simulator, daemon_factory):
    from tests.integration.test_targets import _two_targets
    from tests.maas_simulator import MaasSimulator

    (tmp_path / "src").mkdir()
    iso = make_esxi_iso(tmp_path / "src" / "esxi.iso")
    with MaasSimulator(tmp_path / "maas-b", mode="3.5") as site_b:
        daemon = daemon_factory(_two_targets(tmp_path / "site", simulator, site_b))
        drop(iso, daemon.drop_dir)
        job = daemon.wait_for_state(iso.name, "registered")
        shown = _show(daemon, job["id"])
        assert {"register:site-a", "register:site-b"} <= set(shown["provenance"]["durations"])
        by_target = {record["target"]: record for record in shown["registrations"]}
        for name, maas in (("site-a", simulator), ("site-b", site_b)):
            [resource] = [r for r in maas.resources() if r["name"] == NAME]
            assert by_target[name]["resource_id"] == resource["id"]
            assert list(resource["sets"]) == [by_target[name]["set_version"]]
            held = resource["sets"][by_target[name]["set_version"]]["files"]
            assert [f["sha256"] for f in held.values()] == [shown["provenance"]["artifact"]["sha256"]]
        text = daemon.cli("show", str(job["id"])).stdout
        assert "maas site-a:" in text and "maas site-b:" in text and "registering on site-b took:" in text


def test_an_image_built_before_recipes_were_recorded_is_not_built_again_by_itself(tmp_path, simulator,
                                                                                  daemon_factory):
    import sqlite3

    (tmp_path / "src").mkdir()
    iso = make_esxi_iso(tmp_path / "src" / "esxi.iso")
    config = write_config(tmp_path / "site", simulator)
    daemon = daemon_factory(config)
    drop(iso, daemon.drop_dir)
    first = daemon.wait_for_state(iso.name, "registered")
    daemon.stop()
    with sqlite3.connect(daemon.state_dir / "jobs.sqlite3") as connection:  # as an older version left it
        connection.execute("UPDATE jobs SET fingerprint = NULL, provenance = NULL")
    connection.close()

    upgraded = daemon_factory(config)
    drop(iso, upgraded.drop_dir, "again.iso")
    duplicate = upgraded.wait_for_state("again.iso", "duplicate")
    assert duplicate["duplicate_of"] == first["id"]
    assert f"`esxi-watcher rebuild {first['id']}`" in duplicate["error"]
    assert "fingerprint" not in _show(upgraded, first["id"])["provenance"].get("template", {})
    assert upgraded.cli("show", str(first["id"])).returncode == 0

    accepted = upgraded.cli("rebuild", str(first["id"]))
    assert accepted.returncode == 0, accepted.stderr
    rebuilt = _wait_for_job(upgraded, int(accepted.stdout.split()[1]), "registered")
    assert rebuilt["resource"] == NAME


def test_a_changed_kickstart_or_root_password_builds_again_and_the_password_shows_nowhere(tmp_path, simulator,
                                                                                         daemon_factory):
    secret = "Zq7-very-secret-Pa55word!"
    checkout = tmp_path / "packer-maas"  # a template with a kickstart (KS.CFG) to replace
    shutil.copytree(TEMPLATES / "kickstart", checkout, symlinks=True)
    kickstart = tmp_path / "ks.cfg"
    kickstart.write_text((checkout / "vmware-esxi" / "KS.CFG").read_text() + "# ours\n")
    password_file = tmp_path / "root-password"
    password_file.write_text(secret + "\n")
    password_file.chmod(0o600)
    (tmp_path / "src").mkdir()
    iso = make_esxi_iso(tmp_path / "src" / "esxi.iso")
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__kickstart=str(kickstart),
                                         build__root_password_file=str(password_file),
                                         build__template_dir=str(checkout / "vmware-esxi")))
    drop(iso, daemon.drop_dir)
    first = _show(daemon, daemon.wait_for_state(iso.name, "registered")["id"])
    assert first["provenance"]["kickstart"] == {"file": str(kickstart), "root_password": f"from {password_file}"}

    drop(iso, daemon.drop_dir, "same.iso")
    assert daemon.wait_for_state("same.iso", "duplicate")["duplicate_of"] == first["id"]

    kickstart.write_text(kickstart.read_text() + "# ours, changed\n")
    drop(iso, daemon.drop_dir, "new kickstart.iso")
    second = _show(daemon, daemon.wait_for_state("new kickstart.iso", "registered")["id"])

    password_file.write_text("Another-Pa55word-42!\n")
    drop(iso, daemon.drop_dir, "new password.iso")
    third = _show(daemon, daemon.wait_for_state("new password.iso", "registered")["id"])
    assert len({first["fingerprint"], second["fingerprint"], third["fingerprint"]}) == 3

    salt = (daemon.state_dir / provenance.SALT_FILE)
    assert salt.stat().st_mode & 0o777 == 0o600
    everything = [daemon.cli("show", str(job["id"])).stdout + daemon.cli("show", str(job["id"]), "--json").stdout
                  for job in daemon.jobs()]
    everything += [daemon.log_path.read_text(errors="replace"), daemon.cli("status", "--json").stdout]
    everything += [path.read_bytes().decode("latin-1") for path in daemon.state_dir.glob("jobs.sqlite3*")]
    everything += [json.dumps(n) for n in simulator.notifications()]
    fast = [hashlib.sha256(secret.encode()).hexdigest(), hashlib.sha256((secret + "\n").encode()).hexdigest()]
    for text in everything:
        assert secret not in text and "Another-Pa55word" not in text
        assert not any(digest in text or digest[:12] in text for digest in fast)


def test_a_queued_file_copied_over_after_a_template_change_keeps_its_job(tmp_path, simulator, daemon_factory):
    from tests.integration.test_faults import HANGING, wait_until_hanging

    checkout = _checkout(tmp_path, git=False)
    (tmp_path / "src").mkdir()
    busy, waiting = (make_esxi_iso(tmp_path / "src" / f"{name}.iso", salt=name.encode())
                     for name in ("busy", "waiting"))
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, build__command=HANGING,
                                         build__template_dir=str(checkout / "vmware-esxi")))
    drop(busy, daemon.drop_dir)
    wait_until_hanging(daemon, daemon.wait_for_state(busy.name, "building")["id"])
    queued = daemon.wait_for_state(drop(waiting, daemon.drop_dir).name, "queued")
    _change_the_template(checkout)
    subprocess.run(["cp", "--", str(waiting), str(daemon.drop_dir / waiting.name)], check=True)  # same bytes again
    wait_for(lambda: any(e.get("event") == "job.file_moved" and e.get("job") == queued["id"]
                         for e in daemon.log_events()), 30, "the queued job to follow its file")
    assert [job["id"] for job in daemon.jobs() if job["sha256"] == queued["sha256"]] == [queued["id"]]
    assert _job(daemon, queued["id"])["state"] == "queued"


def test_a_rebuild_never_pushes_another_release_out_of_keep(tmp_path, simulator, daemon_factory):
    checkout = _checkout(tmp_path, git=False)
    (tmp_path / "src").mkdir()
    older = make_esxi_iso(tmp_path / "src" / "ESXi-7.0U2.iso", version="7.0U2", build=18426014)
    newer = make_esxi_iso(tmp_path / "src" / "ESXi-7.0U3.iso", version="7.0U3", build=19482537)
    daemon = daemon_factory(write_config(tmp_path / "site", simulator, maas__keep=2,
                                         build__template_dir=str(checkout / "vmware-esxi")))
    for iso in (older, newer):
        drop(iso, daemon.drop_dir)
        daemon.wait_for_state(iso.name, "registered")
    newer_job = daemon.job_for(newer.name)
    _change_the_template(checkout)
    accepted = daemon.cli("rebuild", str(newer_job["id"]))
    assert accepted.returncode == 0, accepted.stderr
    rebuilt_id = int(accepted.stdout.split()[1])
    _wait_for_job(daemon, rebuilt_id, "registered")

    def pass_after_the_rebuild() -> bool:
        events = daemon.log_events()
        done = [i for i, e in enumerate(events) if e.get("event") == "register.done" and e.get("job") == rebuilt_id]
        return bool(done) and any(e.get("event") == "retention.pass" for e in events[done[0]:])
    wait_for(pass_after_the_rebuild, 30, "a retention pass after the rebuild registered")
    names = {resource["name"] for resource in simulator.resources()}
    assert {"esxi/7.0.2-18426014", "esxi/7.0.3-19482537"} <= names
    assert [r["state"] for r in daemon.job_for(older.name)["registrations"]] == ["registered"]
    assert not [e for e in daemon.log_events() if e.get("event") == "retention.deleted"]
