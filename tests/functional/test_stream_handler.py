"""The stream handler on real moto stream records: what it applies, skips, alarms on and reports."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from ledger.bootstrap import build_ledger
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.service import Caller, Ledger
from projections.bootstrap import build_balance_store, build_stream_handler
from stream_support import REGION, Stage, sequence_of, stream_records

CURRENCY = "EUR"


@pytest.fixture(scope="module")
def streams(moto_dynamodb: Any) -> Any:
    return boto3.client("dynamodbstreams", region_name=REGION)


@pytest.fixture
def stage(moto_dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    with Stage(moto_dynamodb) as created:
        yield created


def _keys() -> Iterator[Caller]:
    n = 0
    while True:
        n += 1
        yield Caller("handler-test", f"key-{n}")


def record_some(ledger: Ledger) -> None:
    """alice +100 -30, bob +7, transfer alice -> bob 20."""
    callers = _keys()
    for account in ("alice", "bob"):
        ledger.open_account(next(callers), OpenAccountRequest(account_id=account, currency=CURRENCY, allow_overdraft=True))
    ledger.credit(next(callers), "alice", MovementRequest(amount=100, currency=CURRENCY))
    ledger.debit(next(callers), "alice", MovementRequest(amount=30, currency=CURRENCY))
    ledger.credit(next(callers), "bob", MovementRequest(amount=7, currency=CURRENCY))
    ledger.transfer(next(callers), TransferRequest(from_account="alice", to_account="bob", amount=20, currency=CURRENCY))


def figures(stage: Stage, client: Any, account: str) -> tuple[int, int, int, int] | None:
    view = build_balance_store(stage.settings, client).get(account, consistent=True)
    return None if view is None else (view.balance, view.credits, view.debits, view.event_count)


def test_inserts_are_applied_once_even_when_the_batch_comes_twice(stage: Stage, moto_dynamodb: Any, streams: Any):
    record_some(build_ledger(stage.settings, moto_dynamodb))
    records = stream_records(moto_dynamodb, streams, stage.settings)
    handler = build_stream_handler(stage.settings, moto_dynamodb)

    assert handler({"Records": records}, None) == {"batchItemFailures": []}
    assert handler({"Records": records}, None) == {"batchItemFailures": []}

    assert figures(stage, moto_dynamodb, "alice") == (50, 100, 50, 4)
    assert figures(stage, moto_dynamodb, "bob") == (27, 27, 0, 3)


def test_a_modified_or_removed_event_raises_an_integrity_alarm_and_is_never_applied(
    stage: Stage,
    moto_dynamodb: Any,
    streams: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    ledger = build_ledger(stage.settings, moto_dynamodb)
    record_some(ledger)
    handler = build_stream_handler(stage.settings, moto_dynamodb)
    handler({"Records": stream_records(moto_dynamodb, streams, stage.settings)}, None)
    before = {a: figures(stage, moto_dynamodb, a) for a in ("alice", "bob")}
    credit = next(e for e in ledger.full_history("alice") if e.type == "account.credited")
    key = {"entity_id": {"S": "alice"}, "event_id": {"S": credit.event_id}}
    # Tampering no product code does: the events table is append-only.
    moto_dynamodb.update_item(
        TableName=stage.settings.tables.events,
        Key=key,
        UpdateExpression="SET amount = :a",
        ExpressionAttributeValues={":a": {"N": "1000000"}},
    )
    moto_dynamodb.delete_item(TableName=stage.settings.tables.events, Key=key)
    tampering = [r for r in stream_records(moto_dynamodb, streams, stage.settings) if r["eventName"] != "INSERT"]
    assert [r["eventName"] for r in tampering] == ["MODIFY", "REMOVE"]
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    capsys.readouterr()
    caplog.clear()

    response = handler({"Records": tampering}, None)

    assert response == {"batchItemFailures": []}  # alarmed, not retried forever
    assert {a: figures(stage, moto_dynamodb, a) for a in ("alice", "bob")} == before
    alarms = [r for r in caplog.records if "integrity alarm" in r.getMessage()]
    assert [r.eventName for r in alarms] == ["MODIFY", "REMOVE"]
    assert all(r.levelname == "ERROR" for r in alarms)
    assert alarms[0].old_image["amount"] == 100 and alarms[0].new_image["amount"] == 1_000_000
    assert alarms[1].old_image["event_id"] == credit.event_id
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emitted = [line for line in lines if "_aws" in line]  # CloudWatch embedded metric documents
    values = [line["IntegrityAlarms"] for line in emitted if "IntegrityAlarms" in line]
    assert sum(sum(v) if isinstance(v, list) else v for v in values) == 2  # EMF lists repeated values


def test_records_of_unknown_kinds_are_skipped_and_not_reported(stage: Stage, moto_dynamodb: Any, streams: Any):
    record_some(build_ledger(stage.settings, moto_dynamodb))
    records = stream_records(moto_dynamodb, streams, stage.settings)
    ttl_like = copy.deepcopy(records[0])
    ttl_like["eventName"] = "UNKNOWN_TO_SDK_VERSION"  # how DynamoDB Local shows a TTL deletion
    ttl_like["dynamodb"]["SequenceNumber"] = "9" * 21
    handler = build_stream_handler(stage.settings, moto_dynamodb)

    assert handler({"Records": [ttl_like]}, None) == {"batchItemFailures": []}
    assert figures(stage, moto_dynamodb, "alice") is None  # nothing applied
    assert handler({"Records": records}, None) == {"batchItemFailures": []}
    assert figures(stage, moto_dynamodb, "alice") == (50, 100, 50, 4)


def test_an_insert_that_is_not_a_ledger_event_is_reported_and_the_rest_apply(stage: Stage, moto_dynamodb: Any, streams: Any):
    record_some(build_ledger(stage.settings, moto_dynamodb))
    records = stream_records(moto_dynamodb, streams, stage.settings)
    broken = copy.deepcopy(records[-1])  # bob's transfer leg, with its amount made a string
    broken["dynamodb"]["NewImage"]["amount"] = {"S": "twenty"}
    handler = build_stream_handler(stage.settings, moto_dynamodb)

    response = handler({"Records": [*records[:-1], broken]}, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": sequence_of(broken)}]}
    assert figures(stage, moto_dynamodb, "alice") == (50, 100, 50, 4)
    assert figures(stage, moto_dynamodb, "bob") == (7, 7, 0, 2)


class ThrottledFor:
    """A client whose transactions touching one account are throttled; the rest pass through."""

    def __init__(self, real: Any, account: str) -> None:
        self._real, self._needle = real, f"#{account}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def transact_write_items(self, **request: Any) -> Any:
        keys = [next(iter(item.values()))["Key"]["pk"]["S"] for item in request["TransactItems"]]
        if any(key.endswith(self._needle) or f"{self._needle}#" in key for key in keys):
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "TransactWriteItems")
        return self._real.transact_write_items(**request)


def test_only_the_failing_accounts_records_are_reported_and_a_redelivery_counts_nothing_twice(
    stage: Stage, moto_dynamodb: Any, streams: Any
):
    record_some(build_ledger(stage.settings, moto_dynamodb))
    records = stream_records(moto_dynamodb, streams, stage.settings)
    bobs = [sequence_of(r) for r in records if r["dynamodb"]["Keys"]["entity_id"]["S"] == "bob"]

    response = build_stream_handler(stage.settings, ThrottledFor(moto_dynamodb, "bob"))({"Records": records}, None)

    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == bobs
    assert figures(stage, moto_dynamodb, "alice") == (50, 100, 50, 4)
    assert figures(stage, moto_dynamodb, "bob") is None
    # Lambda retries from the first failed record: alice's later records come again too.
    first_failed = [sequence_of(r) for r in records].index(bobs[0])
    healthy = build_stream_handler(stage.settings, moto_dynamodb)
    assert healthy({"Records": records[first_failed:]}, None) == {"batchItemFailures": []}
    assert figures(stage, moto_dynamodb, "alice") == (50, 100, 50, 4)
    assert figures(stage, moto_dynamodb, "bob") == (27, 27, 0, 3)
