"""Exactly-once projection under hostile delivery and crashes: the property, for any backend.

`hostile_delivery` records what Hypothesis draws through the real `Ledger`, reads the
events stream back as Lambda delivers it, and delivers it as hostile as Lambda is
allowed to be (see tests/functional/test_projector_properties.py), through a client
whose writes crash on a drawn schedule; then every view must be the fold of its log.
The functional tier runs it on moto (one PutItem per account), the integration tier
on DynamoDB Local (one PutItem per account, and many accounts to a transaction as
`ledger serve` sends them there).
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from hypothesis import event
from hypothesis import strategies as st

from composition.root import Root
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.config import Settings
from ledger.service import Caller, Ledger
from projections.balances import BalanceChange
from projections.verify import verify

CURRENCY = "EUR"


def stream_records(client: Any, streams: Any, settings: Settings) -> list[dict[str, Any]]:
    """Every record of the events table's stream, from the trim horizon, shaped as Lambda delivers them."""
    arn = client.describe_table(TableName=settings.tables.events)["Table"]["LatestStreamArn"]
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    for record in records:
        record["eventSourceARN"] = arn
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        if isinstance(created, datetime):  # boto3 parses it; Lambda hands over epoch seconds
            record["dynamodb"]["ApproximateCreationDateTime"] = created.timestamp()
    return records


def sequence_of(record: dict[str, Any]) -> str:
    return record["dynamodb"]["SequenceNumber"]


class LambdaDied(BaseException):
    """The function was killed (timeout, out of memory): nothing after this point ran.

    A BaseException, so no `except Exception` in the code under test can swallow it;
    the whole batch is delivered again, as Lambda does when an invocation fails.
    """


FATES = ("ok", "fail_before", "fail_after", "throttled", "die_before", "die_after")


class CrashingClient:
    """Delegates to a real client; each write (put, update, transaction) follows a schedule of fates, then succeeds."""

    def __init__(self, real: Any, fates: list[str]) -> None:
        self._real = real
        self._fates = list(fates)
        self.transactions = 0
        self.writes = 0
        self.reads = 0
        self.seen_fates: Counter[str] = Counter()

    def batch_get_item(self, **request: Any) -> Any:
        self.reads += 1
        return self._real.batch_get_item(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def transact_write_items(self, **request: Any) -> Any:
        self.transactions += 1
        return self._fated("TransactWriteItems", self._real.transact_write_items, request)

    def put_item(self, **request: Any) -> Any:
        return self._fated("PutItem", self._real.put_item, request)

    def update_item(self, **request: Any) -> Any:
        return self._fated("UpdateItem", self._real.update_item, request)

    def _fated(self, operation: str, call: Any, request: dict[str, Any]) -> Any:
        self.writes += 1
        fate = self._fates.pop(0) if self._fates else "ok"
        self.seen_fates[fate] += 1
        if fate == "fail_before":
            raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
        if fate == "throttled":
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation)
        if fate == "die_before":
            raise LambdaDied("killed before the write was sent")
        response = call(**request)
        if fate == "fail_after":
            raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
        if fate == "die_after":
            raise LambdaDied("killed after the write committed")
        return response


def deliver_until_clean(handler: Any, batch: list[dict[str, Any]], retry_whole_batch: bool, limit: int = 60) -> int:
    """Deliver `batch` like an event source mapping until it reports no failure; return the attempts.

    A handler that raised (killed, or Powertools' BatchProcessingError when every record
    failed) gets the whole batch again. Reported failures get either the whole batch
    again or (Lambda's checkpoint) every record from the first failed one on.
    """
    pending = batch
    for attempt in range(1, limit + 1):
        try:
            response = handler({"Records": copy.deepcopy(pending)}, None)
        except (LambdaDied, Exception):  # noqa: BLE001 - a raising handler fails the batch, as on Lambda
            continue
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        if not failed:
            return attempt
        assert failed <= {sequence_of(r) for r in pending}, "a failure names a record that was not delivered"
        if not retry_whole_batch:
            first = next(i for i, r in enumerate(pending) if sequence_of(r) in failed)
            pending = pending[first:]
    raise AssertionError(f"the batch still fails after {limit} deliveries")


# -- what to record --------------------------------------------------------------------------------


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[int, list[tuple]]:
    """A number of accounts and the operations on them: ("credit"|"debit", i, amount) or ("transfer", i, j, amount)."""
    count = draw(st.integers(min_value=1, max_value=4), label="accounts")
    amounts = st.integers(min_value=1, max_value=10**6)
    account = st.integers(min_value=0, max_value=count - 1)
    movement = st.tuples(st.sampled_from(["credit", "debit"]), account, amounts)
    kinds = [movement]
    if count > 1:
        pair = st.lists(account, min_size=2, max_size=2, unique=True)
        kinds.append(st.builds(lambda p, a: ("transfer", p[0], p[1], a), pair, amounts))
    operations = draw(st.lists(st.one_of(kinds), max_size=10), label="operations")
    return count, operations


def record(ledger: Ledger, count: int, operations: list[tuple]) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Write everything through the ledger; return the account ids and the model's (credits, debits) each."""
    accounts = [f"acct-{i}" for i in range(count)]
    model = {a: [0, 0] for a in accounts}
    keys = iter(range(10**6))

    def caller() -> Caller:
        return Caller("property", f"key-{next(keys)}")

    for account in accounts:
        ledger.open_account(caller(), OpenAccountRequest(account_id=account, currency=CURRENCY, allow_overdraft=True))
    for operation in operations:
        if operation[0] == "transfer":
            _, source, target, amount = operation
            ledger.transfer(
                caller(),
                TransferRequest(from_account=accounts[source], to_account=accounts[target], amount=amount, currency=CURRENCY),
            )
            model[accounts[source]][1] += amount
            model[accounts[target]][0] += amount
        else:
            kind, index, amount = operation
            getattr(ledger, kind)(caller(), accounts[index], MovementRequest(amount=amount, currency=CURRENCY))
            model[accounts[index]][0 if kind == "credit" else 1] += amount
    return accounts, {a: (c, d) for a, (c, d) in model.items()}


def hostile_delivery(
    client: Any, streams: Any, settings: Settings, scenario: tuple[int, list[tuple]], data: st.DataObject, writes: str = "items"
) -> None:
    """Record `scenario` on fresh tables of `settings`, deliver its stream as drawn from `data`, check every view.

    `writes`: how the projector's writes of several accounts travel together (`projections.store.Writes`).
    """
    count, operations = scenario
    ledger = Root(settings, client=client).ledger
    accounts, model = record(ledger, count, operations)
    records = stream_records(client, streams, settings)
    legs = count + sum(2 if op[0] == "transfer" else 1 for op in operations)
    assert [r["eventName"] for r in records] == ["INSERT"] * legs, "one INSERT per event, nothing else"

    # The hostile delivery: duplicates, any order, any batch boundaries, replayed batches.
    indexes = list(range(len(records)))
    extra = data.draw(st.lists(st.sampled_from(indexes), max_size=len(records)), label="duplicated records")
    order = data.draw(st.permutations(indexes + extra), label="delivery order")
    cuts = data.draw(st.sets(st.integers(min_value=1, max_value=max(1, len(order) - 1)), max_size=6), label="cuts")
    bounds = [0, *sorted(c for c in cuts if c < len(order)), len(order)]
    batches = [[records[i] for i in order[a:b]] for a, b in zip(bounds, bounds[1:])]
    replays = data.draw(
        st.lists(st.tuples(st.integers(0, len(batches) - 1), st.integers(0, len(batches))), max_size=3),
        label="replayed batches (which, before which position)",
    )
    strays = data.draw(
        st.lists(
            st.tuples(st.lists(st.sampled_from(indexes), min_size=1, max_size=8), st.integers(0, len(batches))),
            max_size=3,
        ),
        label="stray batches of any records (which, before which position)",
    )
    schedule = list(batches)
    inserted = [(batches[which], position) for which, position in replays]
    inserted += [([records[i] for i in chosen], position) for chosen, position in strays]
    for batch, position in sorted(inserted, key=lambda r: -r[1]):
        schedule.insert(position, batch)
    if data.draw(st.booleans(), label="replay the whole stream at the end"):
        schedule.append(list(records))
    fates = data.draw(st.lists(st.sampled_from(FATES), max_size=16), label="write fates")
    retry_whole_batch = data.draw(st.booleans(), label="retry whole batch")
    window = data.draw(st.sampled_from([None, 1, 2, 4]), label="ids in a view's window (None: as many as fit)")

    crashing = CrashingClient(client, fates)
    handler = Root(settings, client=crashing, projection_window=window, projection_writes=writes).stream_handler  # type: ignore[arg-type]
    attempts = sum(deliver_until_clean(handler, batch, retry_whole_batch) for batch in schedule)
    for fate, times in crashing.seen_fates.items():
        event(f"fate {fate} happened")
    event(f"window {window}")
    event(f"redeliveries: {'some' if attempts > len(schedule) else 'none'}")

    # Every view is the fold of its log, and the log is what was recorded.
    store = Root(settings, client=client).balance_store
    for account in accounts:
        log = list(ledger.full_history(account))
        change = BalanceChange.of(log)
        credits, debits = model[account]
        assert (change.credits, change.debits) == (credits, debits), f"the log of {account} is not what was recorded"
        view = store.get(account, consistent=True)
        assert view is not None, f"{account} has no view"
        assert (view.balance, view.credits, view.debits, view.event_count) == (
            change.balance,
            change.credits,
            change.debits,
            change.event_count,
        ), f"{account}: view {view} differs from the fold {change}"
    assert {b.account_id for b in store.all_balances()} == set(accounts)

    # The legs of every transfer cancel out, in the log and so in the sum of the views.
    by_transaction: dict[str, list] = defaultdict(list)
    for account in accounts:
        for logged in ledger.full_history(account):
            by_transaction[logged.transaction_id].append(logged)
    transfers = {t: evs for t, evs in by_transaction.items() if evs[0].transaction_type == "transfer"}
    assert len(transfers) == sum(1 for op in operations if op[0] == "transfer")
    for transaction_id, transfer_legs in transfers.items():
        assert len(transfer_legs) == 2
        assert sum(leg.signed_amount for leg in transfer_legs) == 0
        assert {leg.event_id for leg in ledger.transaction(transaction_id)} == {leg.event_id for leg in transfer_legs}
    outside_money = sum(op[2] if op[0] == "credit" else -op[2] for op in operations if op[0] != "transfer")
    assert sum(store.get(a, consistent=True).balance for a in accounts) == outside_money

    assert verify(ledger, store, rechecks=0, sleep=lambda _seconds: None) == []
