"""Invariant 4, exactly-once projection: once the stream is drained, every balance is the fold of its log.

Hypothesis draws accounts and transactions (credits, debits, transfers), records them
through the real `Ledger` on moto, and reads the real stream records back (the
property itself is `projection_faults.hostile_delivery`, which the integration tier
also runs on DynamoDB Local). It then
delivers them as hostile as Lambda is allowed to be: random batch boundaries, records
duplicated and reordered within and across batches, whole batches replayed, stray
batches of records already seen mixed with new ones (a replay from an older
checkpoint, another region's copy), and a
balance store whose DynamoDB client fails around each of its writes (`PutItem`,
`TransactWriteItems`): before the write is sent (nothing written), throttled,
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

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples
from projection_faults import CrashingClient, hostile_delivery, ledgers

from composition.root import Root
from ledger.commands import MovementRequest, OpenAccountRequest
from ledger.service import Caller, Ledger
from projections.balances import BalanceChange
from projections.projector import Projector, key_of
from projections.store import BalanceStore
from stream_support import Stage

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


# -- the property ----------------------------------------------------------------------------------


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=ledgers(), data=st.data())
def test_every_balance_is_the_fold_of_its_log_whatever_the_delivery_and_the_crashes(
    moto_dynamodb: Any, streams: Any, scenario: tuple[int, list[tuple]], data: st.DataObject
) -> None:
    with Stage(moto_dynamodb) as stage:
        hostile_delivery(moto_dynamodb, streams, stage.settings, scenario, data)


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


def test_a_process_that_knows_no_view_reads_those_of_a_batch_in_one_request_then_writes_each_once(stage: Stage, moto_dynamodb: Any):
    ledger = Root(stage.settings, client=moto_dynamodb).ledger
    events = _credits(ledger, "dora", [1, 2, 3]) + _credits(ledger, "dan", [4])
    tables = Root(stage.settings, client=moto_dynamodb).balance_store._tables
    BalanceStore(moto_dynamodb, tables).apply(events[2:4])  # another process applied two of dora's
    client = CrashingClient(moto_dynamodb, [])

    report = Projector(BalanceStore(client, tables), workers=1).project(events)  # a new process

    assert report.applied == {key_of(e) for e in events} - {key_of(e) for e in events[2:4]}
    assert report.duplicates == {key_of(e) for e in events[2:4]}
    assert (client.reads, client.writes, report.log_reads) == (1, 2, 0)
    store = BalanceStore(moto_dynamodb, tables)
    assert store.get("dora", consistent=True).matches(BalanceChange.of(events[:4]))
    assert store.get("dan", consistent=True).matches(BalanceChange.of(events[4:]))


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
