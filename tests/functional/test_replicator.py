"""The replicator's Global Tables behaviours, one at a time, on two moto regions.

Last-writer-wins by the original write's stamp whatever the order of arrival; no
echo of a replicated write; TTL deletes shipped as deletes of that version only;
a partition queues and a heal delivers; a replicator that crashes with shipments
queued delivers them after it comes back.
"""

from __future__ import annotations

from typing import Any

import pytest

from replication.replicator import Lag, is_ttl_delete
from replication.simulation import World

EAST, WEST = "us-east-1", "eu-west-1"
_worlds = iter(range(10**6))


@pytest.fixture
def world(moto_dynamodb: Any, tmp_path, monkeypatch) -> Any:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    created = World([EAST, WEST], f"rep{next(_worlds)}", tmp_path, seed=3, lag=Lag(100, 0))
    yield created
    for client, table in created.table_names():
        client.delete_table(TableName=table)


def put_record(world: World, region: str, key: str, value: str) -> None:
    """A write to the replicated idempotency table through the region's own (stamping) client."""
    world.regions[region].root.dynamodb.put_item(
        TableName=world.regions[region].root.settings.tables.idempotency,
        Item={"idempotency_id": {"S": key}, "value": {"S": value}},
    )


def value_in(world: World, region: str, key: str) -> str | None:
    item = world.items(region, "idempotency").get(key)
    return item["value"]["S"] if item else None


def test_concurrent_writes_to_one_item_end_as_the_later_one_in_every_region(world):
    put_record(world, EAST, "k", "east")  # older stamp
    put_record(world, WEST, "k", "west")  # newer stamp
    world.replicator.capture()
    world.advance(1)

    world.replicator.deliver()

    assert value_in(world, EAST, "k") == value_in(world, WEST, "k") == "west"


def test_a_replicated_write_is_not_shipped_back(world):
    put_record(world, EAST, "k", "east")
    world.replicator.capture()
    world.advance(1)
    world.replicator.deliver()

    world.replicator.capture(WEST)  # WEST's stream now holds the replicated write

    assert world.queue.pending() == {}


def test_a_partition_queues_and_a_heal_delivers(world):
    world.replicator.partition(EAST, WEST)
    put_record(world, EAST, "k", "east")
    world.replicator.capture()
    world.advance(10)
    world.replicator.deliver()
    assert value_in(world, WEST, "k") is None and world.queue.pending() == {(EAST, WEST): 1}

    world.replicator.heal()
    world.replicator.deliver()

    assert value_in(world, WEST, "k") == "east"


def test_a_replicator_that_crashes_with_shipments_queued_delivers_them_when_back(world):
    put_record(world, EAST, "k", "east")
    world.replicator.capture()
    world.crash_replicator()
    world.advance(1)

    world.replicator.deliver()
    world.replicator.capture()  # resumes after its checkpoint: nothing captured twice

    assert value_in(world, WEST, "k") == "east"
    assert world.queue.pending() == {}


def _ttl_record(world: World, region: str, key: str) -> dict[str, Any]:
    item = world.items(region, "idempotency")[key]
    return {
        "eventName": "REMOVE",
        "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
        "dynamodb": {"Keys": {"idempotency_id": {"S": key}}, "OldImage": item, "SequenceNumber": "1"},
    }


def test_a_ttl_delete_is_shipped_as_a_delete_of_that_version_only(world):
    put_record(world, EAST, "gone", "v1")
    put_record(world, EAST, "kept", "v1")
    world.settle()
    expired_gone = _ttl_record(world, EAST, "gone")
    expired_kept = _ttl_record(world, EAST, "kept")
    put_record(world, WEST, "kept", "v2")  # a newer version, written after the one that expired
    world.settle()
    assert is_ttl_delete(expired_gone) and not is_ttl_delete({**expired_gone, "userIdentity": None})

    world.replicator._capture_handler(EAST, "idempotency")({"Records": [expired_gone, expired_kept]}, None)
    world.advance(1)
    world.replicator.deliver()

    assert value_in(world, WEST, "gone") is None
    assert value_in(world, WEST, "kept") == "v2"
