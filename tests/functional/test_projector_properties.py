"""Invariant 4, exactly-once projection: once the stream is drained, every balance is the fold of its log.

Hypothesis draws accounts and transactions (credits, debits, transfers), records them
through the real `Ledger` on moto, and reads the real stream records back. It then
delivers them as hostile as Lambda is allowed to be: random batch boundaries, records
duplicated and reordered within and across batches, whole batches replayed, stray
batches of records already seen mixed with new ones (a replay from an older
checkpoint, another region's copy), and a
balance store whose DynamoDB client fails around each of its writes (`PutItem`,
`UpdateItem`, `TransactWriteItems`): before the write is sent (nothing written),
after it committed (written, but the caller sees an error), or by killing the
"Lambda" outright before or after the commit (the handler raises, the whole batch
comes again). The view's window of recent ids is drawn too, down to one id, so
that most late and replayed events fall below the floor and are decided by the
log. Every batch that raised or reported failures is redelivered until it reports
none. Then, for every account, the view must equal the fold of the log and the
model of what was recorded, every transfer's legs must cancel out, and `verify`
must report no drift.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from profiles import examples
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from composition.root import Root
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.service import Caller, Ledger
from projections.balances import BalanceChange
from projections.projector import Projector, key_of
from projections.store import BalanceStore
from projections.verify import verify
from stream_support import Stage, sequence_of, stream_records

REGION = "us-east-1"
CURRENCY = "EUR"


# -- moto plumbing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def metrics_off() -> Iterator[None]:
    """Powertools metrics would print EMF documents to stdout on every batch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def streams(moto_dynamodb: Any) -> Any:
    return boto3.client("dynamodbstreams", region_name=REGION)


# -- a DynamoDB client that crashes around the projector's transactions ----------------------------


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
        self.seen_fates: Counter[str] = Counter()

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


# -- the property ----------------------------------------------------------------------------------


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=ledgers(), data=st.data())
def test_every_balance_is_the_fold_of_its_log_whatever_the_delivery_and_the_crashes(
    moto_dynamodb: Any, streams: Any, scenario: tuple[int, list[tuple]], data: st.DataObject
) -> None:
    count, operations = scenario
    with Stage(moto_dynamodb) as stage:
        ledger = Root(stage.settings, client=moto_dynamodb).ledger
        accounts, model = record(ledger, count, operations)
        records = stream_records(moto_dynamodb, streams, stage.settings)
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

        client = CrashingClient(moto_dynamodb, fates)
        handler = Root(stage.settings, client=client, projection_window=window).stream_handler
        attempts = sum(deliver_until_clean(handler, batch, retry_whole_batch) for batch in schedule)
        for fate, times in client.seen_fates.items():
            event(f"fate {fate} happened")
        event(f"window {window}")
        event(f"redeliveries: {'some' if attempts > len(schedule) else 'none'}")

        # Every view is the fold of its log, and the log is what was recorded.
        store = Root(stage.settings, client=moto_dynamodb).balance_store
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


# -- targeted cases ----------------------------------------------------------------------------------


@pytest.fixture
def stage(moto_dynamodb: Any) -> Iterator[Stage]:
    with Stage(moto_dynamodb) as created:
        yield created


def _credits(ledger: Ledger, account: str, amounts: list[int]) -> list:
    ledger.open_account(Caller("t", f"{account}-open"), OpenAccountRequest(account_id=account, currency=CURRENCY, allow_overdraft=True))
    for n, amount in enumerate(amounts):
        ledger.credit(Caller("t", f"{account}-{n}"), account, MovementRequest(amount=amount, currency=CURRENCY))
    return list(ledger.full_history(account))


def test_a_group_with_one_event_already_applied_counts_the_others_in_one_write(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "alice", [100, 20, 3])  # opened, +100, +20, +3
    client = CrashingClient(moto_dynamodb, [])
    store = BalanceStore(client, Root(stage.settings, client=moto_dynamodb).balance_store._tables)
    store.apply([events[2]])  # the +20 arrived before, alone
    client.writes = 0

    report = Projector(store).project(list(reversed(events)))

    assert report.duplicates == {key_of(events[2])}
    assert report.applied == {key_of(e) for e in events} - {key_of(events[2])}
    assert report.failed == {}
    assert (report.writes, client.writes, client.transactions, report.log_reads) == (1, 1, 0, 0)
    view = store.get("alice", consistent=True)
    assert (view.balance, view.credits, view.debits, view.event_count) == (123, 123, 0, 4)
    assert view.matches(BalanceChange.of(events))
    assert view.as_of_event_id == events[-1].event_id


def test_a_process_that_knows_nothing_of_the_view_writes_blind_and_plans_from_what_is_refused(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "dora", [1, 2, 3])
    tables = Root(stage.settings, client=moto_dynamodb).balance_store._tables
    BalanceStore(moto_dynamodb, tables).apply(events[2:])  # another process applied the newest
    client = CrashingClient(moto_dynamodb, [])

    report = Projector(BalanceStore(client, tables)).project(events)  # a new process: no read first

    assert report.applied == {key_of(e) for e in events[:2]} and report.duplicates == {key_of(e) for e in events[2:]}
    assert (client.writes, report.log_reads) == (2, 0)  # the blind write refused (it hands back the item), then the put
    assert BalanceStore(moto_dynamodb, tables).get("dora", consistent=True).matches(BalanceChange.of(events))


def test_a_group_whose_every_event_was_applied_changes_nothing(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "bob", [5, 6])
    store = Root(stage.settings, client=moto_dynamodb).balance_store
    Projector(store).project(events)
    before = store.get("bob", consistent=True)

    report = Projector(store).project(events + events)

    assert report.applied == set() and report.failed == {}
    assert report.duplicates == {key_of(e) for e in events}
    assert store.get("bob", consistent=True) == before


def test_the_view_names_the_newest_event_even_when_an_older_one_is_projected_last(stage: Stage, moto_dynamodb: Any):
    """Events of one account may arrive in any order (DESIGN 5); as_of must not move back in time."""
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "carol", [1, 2])
    store = Root(stage.settings, client=moto_dynamodb).balance_store
    projector = Projector(store)

    projector.project([events[2]])  # the newest first, then the older ones in a later batch
    projector.project(events[:2])

    view = store.get("carol", consistent=True)
    assert view.matches(BalanceChange.of(events))
    assert view.as_of_event_id == events[-1].event_id, (
        f"as_of went back to {view.as_of_event_id}, but the view includes the newer {events[-1].event_id}"
    )
    assert view.as_of_recorded_at == events[-1].recorded_at


# -- below the floor: the log decides ------------------------------------------------------------


def _store(stage: Stage, client: Any, window: int | None = None) -> BalanceStore:
    return Root(stage.settings, client=client, projection_window=window).balance_store


def test_an_event_older_than_the_window_is_counted_once_when_it_arrives_late(stage: Stage, moto_dynamodb: Any):
    """Another region's event, say, committed here after newer ones: below the floor, not yet counted."""
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "erin", [1, 2, 4, 8, 16])  # opened, then five credits
    late = events[1]
    store = _store(stage, moto_dynamodb, window=2)
    projector = Projector(store)
    projector.project([e for e in events if e is not late])
    view = store.get("erin", consistent=True)
    assert view.balance == 30 and view.event_count == 5

    report = projector.project([late])

    assert report.applied == {key_of(late)} and report.log_reads == 1
    assert store.get("erin", consistent=True).matches(BalanceChange.of(events))
    # Delivered again (a retry, a replay): now the log shows every event below the floor counted.
    again = projector.project(events)
    assert again.applied == set() and again.duplicates == {key_of(e) for e in events}
    assert store.get("erin", consistent=True).matches(BalanceChange.of(events))


def test_a_replay_of_events_below_the_floor_reads_the_log_once_then_decides_from_memory(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "fay", [1, 2, 3, 4, 5, 6])
    store = _store(stage, moto_dynamodb, window=2)
    projector = Projector(store)
    projector.project(events)
    before = store.get("fay", consistent=True)

    first = projector.project(events[:3])  # the stream from the trim horizon, batch by batch
    second = projector.project(events[3:5])

    assert (first.log_reads, first.writes, second.log_reads, second.writes) == (1, 0, 0, 0)
    assert first.duplicates | second.duplicates == {key_of(e) for e in events[:5]}
    assert store.get("fay", consistent=True) == before
    # Another process (no memory) reads the log again, once, and writes nothing either.
    fresh = Projector(_store(stage, moto_dynamodb, window=2)).project(events)
    assert (fresh.applied, fresh.writes, fresh.log_reads) == (set(), 0, 1)


def test_a_view_written_before_the_window_is_deduplicated_by_its_newest_event_and_the_log(stage: Stage, moto_dynamodb: Any):
    """A balance item from before this version: figures and as-of, no floor, dedupe marks kept elsewhere."""
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "gus", [10, 20, 30])
    change = BalanceChange.of(events[:3])
    moto_dynamodb.put_item(
        TableName=stage.settings.tables.events.replace("-events", "-balances"),
        Item={
            "pk": {"S": "balance#gus"}, "account_id": {"S": "gus"}, "currency": {"S": CURRENCY},
            "balance": {"N": str(change.balance)}, "credits": {"N": str(change.credits)}, "debits": {"N": "0"},
            "event_count": {"N": "3"}, "version": {"N": "3"}, "as_of_event_id": {"S": change.newest_event_id},
            "as_of_recorded_at": {"S": change.newest_recorded_at}, "updated_at": {"S": change.newest_recorded_at},
        },
    )  # fmt: skip
    store = _store(stage, moto_dynamodb)

    report = Projector(store).project(events)  # the old view's events again, and one it has not seen

    assert report.applied == {key_of(events[3])} and report.duplicates == {key_of(e) for e in events[:3]}
    assert store.get("gus", consistent=True).matches(BalanceChange.of(events))


def test_rebuild_then_the_stream_counts_nothing_twice_and_a_late_event_once(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "hal", [5, 6, 7])
    store = _store(stage, moto_dynamodb)
    log = list(ledger.full_history("hal"))
    late = log.pop(1)  # the rebuild's read did not have it yet (not replicated here, say)
    store.replace("hal", log, CURRENCY, None)

    report = Projector(_store(stage, moto_dynamodb)).project(events)

    # Below the floor the log shows one event the view lacks: the view is recounted from the log
    # (the report cannot say which of the delivered events it lacked, so it names them all applied).
    assert report.failed == {} and report.log_reads == 1 and key_of(late) in report.applied
    assert store.get("hal", consistent=True).matches(BalanceChange.of(events))
    assert Projector(_store(stage, moto_dynamodb)).project(events).applied == set()


def test_a_balance_item_stays_within_one_write_unit_whatever_its_figures_and_account_id(stage: Stage, moto_dynamodb: Any):
    account = "x" * 64
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    ledger.open_account(Caller("t", "open"), OpenAccountRequest(account_id=account, currency=CURRENCY, allow_overdraft=True))
    for n in range(30):
        ledger.credit(Caller("t", f"c{n}"), account, MovementRequest(amount=2**53 - 1, currency=CURRENCY))
    events = list(ledger.full_history(account))
    store = _store(stage, moto_dynamodb)
    for n, event in enumerate(events):  # one at a time, each from a new process: blind writes
        Projector(_store(stage, moto_dynamodb)).project([event])
        if n % 7 == 0:
            Projector(store).project(events[: n + 1])
    item = moto_dynamodb.get_item(
        TableName=stage.settings.tables.events.replace("-events", "-balances"), Key={"pk": {"S": "balance#" + account}}
    )["Item"]
    item["balance"] = item["credits"] = item["debits"] = item["event_count"] = {"N": "9" * 38}  # the largest numbers

    assert len(item["recent"]["SS"]) == store.window(account) > 10
    assert aws_item_size(item) <= 1024, aws_item_size(item)
    assert store.get(account, consistent=True).matches(BalanceChange.of(events))


def aws_item_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (strings by UTF-8 length, numbers about one byte per two digits plus one)."""

    def value_size(value: dict[str, Any]) -> int:
        ((kind, data),) = value.items()
        if kind == "S":
            return len(data.encode())
        if kind == "N":
            digits = data.lstrip("-").replace(".", "").strip("0") or "0"
            return (len(digits) + 1) // 2 + 1
        if kind == "SS":
            return 3 + sum(len(v.encode()) + 1 for v in data)
        raise AssertionError(f"no size rule for {kind}")

    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def test_a_write_another_projector_made_meanwhile_is_never_overwritten(stage: Stage, moto_dynamodb: Any):
    """Two processes on one account (a Lambda still finishing while its retry runs, rebuild): each writes on the version it read."""
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "ida", [1, 2, 4])  # opened, +1, +2, +4
    first, second = Projector(_store(stage, moto_dynamodb)), Projector(_store(stage, moto_dynamodb))
    first.project(events[:2])  # the first process now knows the item
    second.project(events[2:3])  # the other one writes meanwhile

    report = first.project(events[3:])  # planned from what the first one knew: refused, planned again

    assert report.applied == {key_of(events[3])} and report.writes == 2, report
    assert _store(stage, moto_dynamodb).get("ida", consistent=True).matches(BalanceChange.of(events))


def test_a_recount_that_failed_to_commit_leaves_nothing_taken_for_applied(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "jo", [1, 2, 4, 8])
    late = events[1]
    client = CrashingClient(moto_dynamodb, [])
    projector = Projector(_store(stage, client, window=1))
    projector.project([e for e in events if e is not late])
    client._fates = ["fail_before"]  # the recount's write never reaches DynamoDB

    failed = projector.project([late])
    again = projector.project([late])  # redelivered to the same process

    assert key_of(late) in failed.failed and again.failed == {} and key_of(late) in again.applied
    assert _store(stage, moto_dynamodb).get("jo", consistent=True).matches(BalanceChange.of(events))
