"""The replicator's queue: per item, each source's newest version leaves; no version of another source is dropped with it."""

from __future__ import annotations

from replication.queue import ShipmentQueue

KEY = {"account_id": {"S": "ann"}}


def row(source: str, dest: str, stamp: int, due: float = 0.0) -> tuple:
    image = {**KEY, "available": {"N": str(stamp)}}
    return (source, dest, "accounts", KEY, "put", image, stamp, source, due)


def test_a_newer_version_from_one_region_is_not_dropped_for_an_older_one_from_another_captured_after_it():
    """Three regions: eu-west-1 wrote the newer version (200) but its write was captured first; us-east-1's
    older one (100) after. ap-southeast-1 must receive both (last writer wins there), never only the older."""
    queue = ShipmentQueue()
    queue.put([row("eu-west-1", "ap-southeast-1", 200)])
    queue.put([row("us-east-1", "ap-southeast-1", 100)])

    ready = queue.ready(now=1.0)
    queue.done(ready)

    assert sorted((s.source, s.stamp_time) for s in ready) == [("eu-west-1", 200), ("us-east-1", 100)]
    assert queue.pending() == {}


def test_one_region_s_versions_of_an_item_leave_newest_only_and_the_older_are_forgotten():
    queue = ShipmentQueue()
    queue.put([row("us-east-1", "eu-west-1", 100), row("us-east-1", "eu-west-1", 101)])
    queue.put([row("us-east-1", "eu-west-1", 102, due=5.0)])  # not due yet

    ready = queue.ready(now=1.0)
    queue.done(ready)

    assert [s.stamp_time for s in ready] == [101]
    assert queue.pending() == {("us-east-1", "eu-west-1"): 1}  # the version not yet due stays
    assert [s.stamp_time for s in queue.ready(now=6.0)] == [102]
