"""The ledger's write loop over small fake stores: retries, replays and refusals (no IO).

The fakes are plain classes with the two methods the ledger calls on a store,
`commit` and `get_idempotency_record`; no mocks.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from ledger import errors
from ledger.commands import MovementRequest, TransferRequest
from ledger.ids import new_ulid_after
from ledger.responses import render
from ledger.service import Caller, Ledger, RetryPolicy
from ledger.store import Commit, Contention, IdempotencyRecord, KeyAlreadyUsed, OutOfOrder

REGION = "us-east-1"
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
CREDIT = MovementRequest(amount=100, currency="EUR")


class MemoryStore:
    """Commits land in memory; a key already recorded raises `KeyAlreadyUsed` with its record."""

    def __init__(self) -> None:
        self.attempts: list[Commit] = []
        self.records: dict[str, IdempotencyRecord] = {}
        self.landed: list[Commit] = []

    def commit(self, commit: Commit) -> None:
        self.attempts.append(commit)
        record = commit.idempotency
        assert record is not None
        if record.idempotency_id in self.records:
            raise KeyAlreadyUsed(self._refusal_record(record.idempotency_id))
        self.records[record.idempotency_id] = record
        self.landed.append(commit)

    def _refusal_record(self, idempotency_id: str) -> IdempotencyRecord | None:
        return self.records[idempotency_id]

    def get_idempotency_record(self, idempotency_id: str) -> IdempotencyRecord | None:
        return self.records.get(idempotency_id)

    def events_by_keys(self, keys) -> list:
        landed = {(e.entity_id, e.event_id): e for commit in self.landed for e in commit.events}
        return [landed[key] for key in keys if key in landed]


class ContendedStore(MemoryStore):
    """Raises `Contention` for the first `conflicts` attempts (math.inf: always), then behaves."""

    def __init__(self, conflicts: float, on_idempotency_record: bool = False) -> None:
        super().__init__()
        self.conflicts = conflicts
        self.on_idempotency_record = on_idempotency_record

    def commit(self, commit: Commit) -> None:
        if self.conflicts > 0:
            self.conflicts -= 1
            self.attempts.append(commit)
            raise Contention(on_idempotency_record=self.on_idempotency_record)
        super().commit(commit)


class SilentRefusalStore(MemoryStore):
    """Like DynamoDB without ALL_OLD: the refusal names no record, so the ledger must read it."""

    def _refusal_record(self, idempotency_id: str) -> IdempotencyRecord | None:
        return None


class VanishingRecordStore(MemoryStore):
    """The first commit finds the key used, but the record expires and is deleted before the read."""

    def __init__(self) -> None:
        super().__init__()
        self.first = True

    def commit(self, commit: Commit) -> None:
        if self.first:
            self.first = False
            self.attempts.append(commit)
            raise KeyAlreadyUsed(None)
        super().commit(commit)


class RefusingStore(MemoryStore):
    """Every commit is refused by a guard."""

    def commit(self, commit: Commit) -> None:
        self.attempts.append(commit)
        raise errors.InsufficientFunds("too little", account_id="alice")


def ledger_over(store: MemoryStore, sleeps: list[float] | None = None, **options) -> Ledger:
    record_sleep = sleeps.append if sleeps is not None else (lambda seconds: None)
    return Ledger(store, REGION, clock=lambda: NOW, sleep=record_sleep, **options)  # type: ignore[arg-type]


def caller(key: str | None = "key-1") -> Caller:
    return Caller(scope="tests", idempotency_key=key)


# -- contention -----------------------------------------------------------------------


@pytest.mark.parametrize("conflicts", [1, 3, 5])
def test_a_commit_that_meets_contention_is_retried_until_it_lands(conflicts):
    store = ContendedStore(conflicts)
    sleeps: list[float] = []

    outcome = ledger_over(store, sleeps).credit(caller(), "alice", CREDIT)

    assert outcome.resource.startswith("/transactions/")
    assert outcome.replayed is False
    assert len(store.attempts) == conflicts + 1
    assert len(store.landed) == 1
    assert len(sleeps) == conflicts


def test_every_retry_sends_the_very_same_commit_under_the_same_client_token():
    store = ContendedStore(3)

    ledger_over(store).transfer(
        caller(), TransferRequest(from_account="alice", to_account="bob", amount=5, currency="EUR")
    )

    assert len(store.attempts) == 4
    assert all(commit == store.attempts[0] for commit in store.attempts)
    assert {commit.token for commit in store.attempts} == {store.attempts[0].events[0].event_id}


def test_contention_on_every_attempt_ends_in_store_unavailable():
    store = ContendedStore(math.inf)
    sleeps: list[float] = []

    with pytest.raises(errors.StoreUnavailable):
        ledger_over(store, sleeps).credit(caller(), "alice", CREDIT)

    assert len(store.attempts) == RetryPolicy().attempts
    assert len(sleeps) == RetryPolicy().attempts - 1
    assert store.landed == []


def test_contention_on_the_idempotency_record_every_time_means_the_key_is_in_flight():
    store = ContendedStore(math.inf, on_idempotency_record=True)

    with pytest.raises(errors.IdempotencyInFlight):
        ledger_over(store).credit(caller(), "alice", CREDIT)

    assert len(store.attempts) == RetryPolicy().attempts


def test_the_number_of_attempts_follows_the_retry_policy():
    store = ContendedStore(math.inf)

    with pytest.raises(errors.StoreUnavailable):
        ledger_over(store, retry=RetryPolicy(attempts=2)).credit(caller(), "alice", CREDIT)

    assert len(store.attempts) == 2


def test_backoff_is_jittered_between_zero_and_a_capped_exponential():
    store = ContendedStore(math.inf)
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=10, base_seconds=0.01, cap_seconds=0.3)

    with pytest.raises(errors.StoreUnavailable):
        ledger_over(store, sleeps, retry=policy).credit(caller(), "alice", CREDIT)

    assert len(sleeps) == 9
    for attempt, slept in enumerate(sleeps, start=1):
        assert 0 <= slept <= min(policy.cap_seconds, policy.base_seconds * 2**attempt)


def test_a_commit_that_lands_first_time_never_sleeps():
    sleeps: list[float] = []

    ledger_over(MemoryStore(), sleeps).credit(caller(), "alice", CREDIT)

    assert sleeps == []


# -- used keys ------------------------------------------------------------------------


def test_a_used_key_with_the_same_request_replays_the_stored_response_without_landing_again():
    store = MemoryStore()
    ledger = ledger_over(store)
    first = ledger.credit(caller("same"), "alice", CREDIT)

    again = ledger.credit(caller("same"), "alice", MovementRequest(currency="EUR", amount=100))

    assert again.replayed is True
    assert (again.body, again.resource) == (first.body, first.resource)
    assert len(store.landed) == 1


@pytest.mark.parametrize(
    "second",
    [
        lambda ledger: ledger.credit(caller("same"), "alice", MovementRequest(amount=101, currency="EUR")),
        lambda ledger: ledger.debit(caller("same"), "alice", CREDIT),
        lambda ledger: ledger.credit(caller("same"), "bob", CREDIT),
    ],
    ids=["other amount", "other operation", "other account"],
)
def test_a_used_key_with_a_different_request_is_refused(second):
    store = MemoryStore()
    ledger = ledger_over(store)
    ledger.credit(caller("same"), "alice", CREDIT)

    with pytest.raises(errors.IdempotencyKeyReused):
        second(ledger)

    assert len(store.landed) == 1


def test_a_used_key_whose_record_is_not_in_the_refusal_is_read_back_and_replayed():
    store = SilentRefusalStore()
    ledger = ledger_over(store)
    first = ledger.credit(caller("same"), "alice", CREDIT)

    again = ledger.credit(caller("same"), "alice", CREDIT)

    assert again.replayed is True
    assert again.body == first.body


def test_a_key_whose_record_vanished_before_it_could_be_read_is_recorded_afresh():
    store = VanishingRecordStore()

    outcome = ledger_over(store).credit(caller(), "alice", CREDIT)

    assert outcome.replayed is False
    assert len(store.attempts) == 2
    assert len(store.landed) == 1


def test_keys_are_scoped_per_caller():
    store = MemoryStore()
    ledger = ledger_over(store)

    ledger.credit(Caller("tenant-a", "shared"), "alice", CREDIT)
    other = ledger.credit(Caller("tenant-b", "shared"), "alice", MovementRequest(amount=7, currency="EUR"))

    assert other.replayed is False
    assert sorted(store.records) == ["key#tenant-a#shared", "key#tenant-b#shared"]


# -- refusals ---------------------------------------------------------------------------


def test_a_domain_refusal_is_raised_at_once_and_not_retried():
    store = RefusingStore()
    sleeps: list[float] = []

    with pytest.raises(errors.InsufficientFunds):
        ledger_over(store, sleeps).debit(caller(), "alice", CREDIT)

    assert len(store.attempts) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "key, error",
    [
        (None, errors.IdempotencyKeyMissing),
        ("", errors.IdempotencyKeyInvalid),
        ("k" * 256, errors.IdempotencyKeyInvalid),
        ("bell\x07", errors.IdempotencyKeyInvalid),
        ("naïve", errors.IdempotencyKeyInvalid),
    ],
    ids=["missing", "empty", "256 chars", "control char", "non-ASCII"],
)
def test_a_write_without_a_usable_key_never_reaches_the_store(key, error):
    store = MemoryStore()
    ledger = ledger_over(store)

    for write in (
        lambda: ledger.credit(caller(key), "alice", CREDIT),
        lambda: ledger.debit(caller(key), "alice", CREDIT),
        lambda: ledger.transfer(
            caller(key), TransferRequest(from_account="alice", to_account="bob", amount=1, currency="EUR")
        ),
    ):
        with pytest.raises(error):
            write()

    assert store.attempts == []


def test_a_transfer_to_the_same_account_never_reaches_the_store():
    store = MemoryStore()

    with pytest.raises(errors.SameAccountTransfer):
        ledger_over(store).transfer(
            caller(), TransferRequest(from_account="alice", to_account="alice", amount=1, currency="EUR")
        )

    assert store.attempts == []


# -- what is recorded ---------------------------------------------------------------------


def test_the_recorded_response_is_the_response_returned_and_expires_after_the_ttl():
    store = MemoryStore()

    outcome = ledger_over(store, idempotency_ttl=timedelta(hours=2)).credit(caller("k"), "alice", CREDIT)

    (commit,) = store.landed
    record = commit.idempotency
    # The record names the events the answer is rendered from, and holds no copy of it.
    assert record.body is None
    assert (record.view, record.event_keys, record.resource) == ("transaction", tuple((e.entity_id, e.event_id) for e in commit.events), outcome.resource)
    assert render(record.view, commit.events) == outcome.body
    assert record.idempotency_id == "key#tests#k"
    assert record.expires_at == int((NOW + timedelta(hours=2)).timestamp())
    assert commit.now_epoch == int(NOW.timestamp())


def test_a_transfer_commits_two_legs_that_balance_and_guard_both_accounts():
    store = MemoryStore()

    ledger_over(store).transfer(
        caller(), TransferRequest(from_account="alice", to_account="bob", amount=30, currency="EUR")
    )

    (commit,) = store.landed
    assert [(event.entity_id, event.signed_amount) for event in commit.events] == [("alice", -30), ("bob", 30)]
    assert len({event.transaction_id for event in commit.events}) == 1
    assert [(g.account_id, g.currency, g.delta) for g in commit.guards] == [("alice", "EUR", -30), ("bob", "EUR", 30)]
    assert [g.event_id for g in commit.guards] == [event.event_id for event in commit.events]


# -- history order is commit order ------------------------------------------------------------

FAR_AHEAD = "03PFAH5B000000000000000000"  # 2099: an id a writer whose clock runs far ahead minted


class NewerFirstStore(MemoryStore):
    """The account committed `newest` before our first attempt, as a faster writer would."""

    def __init__(self, newest: str, times: int = 1) -> None:
        super().__init__()
        self.newest = newest
        self.times = times

    def commit(self, commit: Commit) -> None:
        if self.times > 0 and any(guard.event_id <= self.newest for guard in commit.guards):
            self.times -= 1
            self.attempts.append(commit)
            late = next(guard for guard in commit.guards if guard.event_id <= self.newest)
            raise OutOfOrder(late.account_id, self.newest)
        super().commit(commit)


def test_a_write_that_an_account_s_newer_event_overtook_is_redrafted_with_ids_above_it_at_once():
    store = NewerFirstStore(FAR_AHEAD)
    sleeps: list[float] = []

    outcome = ledger_over(store, sleeps).transfer(
        caller(), TransferRequest(from_account="alice", to_account="bob", amount=30, currency="EUR")
    )

    first, second = store.attempts
    assert sleeps == []  # nothing to wait for: the ids were stale, not the store busy
    (landed,) = store.landed
    assert landed is second
    assert all(event.event_id > FAR_AHEAD for event in landed.events if event.entity_id == "alice")
    assert {e.event_id for e in first.events}.isdisjoint(e.event_id for e in landed.events)
    # The response and its record name the ids that landed, never the stale ones.
    assert [e["event_id"] for e in json.loads(outcome.body)["events"]] == [e.event_id for e in landed.events]
    assert landed.idempotency.event_keys == tuple((e.entity_id, e.event_id) for e in landed.events)
    assert landed.token == landed.events[0].event_id


class AlwaysOvertakenStore(MemoryStore):
    """Another writer commits a newer event before each of ours: a pathological hot account."""

    def commit(self, commit: Commit) -> None:
        self.attempts.append(commit)
        raise OutOfOrder("alice", new_ulid_after(commit.guards[0].event_id))


def test_an_account_that_is_always_overtaken_ends_in_store_unavailable_not_a_loop():
    store = AlwaysOvertakenStore()

    with pytest.raises(errors.StoreUnavailable):
        ledger_over(store).credit(caller(), "alice", CREDIT)

    assert len(store.attempts) == RetryPolicy().max_remints + 1
    assert store.landed == []


# -- the time budget -------------------------------------------------------------------------


def test_contention_stops_when_the_time_budget_is_spent_even_with_attempts_left():
    store = ContendedStore(math.inf)
    elapsed = [0.0]

    def sleep(seconds: float) -> None:
        elapsed[0] += seconds + 1.0  # each attempt also takes a second

    ledger = Ledger(
        store, REGION, clock=lambda: NOW, sleep=sleep, monotonic=lambda: elapsed[0],
        retry=RetryPolicy(attempts=100, budget_seconds=5.0),
    )  # fmt: skip

    with pytest.raises(errors.StoreUnavailable):
        ledger.credit(caller(), "alice", CREDIT)

    assert elapsed[0] <= 5.0 + 1.0 + RetryPolicy().cap_seconds
    assert len(store.attempts) < 100


def test_an_independent_batch_stops_starting_operations_after_one_retry_budget():
    """Each operation may spend the whole budget; a batch of 100 must still answer within API Gateway's time."""
    from ledger.commands import BatchRequest

    store = ContendedStore(math.inf)
    store.idempotency_records = lambda ids: []
    elapsed = [0.0]

    def sleep(seconds: float) -> None:
        elapsed[0] += seconds

    policy = RetryPolicy()
    ledger = Ledger(store, REGION, clock=lambda: NOW, sleep=sleep, monotonic=lambda: elapsed[0], retry=policy)  # type: ignore[arg-type]
    operations = [{"type": "credit", "account_id": "alice", "amount": 1, "currency": "EUR"}] * 100

    results = ledger.batch(caller(), BatchRequest.model_validate({"mode": "independent", "operations": operations}))

    assert len(results) == 100 and all(isinstance(r, errors.StoreUnavailable) for r in results)
    assert elapsed[0] <= 2 * policy.budget_seconds
    assert len(store.attempts) < 100  # the later operations were not tried at all
