"""The local stream poller delivers DynamoDB Stream records like Lambda's event source mapping.

Most tests read a real stream of DynamoDB Local with a small recording handler.
DynamoDB Local keeps one shard per stream and never splits it, so the shard
lineage tests use an in-memory streams client, and the fault tests wrap the
real client to inject throttling, dropped connections and expired iterators.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from runtime.poller import PollerConfig, StreamPoller, stream_arn_of

FAST = PollerConfig(
    batch_size=100,
    batching_window_seconds=0.2,
    max_attempts=3,
    backoff_base_seconds=0.001,
    backoff_cap_seconds=0.01,
    idle_sleep_seconds=0.01,
    shard_refresh_seconds=0.05,
)


# -- helpers ------------------------------------------------------------------


@dataclass
class RecordingHandler:
    """A Lambda-style stream handler that records every batch; `fail` decides what fails."""

    fail: Callable[[int, list[dict[str, Any]]], Any] | None = None
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        records = event["Records"]
        with self.lock:
            self.batches.append(records)
            call = len(self.batches)
        outcome = self.fail(call, records) if self.fail else None
        if isinstance(outcome, Exception):
            raise outcome
        failed = outcome or []
        return {"batchItemFailures": [{"itemIdentifier": seq} for seq in failed]}

    def keys(self, batch: int | None = None) -> list[str]:
        """The `pk` of every delivered record, in delivery order (of one batch if given)."""
        batches = self.batches if batch is None else [self.batches[batch]]
        return [record["dynamodb"]["Keys"]["pk"]["S"] for records in batches for record in records]


def sequence_number_of(records: list[dict[str, Any]], key: str) -> str:
    return next(r["dynamodb"]["SequenceNumber"] for r in records if r["dynamodb"]["Keys"]["pk"]["S"] == key)


def fails(*keys: str, times: int | None = None) -> Callable[[int, list[dict[str, Any]]], list[str]]:
    """Report the records with these keys as failed (in the first `times` calls, or always)."""

    def decide(call: int, records: list[dict[str, Any]]) -> list[str]:
        if times is not None and call > times:
            return []
        return [r["dynamodb"]["SequenceNumber"] for r in records if r["dynamodb"]["Keys"]["pk"]["S"] in keys]

    return decide


@dataclass
class Table:
    name: str
    stream_arn: str
    client: Any

    def put(self, *keys: str, **attributes: Any) -> None:
        for key in keys:
            self.client.put_item(TableName=self.name, Item={"pk": {"S": key}, **attributes})


def keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


@pytest.fixture
def table(dynamodb_local_client: Any) -> Iterator[Table]:
    name = f"poller-{uuid.uuid4().hex[:10]}"
    dynamodb_local_client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    yield Table(name, stream_arn_of(dynamodb_local_client, name), dynamodb_local_client)
    dynamodb_local_client.delete_table(TableName=name)


@pytest.fixture
def streams(dynamodb_local: Any) -> Any:
    return boto3.client(
        "dynamodbstreams",
        endpoint_url=dynamodb_local.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}),
    )


@pytest.fixture
def logs() -> list[str]:
    return []


@pytest.fixture
def make_poller(streams: Any, table: Table, tmp_path: Path, logs: list[str]) -> Callable[..., StreamPoller]:
    def make(
        handler: Any, config: PollerConfig = FAST, client: Any = None, arn: str | None = None
    ) -> StreamPoller:
        return StreamPoller(
            client or streams,
            arn or table.stream_arn,
            handler,
            checkpoint_path=tmp_path / "checkpoints.json",
            dead_letter_path=tmp_path / "dead-letters.jsonl",
            config=config,
            log=logs.append,
        )

    return make


def saved_checkpoint(path: Path, stream_arn: str) -> dict[str, Any]:
    return json.loads(path.read_text())["streams"][stream_arn]["shards"]


# -- delivery -----------------------------------------------------------------


def test_delivers_every_record_once_in_order_when_the_handler_succeeds(table, make_poller) -> None:
    written = keys("k", 10)
    table.put(*written)
    handler = RecordingHandler()
    poller = make_poller(handler, replace(FAST, batch_size=4))

    poller.drain(timeout=10)

    assert handler.keys() == written
    assert [len(batch) for batch in handler.batches] == [4, 4, 2]
    assert poller.stats == {"delivered": 10, "retried": 0, "dead_lettered": 0, "batches": 3}


def test_records_arrive_in_the_shape_lambda_gives_them(table, make_poller) -> None:
    table.put("k00", blob={"B": b"\x00\x01"})
    handler = RecordingHandler()

    make_poller(handler).drain(timeout=10)

    [record] = handler.batches[0]
    assert record["eventSourceARN"] == table.stream_arn
    assert record["awsRegion"] == "us-east-1"
    assert record["eventName"] == "INSERT"
    assert record["eventSource"] == "aws:dynamodb"
    assert record["dynamodb"]["NewImage"]["blob"] == {"B": "AAE="}
    created = record["dynamodb"]["ApproximateCreationDateTime"]
    assert isinstance(created, float)
    assert abs(created - time.time()) < 300
    json.dumps(handler.batches)  # plain JSON, as Lambda delivers it


def test_a_batch_takes_up_to_batch_size_records_with_limited_reads(table, make_poller, streams) -> None:
    table.put(*keys("k", 7))
    limits: list[int] = []

    class CountingStreams:
        meta = streams.meta

        def __getattr__(self, name: str) -> Any:
            return getattr(streams, name)

        def get_records(self, **request: Any) -> Any:
            limits.append(request["Limit"])
            return streams.get_records(**request)

    handler = RecordingHandler()
    poller = make_poller(handler, replace(FAST, batch_size=3), client=CountingStreams())

    poller.drain(timeout=10)

    assert [len(batch) for batch in handler.batches] == [3, 3, 1]
    assert max(limits) == 3


def test_a_partial_failure_redelivers_from_the_lowest_failed_record(table, make_poller, tmp_path) -> None:
    table.put(*keys("k", 6))
    handler = RecordingHandler(fail=fails("k04", "k02", times=1))
    poller = make_poller(handler)

    assert poller.poll_once() == 2
    checkpoint = saved_checkpoint(tmp_path / "checkpoints.json", table.stream_arn)
    [shard] = checkpoint.values()
    assert shard == {"sequence_number": sequence_number_of(handler.batches[0], "k01"), "finished": False}

    poller.drain(timeout=10)

    assert handler.keys(0) == ["k00", "k01", "k02", "k03", "k04", "k05"]
    assert handler.keys(1) == ["k02", "k03", "k04", "k05"]
    assert len(handler.batches) == 2
    assert poller.stats == {"delivered": 6, "retried": 1, "dead_lettered": 0, "batches": 2}


def test_a_record_that_always_fails_is_dead_lettered_and_the_records_after_it_are_delivered(
    table, make_poller, tmp_path, logs
) -> None:
    table.put(*keys("k", 5))
    handler = RecordingHandler(fail=fails("k02"))
    poller = make_poller(handler)

    poller.drain(timeout=10)

    assert handler.keys().count("k02") == FAST.max_attempts
    assert handler.keys()[-2:] == ["k03", "k04"]
    [line] = (tmp_path / "dead-letters.jsonl").read_text().splitlines()
    dead = json.loads(line)
    assert dead["record"]["dynamodb"]["Keys"] == {"pk": {"S": "k02"}}
    assert dead["attempts"] == FAST.max_attempts
    assert dead["shard_id"] and dead["error"] and dead["stream_arn"] == table.stream_arn
    assert len([message for message in logs if "dead-lettered" in message]) == 1
    assert poller.stats["dead_lettered"] == 1
    assert poller.stats["delivered"] == 4


def test_a_raising_handler_gets_the_whole_batch_again(table, make_poller) -> None:
    table.put(*keys("k", 3))

    def raise_twice(call: int, records: list[dict[str, Any]]) -> Any:
        return RuntimeError("projection store unavailable") if call <= 2 else None

    handler = RecordingHandler(fail=raise_twice)
    poller = make_poller(handler)

    poller.drain(timeout=10)

    assert [handler.keys(i) for i in range(3)] == [["k00", "k01", "k02"]] * 3
    assert poller.stats == {"delivered": 3, "retried": 2, "dead_lettered": 0, "batches": 3}


def test_an_invalid_item_identifier_fails_the_whole_batch(table, make_poller) -> None:
    table.put(*keys("k", 2))

    def unknown_identifier(call: int, records: list[dict[str, Any]]) -> Any:
        return ["not-a-sequence-number"] if call == 1 else None

    handler = RecordingHandler(fail=unknown_identifier)

    make_poller(handler).drain(timeout=10)

    assert handler.keys() == ["k00", "k01", "k00", "k01"]


# -- checkpoints --------------------------------------------------------------


def test_a_restart_resumes_from_the_checkpoint_and_delivers_only_new_records(table, make_poller) -> None:
    table.put(*keys("old", 3))
    make_poller(RecordingHandler()).drain(timeout=10)
    table.put(*keys("new", 2))
    handler = RecordingHandler()

    make_poller(handler).drain(timeout=10)

    assert handler.keys() == ["new00", "new01"]


def test_a_checkpoint_of_another_stream_is_ignored(table, make_poller, streams, tmp_path) -> None:
    table.put(*keys("k", 3))
    [shard] = streams.describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["Shards"]
    other_arn = table.stream_arn.rsplit("/stream/", 1)[0] + "/stream/2000-01-01T00:00:00.000"
    other = {"shards": {shard["ShardId"]: {"sequence_number": "9" * 21, "finished": True}}}
    path = tmp_path / "checkpoints.json"
    path.write_text(json.dumps({"version": 1, "streams": {other_arn: other}}))
    handler = RecordingHandler()

    make_poller(handler).drain(timeout=10)

    assert handler.keys() == ["k00", "k01", "k02"]
    assert json.loads(path.read_text())["streams"][other_arn] == other


def test_a_closed_shard_is_finished_after_its_last_record(table, make_poller, tmp_path) -> None:
    table.put(*keys("k", 2))
    table.client.update_table(TableName=table.name, StreamSpecification={"StreamEnabled": False})
    handler = RecordingHandler()
    poller = make_poller(handler)

    poller.drain(timeout=10)

    assert handler.keys() == ["k00", "k01"]
    [shard] = saved_checkpoint(tmp_path / "checkpoints.json", table.stream_arn).values()
    assert shard["finished"] is True
    assert poller.poll_once() == 0


def test_the_stream_arn_is_the_tables_latest_stream(table, dynamodb_local_client) -> None:
    described = dynamodb_local_client.describe_table(TableName=table.name)["Table"]
    assert stream_arn_of(dynamodb_local_client, table.name) == described["LatestStreamArn"]
    table.client.update_table(TableName=table.name, StreamSpecification={"StreamEnabled": False})
    with pytest.raises(ValueError, match="no enabled stream"):
        stream_arn_of(dynamodb_local_client, table.name)


# -- faults -------------------------------------------------------------------


def client_error(code: str, operation: str = "GetRecords") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


class FlakyStreams:
    """The real streams client, but `get_records` first raises the queued errors, one per call."""

    def __init__(self, real: Any, errors: list[Exception], after_calls: int = 0) -> None:
        self._real = real
        self.meta = real.meta
        self.errors = list(errors)
        self.after_calls = after_calls
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_records(self, **request: Any) -> Any:
        self.calls += 1
        if self.calls > self.after_calls and self.errors:
            raise self.errors.pop(0)
        return self._real.get_records(**request)


def test_an_expired_iterator_is_replaced_from_the_checkpoint(table, make_poller, streams) -> None:
    table.put(*keys("k", 3))
    flaky = FlakyStreams(
        streams,
        [client_error("ExpiredIteratorException"), client_error("TrimmedDataAccessException")],
        after_calls=1,
    )
    handler = RecordingHandler()
    poller = make_poller(handler, replace(FAST, batch_size=1), client=flaky)

    poller.drain(timeout=10)

    assert handler.keys() == ["k00", "k01", "k02"]


def test_transient_errors_are_logged_and_retried_without_stopping_the_thread(
    table, make_poller, streams, logs
) -> None:
    table.put(*keys("k", 3))
    flaky = FlakyStreams(
        streams,
        [
            client_error("ProvisionedThroughputExceededException"),
            client_error("ThrottlingException"),
            EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ],
    )
    handler = RecordingHandler()
    thread, stop = make_poller(handler, client=flaky).start_thread()
    try:
        deadline = time.monotonic() + 10
        while len(handler.keys()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5)

    assert handler.keys() == ["k00", "k01", "k02"]
    assert len([message for message in logs if "retrying" in message]) == 3


def test_run_returns_promptly_after_stop_is_set(table, make_poller) -> None:
    slow_idle = replace(FAST, idle_sleep_seconds=30.0, shard_refresh_seconds=30.0)
    handler = RecordingHandler()
    thread, stop = make_poller(handler, slow_idle).start_thread()
    table.put("k00")
    time.sleep(0.3)  # let it settle into its idle wait

    started = time.monotonic()
    stop.set()
    thread.join(5)

    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0


# -- shard lineage (DynamoDB Local never splits a shard) ----------------------------


class FakeStreams:
    """An in-memory DynamoDB Streams API with a given shard layout; lists one shard per page."""

    class meta:  # noqa: N801 - mirrors boto3's client.meta
        region_name = "eu-west-1"

    def __init__(self, shards: dict[str, dict[str, Any]]) -> None:
        # shard id -> {"parent": id or None, "keys": [...], "closed": bool}
        self.shards = shards
        sequence = 0
        self.records: dict[str, list[dict[str, Any]]] = {}
        for shard_id, shard in shards.items():
            self.records[shard_id] = []
            for key in shard["keys"]:
                sequence += 1
                self.records[shard_id].append(
                    {
                        "eventID": uuid.uuid4().hex,
                        "eventName": "INSERT",
                        "eventVersion": "1.1",
                        "eventSource": "aws:dynamodb",
                        "awsRegion": "eu-west-1",
                        "dynamodb": {
                            "ApproximateCreationDateTime": datetime.now(timezone.utc),
                            "Keys": {"pk": {"S": key}},
                            "SequenceNumber": f"{sequence:021d}",
                            "SizeBytes": 10,
                            "StreamViewType": "NEW_AND_OLD_IMAGES",
                        },
                    }
                )

    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> Any:
        ids = list(self.shards)
        start = ids.index(ExclusiveStartShardId) + 1 if ExclusiveStartShardId else 0
        page = ids[start : start + 1]
        shards = []
        for listed in page:
            parent = self.shards[listed]["parent"]
            shards.append({"ShardId": listed, **({"ParentShardId": parent} if parent else {})})
        description: dict[str, Any] = {"StreamArn": StreamArn, "Shards": shards}
        if start + 1 < len(ids):
            description["LastEvaluatedShardId"] = page[-1]
        return {"StreamDescription": description}

    def get_shard_iterator(
        self, StreamArn: str, ShardId: str, ShardIteratorType: str, SequenceNumber: str = ""
    ) -> Any:
        records = self.records[ShardId]
        position = 0
        if ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
            position = sum(1 for r in records if int(r["dynamodb"]["SequenceNumber"]) <= int(SequenceNumber))
        return {"ShardIterator": f"{ShardId}|{position}"}

    def get_records(self, ShardIterator: str, Limit: int) -> Any:
        shard_id, position = ShardIterator.split("|")
        start = int(position)
        records = self.records[shard_id][start : start + Limit]
        end = start + len(records)
        response: dict[str, Any] = {"Records": records}
        if not (self.shards[shard_id]["closed"] and end == len(self.records[shard_id])):
            response["NextShardIterator"] = f"{shard_id}|{end}"
        return response


def shard_id(n: int) -> str:
    return f"shardId-{n:020d}-{n:08x}"


def test_a_child_shard_is_read_only_after_its_parent_is_finished(make_poller) -> None:
    # The child is listed first, so only the lineage rule can hold it back.
    fake = FakeStreams(
        {
            shard_id(2): {"parent": shard_id(1), "keys": ["child"], "closed": False},
            shard_id(1): {"parent": None, "keys": ["parent0", "parent1"], "closed": True},
        }
    )
    handler = RecordingHandler()
    poller = make_poller(handler, replace(FAST, batch_size=1), client=fake, arn="arn:fake")

    poller.drain(timeout=10)

    assert handler.keys() == ["parent0", "parent1", "child"]
    assert handler.batches[0][0]["awsRegion"] == "eu-west-1"


def test_a_child_shard_whose_parent_is_no_longer_listed_is_read_at_once(make_poller) -> None:
    fake = FakeStreams({shard_id(2): {"parent": shard_id(1), "keys": ["child"], "closed": False}})
    handler = RecordingHandler()

    assert make_poller(handler, client=fake, arn="arn:fake").poll_once() == 1
    assert handler.keys() == ["child"]
