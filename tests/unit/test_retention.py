"""Retention's choices: release lines, newness, what may be deleted from MAAS and why not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from esxi_watcher.retention import (Image, deployed_at, deployed_recently, holds_complete, judge, line_label,
                                    missing_sets, plan, release_line, removal_text)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
DAY = 86400.0


def image(job: int, version: str = "7.0.3", build: int = 19482537, vendor: str | None = None,
          level: str | None = None, resource_id: int | None = None, set_version: str = "20261201") -> Image:
    major, minor = (int(part) for part in version.split(".")[:2])
    suffix = f"-{vendor.lower()}" if vendor else ""
    facts = {"esxi": True, "version": version, "major": major, "minor": minor, "build": build, "vendor": vendor,
             "level": level}
    return Image(job=job, resource=f"esxi/{version}-{build}{suffix}", resource_id=resource_id or job,
                 set_version=set_version, facts=facts)


def resource_of(*images: Image, last_deployed=None, extra_sets: dict | None = None) -> dict:
    sets = {i.set_version: {"complete": True, "files": {}} for i in images}
    sets.update(extra_sets or {})
    return {"id": images[0].resource_id, "name": images[0].resource, "type": "Uploaded",
            "last_deployed": last_deployed, "sets": sets}


# ----- lines and newness ----------------------------------------------------------------------

def test_a_line_is_major_minor_and_vendor():
    assert release_line(image(1).facts) == (7, 0, "")
    assert release_line(image(1, vendor="Dell").facts) == (7, 0, "Dell")
    assert line_label((8, 0, "Dell")) == "ESXi 8.0 (Dell)"
    assert line_label((7, 0, "")) == "ESXi 7.0"


def test_keep_one_keeps_the_newest_build_of_each_line():
    images = [image(1, build=100), image(2, build=200), image(3, "8.0.2", 300), image(4, vendor="Dell", build=50)]
    plans = {p.line: p for p in plan(images, keep=1)}
    assert [i.job for i in plans[(7, 0, "")].kept] == [2]
    assert [i.job for i in plans[(7, 0, "")].older] == [1]
    assert plans[(8, 0, "")].older == [] and plans[(7, 0, "Dell")].older == []


def test_newness_is_version_then_build_then_job_not_drop_order():
    images = [image(1, "7.0.3", 300), image(2, "7.0.2", 900), image(3, "7.0.3", 300)]
    [line] = plan(images, keep=2)
    assert [i.job for i in line.kept] == [3, 1]
    assert [i.job for i in line.older] == [2]


def test_esxi_9_levels_order_patches():
    images = [image(1, "9.0.0", 100, level="0100"), image(2, "9.0.0", 100, level="0")]
    [line] = plan(images, keep=1)
    assert [i.job for i in line.kept] == [1]


def test_keep_larger_than_the_line_deletes_nothing():
    assert all(not p.older for p in plan([image(1), image(2, build=2)], keep=5))


# ----- last_deployed ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["2026-11-30T12:00:00Z", "2026-11-30T12:00:00.123Z", "2026-11-30T12:00:00",
                                  "2026-11-30T13:00:00+01:00", "2026-11-30 12:00:00"])
def test_last_deployed_is_read_in_every_form_maas_writes(text):
    assert deployed_at(text).replace(microsecond=0) == NOW - timedelta(days=1)


def test_deployed_within_the_window_keeps_and_says_when():
    resource = {"last_deployed": "2026-11-30T12:00:00.000Z"}
    reason = deployed_recently(resource, NOW, 30 * DAY)
    assert reason == ("MAAS reports it deployed at 2026-11-30 12:00 UTC, within keep_deployed_within (30d)")
    assert deployed_recently(resource, NOW, 0.5 * DAY) is None
    assert deployed_recently({"last_deployed": None}, NOW, 30 * DAY) is None
    assert deployed_recently({}, NOW, 30 * DAY) is None  # MAAS before 3.4 says nothing


def test_an_unreadable_last_deployed_keeps_the_image():
    assert "cannot read" in deployed_recently({"last_deployed": "yesterday"}, NOW, DAY)


# ----- judging one resource -------------------------------------------------------------------------

def test_a_resource_we_created_holding_only_due_sets_is_deleted():
    old = image(1)
    assert judge(resource_of(old), 1, [old], created=True, now=NOW, window=30 * DAY).action == "delete"


def test_a_resource_we_did_not_create_is_never_deleted():
    old = image(1)
    verdict = judge(resource_of(old), 1, [old], created=False, now=NOW, window=30 * DAY)
    assert verdict.action == "kept" and "not created by esxi-watcher" in verdict.reason


def test_a_recently_deployed_resource_is_kept_and_deleted_once_the_mark_is_old():
    old = image(1)
    recent = resource_of(old, last_deployed="2026-11-25T08:00:00.000Z")
    assert judge(recent, 1, [old], created=True, now=NOW, window=30 * DAY).action == "kept"
    assert judge(recent, 1, [old], created=True, now=NOW + timedelta(days=30), window=30 * DAY).action == "delete"


def test_a_resource_holding_a_kept_set_is_not_deleted():
    """Old sets under one name: MAAS has no API to delete one set, so the resource stays while
    the newest (kept) image is one of its sets."""
    old, new = image(1, set_version="20261101"), image(2, set_version="20261201")
    new = Image(job=2, resource=old.resource, resource_id=1, set_version=new.set_version, facts=new.facts)
    verdict = judge(resource_of(old, new), 1, [old], created=True, now=NOW, window=30 * DAY)
    assert verdict.action == "kept" and "no API to delete one set" in verdict.reason


def test_an_abandoned_older_incomplete_set_does_not_block_but_an_upload_under_way_does():
    old = image(1, set_version="20261201")
    abandoned = {"20261101": {"complete": False, "files": {}}}
    assert judge(resource_of(old, extra_sets=abandoned), 1, [old], True, NOW, DAY).action == "delete"
    under_way = {"20261202": {"complete": False, "files": {}}}
    assert judge(resource_of(old, extra_sets=under_way), 1, [old], True, NOW, DAY).action == "kept"


def test_a_resource_already_gone_or_renamed_is_gone():
    old = image(1)
    assert judge(None, 1, [old], True, NOW, DAY).action == "gone"
    other = dict(resource_of(old), name="esxi/something-else")
    assert judge(other, 1, [old], True, NOW, DAY).action == "gone"
    assert missing_sets(resource_of(image(1, set_version="x")), [old]) == [old]


def test_the_removal_text_names_what_went_and_what_stays():
    old, new = image(1, build=19482537, resource_id=12, set_version="20260101"), image(2, build=21424296)
    [line] = plan([old, new], keep=1)
    assert removal_text(old, 12, line, 1, "site-a") == (
        "deleted resource 12 (esxi/7.0.3-19482537 set 20260101): keep 1 of ESXi 7.0 on site-a, "
        "newer: esxi/7.0.3-21424296")


def test_the_newest_counts_as_complete_only_if_maas_holds_its_set_complete():
    new = image(2, set_version="20261201")
    assert holds_complete(resource_of(new), new)
    assert not holds_complete(None, new)  # deleted by hand: nothing older may go
    assert not holds_complete(resource_of(new, extra_sets={"20261201": {"complete": False}}), new)
    assert not holds_complete(dict(resource_of(new), name="esxi/other"), new)


def test_an_iso_built_again_into_the_same_resource_counts_once():
    """A rebuild (or the same ISO after a template change) is a new set of the same MAAS resource: it
    must not push another release out of `keep`, and its older set goes with the resource."""
    u1 = image(1, "8.0.1", 100, resource_id=10)
    u2, u2_rebuilt = image(2, "8.0.2", 200, resource_id=20), image(3, "8.0.2", 200, resource_id=20, set_version="b")
    [line] = plan([u1, u2, u2_rebuilt], keep=2)
    assert [i.job for i in line.kept] == [3, 2, 1] and line.older == []
    [line] = plan([u1, u2, u2_rebuilt], keep=1)
    assert [i.job for i in line.kept] == [3, 2] and [i.job for i in line.older] == [1]
    assert removal_text(u1, 10, line, 1, "site-a").endswith("newer: esxi/8.0.2-200")
    [line] = plan([u1, u2, image(4, "8.0.1", 100, resource_id=10, set_version="c")], keep=1)
    assert [i.job for i in line.older] == [4, 1]  # the whole older resource, every job's set in it
    assert judge(resource_of(u1, image(4, "8.0.1", 100, resource_id=10, set_version="c")), 10, line.older, True,
                 NOW, DAY).action == "delete"
