"""The stream handler on real moto stream records: what it applies, skips, alarms on and reports.

Records come from moto's own stream of the events table, shaped as Lambda hands them
over (`stream_support.stream_records`), and go to the handler the composition root
builds, as Lambda and the local poller call it.
"""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import projections.handler
from composition.root import Root
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.service import Caller, Ledger
from projections.balances import BalanceChange
from projections.store import Balance
from stream_support import REGION, Stage, sequence_of, stream_records

CURRENCY = "EUR"
ALICE = (50, 100, 50, 4)  # opened, +100, -30, -20 to bob
BOB = (27, 27, 0, 3)  # opened, +7, +20 from alice


@pytest.fixture(scope="module")
def streams(moto_dynamodb: Any) -> Any:
    return boto3.client("dynamodbstreams", region_name=REGION)


@pytest.fixture
def ledger(stage: Stage, moto_dynamodb: Any) -> Ledger:
    """The ledger of the stage, holding alice's and bob's credits, debits and a transfer."""
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    keys = (Caller("handler-test", f"key-{n}") for n in range(100))
    for account in ("alice", "bob"):
        ledger.open_account(next(keys), OpenAccountRequest(account_id=account, currency=CURRENCY, allow_overdraft=True))
    ledger.credit(next(keys), "alice", MovementRequest(amount=100, currency=CURRENCY))
    ledger.debit(next(keys), "alice", MovementRequest(amount=30, currency=CURRENCY))
    ledger.credit(next(keys), "bob", MovementRequest(amount=7, currency=CURRENCY))
    ledger.transfer(next(keys), TransferRequest(from_account="alice", to_account="bob", amount=20, currency=CURRENCY))
    return ledger


def view(stage: Stage, client: Any, account: str) -> Balance | None:
    return Root(stage.settings, client=client).balance_store.get(account, consistent=True)


def figures(stage: Stage, client: Any, account: str) -> tuple[int, int, int, int] | None:
    found = view(stage, client, account)
    return None if found is None else (found.balance, found.credits, found.debits, found.event_count)


def assert_view_is_the_fold_of_the_log(stage: Stage, client: Any, ledger: Ledger, account: str) -> None:
    found, fold = view(stage, client, account), BalanceChange.of(ledger.full_history(account))
    assert found is not None and found.matches(fold), (found, fold)
    assert (found.currency, found.as_of_event_id, found.as_of_recorded_at) == (
        fold.currency,
        fold.newest_event_id,
        fold.newest_recorded_at,
    )


def account_of(record: dict[str, Any]) -> str:
    return record["dynamodb"]["Keys"]["entity_id"]["S"]


def test_inserts_of_credits_debits_and_transfers_make_the_view_the_fold_of_the_log(
    stage: Stage, moto_dynamodb: Any, streams: Any, ledger: Ledger
):
    records = stream_records(moto_dynamodb, streams, stage.settings)
    assert {r["eventName"] for r in records} == {"INSERT"} and len(records) == 7

    response = Root(stage.settings, client=moto_dynamodb).stream_handler({"Records": records}, None)

    assert response == {"batchItemFailures": []}
    assert figures(stage, moto_dynamodb, "alice") == ALICE
    assert figures(stage, moto_dynamodb, "bob") == BOB
    for account in ("alice", "bob"):
        assert_view_is_the_fold_of_the_log(stage, moto_dynamodb, ledger, account)


def test_the_same_batch_delivered_twice_changes_nothing(stage: Stage, moto_dynamodb: Any, streams: Any, ledger: Ledger):
    records = stream_records(moto_dynamodb, streams, stage.settings)
    handler = Root(stage.settings, client=moto_dynamodb).stream_handler
    assert handler({"Records": records}, None) == {"batchItemFailures": []}
    once = {a: view(stage, moto_dynamodb, a) for a in ("alice", "bob")}

    assert handler({"Records": records}, None) == {"batchItemFailures": []}
    # A fresh handler (another Lambda instance) gets the batch a third time.
    assert Root(stage.settings, client=moto_dynamodb).stream_handler({"Records": records}, None) == {"batchItemFailures": []}

    assert {a: view(stage, moto_dynamodb, a) for a in ("alice", "bob")} == once  # not even updated_at moved
    assert (figures(stage, moto_dynamodb, "alice"), figures(stage, moto_dynamodb, "bob")) == (ALICE, BOB)


@pytest.fixture
def powertools_log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the projector's Powertools Logger writes: one JSON document per line (stdout in Lambda)."""
    written = io.StringIO()
    monkeypatch.setattr(projections.handler.logger.logger_handler, "stream", written)
    return written


def emitted_metrics(stdout: str) -> dict[str, float]:
    """The sum of each metric in the CloudWatch embedded-format documents printed on stdout."""
    totals: dict[str, float] = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        if "_aws" not in document:
            continue
        for directive in document["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "DynamoLedger"
            for metric in directive["Metrics"]:
                value = document[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + (sum(value) if isinstance(value, list) else value)
    return totals


def test_a_modified_or_removed_event_raises_an_integrity_alarm_with_both_images_and_is_never_applied(
    stage: Stage,
    moto_dynamodb: Any,
    streams: Any,
    ledger: Ledger,
    capsys: pytest.CaptureFixture[str],
    powertools_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
):
    credit = next(e for e in ledger.full_history("alice") if e.type == "account.credited")
    key = {"entity_id": {"S": "alice"}, "event_id": {"S": credit.event_id}}
    # Tampering no product code does (the events table is append-only): a raw client call from the test.
    moto_dynamodb.update_item(
        TableName=stage.settings.tables.events,
        Key=key,
        UpdateExpression="SET amount = :a",
        ExpressionAttributeValues={":a": {"N": "1000000"}},
    )
    moto_dynamodb.delete_item(TableName=stage.settings.tables.events, Key=key)
    records = stream_records(moto_dynamodb, streams, stage.settings)
    inserts = [r for r in records if r["eventName"] == "INSERT"]
    tampering = [r for r in records if r["eventName"] != "INSERT"]
    assert [r["eventName"] for r in tampering] == ["MODIFY", "REMOVE"]
    handler = Root(stage.settings, client=moto_dynamodb).stream_handler
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    capsys.readouterr()

    response = handler({"Records": tampering}, None)

    assert response == {"batchItemFailures": []}  # alarmed, not retried forever
    assert figures(stage, moto_dynamodb, "alice") is None  # the MODIFY's new image was not applied
    lines = [json.loads(line) for line in powertools_log.getvalue().splitlines()]
    alarms = [line for line in lines if "integrity alarm" in line["message"]]
    assert [(a["level"], a["eventName"]) for a in alarms] == [("ERROR", "MODIFY"), ("ERROR", "REMOVE")]
    modified, removed = alarms
    assert modified["old_image"]["amount"] == 100 and modified["new_image"]["amount"] == 1_000_000
    assert modified["old_image"]["event_id"] == modified["new_image"]["event_id"] == credit.event_id
    assert removed["old_image"]["event_id"] == credit.event_id and removed["old_image"]["amount"] == 1_000_000
    assert not removed["new_image"]
    assert emitted_metrics(capsys.readouterr().out).get("IntegrityAlarms") == 2

    # The alarms marked nothing as applied: the original INSERTs still count, once.
    assert handler({"Records": inserts}, None) == {"batchItemFailures": []}
    assert (figures(stage, moto_dynamodb, "alice"), figures(stage, moto_dynamodb, "bob")) == (ALICE, BOB)
    assert emitted_metrics(capsys.readouterr().out).get("IntegrityAlarms", 0) == 0


def test_records_of_unknown_kinds_are_skipped_and_not_reported(stage: Stage, moto_dynamodb: Any, streams: Any, ledger: Ledger):
    records = stream_records(moto_dynamodb, streams, stage.settings)
    ttl_like = copy.deepcopy(records[0])  # moto never expires items: forge what DynamoDB Local sends for TTL
    ttl_like["eventName"] = "UNKNOWN_TO_SDK_VERSION"
    ttl_like["dynamodb"]["SequenceNumber"] = "9" * 21
    handler = Root(stage.settings, client=moto_dynamodb).stream_handler

    assert handler({"Records": [ttl_like]}, None) == {"batchItemFailures": []}
    assert figures(stage, moto_dynamodb, records[0]["dynamodb"]["Keys"]["entity_id"]["S"]) is None  # nothing applied

    assert handler({"Records": [*records[:3], ttl_like, *records[3:]]}, None) == {"batchItemFailures": []}
    assert (figures(stage, moto_dynamodb, "alice"), figures(stage, moto_dynamodb, "bob")) == (ALICE, BOB)


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda image: image.update(amount={"S": "twenty"}), id="amount-not-a-number"),
        pytest.param(lambda image: image.update(type={"S": "account.gifted"}), id="unknown-event-type"),
        pytest.param(lambda image: [image.pop(k) for k in list(image) if k not in ("entity_id", "event_id")], id="bare-key"),
    ],
)
def test_an_insert_that_is_not_a_ledger_event_is_reported_and_the_rest_apply(
    stage: Stage, moto_dynamodb: Any, streams: Any, ledger: Ledger, spoil: Any
):
    records = stream_records(moto_dynamodb, streams, stage.settings)
    assert account_of(records[-1]) == "bob"  # bob's transfer leg, the last write
    broken = copy.deepcopy(records[-1])
    spoil(broken["dynamodb"]["NewImage"])

    response = Root(stage.settings, client=moto_dynamodb).stream_handler({"Records": [*records[:-1], broken]}, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": sequence_of(broken)}]}
    assert figures(stage, moto_dynamodb, "alice") == ALICE
    assert figures(stage, moto_dynamodb, "bob") == (7, 7, 0, 2)


class ThrottledFor:
    """A DynamoDB client whose writes to one account's balance item are throttled (alone or in a transaction)."""

    def __init__(self, real: Any, account: str) -> None:
        self._real, self._account = real, account
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _throttle(self, keys: list[dict[str, Any]], operation: str) -> None:
        if any(key.get("pk", {}).get("S", "").split("#")[1:2] == [self._account] for key in keys):
            self.refused += 1
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation)

    def transact_write_items(self, **request: Any) -> Any:
        bodies = [next(iter(item.values())) for item in request["TransactItems"]]
        self._throttle([body.get("Key") or body.get("Item") or {} for body in bodies], "TransactWriteItems")
        return self._real.transact_write_items(**request)

    def update_item(self, **request: Any) -> Any:
        self._throttle([request["Key"]], "UpdateItem")
        return self._real.update_item(**request)

    def put_item(self, **request: Any) -> Any:
        self._throttle([request["Item"]], "PutItem")
        return self._real.put_item(**request)


def test_when_one_accounts_balance_fails_only_its_records_are_reported_and_a_redelivery_counts_nothing_twice(
    stage: Stage, moto_dynamodb: Any, streams: Any, ledger: Ledger
):
    records = stream_records(moto_dynamodb, streams, stage.settings)
    sequences = [sequence_of(r) for r in records]
    bobs = [sequence_of(r) for r in records if account_of(r) == "bob"]
    assert 0 < sequences.index(bobs[0]) and sequences.index(bobs[-1]) == len(records) - 1  # alice's records around bob's
    failing = ThrottledFor(moto_dynamodb, "bob")

    response = Root(stage.settings, client=failing).stream_handler({"Records": records}, None)

    assert failing.refused > 0
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == bobs
    assert figures(stage, moto_dynamodb, "alice") == ALICE
    assert figures(stage, moto_dynamodb, "bob") is None
    # Lambda retries from the first failed record: alice's later records come again too.
    retry = records[sequences.index(bobs[0]) :]
    assert any(account_of(r) == "alice" for r in retry)
    healthy = Root(stage.settings, client=moto_dynamodb).stream_handler
    assert healthy({"Records": retry}, None) == {"batchItemFailures": []}
    assert figures(stage, moto_dynamodb, "alice") == ALICE
    assert figures(stage, moto_dynamodb, "bob") == BOB
    for account in ("alice", "bob"):
        assert_view_is_the_fold_of_the_log(stage, moto_dynamodb, ledger, account)
