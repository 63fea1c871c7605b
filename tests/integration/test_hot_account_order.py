"""One hot no-overdraft account, eight writers and two tailing readers on DynamoDB Local.

The ledger promises that an account's history in id order is the order in which its
writes committed: every write's guard on the account item requires its event id to
be greater than the account's `last_event_id` and sets it, and a draft overtaken by
a newer commit is redrafted with fresh ids. Three consequences are checked here
under real concurrency (moto serialises everything and would not show the race):

1. the history, replayed in id order, never takes the no-overdraft account below zero;
2. a point-in-time balance (`Checkpoints.fold_at`) never shows it below zero;
3. a reader tailing the history with `after=` / `next_cursor` / `settled_until`
   never misses an event that commits after it has read past its id.

Each writer thread is built like a separate API process: its own boto3 client and
its own `Ledger`. A writer's client is wrapped (test code only) to observe every
`TransactWriteItems` it sends: the client token names the draft, so a new token for
the same Idempotency-Key is a redraft, the same token again is a contention retry.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from composition.root import Root
from ledger import errors
from ledger.commands import MovementRequest, OpenAccountRequest
from ledger.config import Settings, dynamodb_client
from ledger.ids import format_rfc3339, ulid_time
from ledger.service import Caller, HistoryPage, Ledger, Outcome
from runtime.tables import ensure_tables

SEED = 20240611
ACCOUNT = "hot"
CURRENCY = "EUR"
OPENING_CREDIT = 10
WRITERS = 8
OPS_PER_WRITER = 60
DEBIT_SHARE = 0.55  # a little more debit than credit: the balance hovers near zero, where order matters
AMOUNTS = range(1, 6)
TAILERS = 2
PAGE = 7  # small pages, so tailers follow next_cursor often
CLIENT_ATTEMPTS = 30  # a client's retries of one request after StoreUnavailable
POLL_PAUSE = 0.005  # a waiting tailer's pause between polls: Event.wait, ends at once when writers finish
DEADLINE = 120.0  # a hung run fails instead of blocking the suite
SAMPLE_EVERY = 10  # fold_at at the recorded time of every 10th event
LOWEST_INSTANTS = 5  # and at the instants where the replay is lowest: where a negative balance would show


class ObservedClient:
    """A writer's boto3 client, forwarding everything; records each TransactWriteItems it sends."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.sent: list[tuple[str, str | None]] = []  # (idempotency id, client token), in sending order

    def transact_write_items(self, **request: Any) -> Any:
        record_id = next(
            (
                item["Put"]["Item"]["idempotency_id"]["S"]
                for item in request["TransactItems"]
                if "Put" in item and "idempotency_id" in item["Put"]["Item"]
            ),
            "?",
        )
        self.sent.append((record_id, request.get("ClientRequestToken")))
        return self._client.transact_write_items(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@dataclass
class WriterLog:
    succeeded: dict[str, int] = field(default_factory=dict)  # key -> signed amount
    refused: list[str] = field(default_factory=list)  # keys refused with InsufficientFunds
    replayed: int = 0  # successes that came back as a replay of an earlier attempt
    unavailable: int = 0  # StoreUnavailable answers, each followed by a retry with the same key
    sent: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass
class TailerLog:
    seen: list[str] = field(default_factory=list)  # event ids, in the order the tailer received them
    polls: int = 0
    pages: int = 0


def _writer(settings: Settings, index: int, go: threading.Barrier) -> WriterLog:
    client = ObservedClient(dynamodb_client(settings))
    ledger = Root(settings, client=client).ledger
    rng = random.Random(SEED * 100 + index)
    log = WriterLog()
    go.wait()
    for op in range(OPS_PER_WRITER):
        key = f"w{index}-op{op}"
        debit = rng.random() < DEBIT_SHARE
        amount = rng.choice(AMOUNTS)
        request = MovementRequest(amount=amount, currency=CURRENCY)
        write = ledger.debit if debit else ledger.credit
        for _attempt in range(CLIENT_ATTEMPTS):
            try:
                outcome = write(Caller(scope="t", idempotency_key=key), ACCOUNT, request)
            except errors.StoreUnavailable:
                log.unavailable += 1  # what a client does with a 503: the same request, the same key
                continue
            except errors.InsufficientFunds:
                log.refused.append(key)
                break
            assert isinstance(outcome, Outcome) and not outcome.replayed, outcome
            log.succeeded[key] = -amount if debit else amount
            log.replayed += outcome.replayed
            break
        else:
            pytest.fail(f"{key}: still StoreUnavailable after {CLIENT_ATTEMPTS} attempts")
    log.sent = client.sent
    return log


def _tailer(settings: Settings, writers_done: threading.Event, go: threading.Barrier) -> TailerLog:
    """Tail the account: after=<last id seen, else the last settled_until>, following next_cursor."""
    ledger = Root(settings, client=dynamodb_client(settings)).ledger
    log = TailerLog()
    position: str | None = None
    deadline = time.monotonic() + DEADLINE
    go.wait()
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"tailer still polling after {DEADLINE} s")
        final = writers_done.is_set()  # read before polling: a read that starts after the last commit
        log.polls += 1
        page = _read(ledger, log, after=position)
        got: list[str] = []
        while True:
            log.pages += 1
            got.extend(event.event_id for event in page.events)
            if page.next_cursor is None:
                break
            page = _read(ledger, log, cursor=page.next_cursor)
        settled = page.settled_until
        log.seen.extend(got)
        if got:
            position = got[-1]
        elif settled is not None and (position is None or settled > position):
            position = settled
        if final and not got:
            return log
        if not got:
            writers_done.wait(POLL_PAUSE)


def _read(ledger: Ledger, log: TailerLog, **where: str | None) -> HistoryPage:
    """One history page; a refusal fails the test with the tailer's position, not a bare botocore error."""
    try:
        return ledger.history(ACCOUNT, limit=PAGE, **where)
    except Exception as exc:
        last = log.seen[-1] if log.seen else None
        raise AssertionError(
            f"a tailer's history read {where} failed after {log.polls} polls "
            f"(last id seen {last}): {type(exc).__name__}: {exc}"
        ) from exc


def _first_negative_prefix(amounts: list[int]) -> tuple[int, int] | None:
    running = 0
    for index, amount in enumerate(amounts):
        running += amount
        if running < 0:
            return index, running
    return None


def test_hot_account_history_is_commit_order_for_writers_and_tailers(dynamodb_local) -> None:
    started = time.monotonic()
    settings = Settings(stage=f"h{uuid.uuid4().hex[:10]}", endpoint_url=dynamodb_local.endpoint_url)
    setup_client = dynamodb_client(settings)
    ensure_tables(setup_client, settings)
    root = Root(settings, client=setup_client)
    ledger = root.ledger
    ledger.open_account(Caller("t", "open-hot"), OpenAccountRequest(account_id=ACCOUNT, currency=CURRENCY))
    ledger.credit(Caller("t", "fund-hot"), ACCOUNT, MovementRequest(amount=OPENING_CREDIT, currency=CURRENCY))
    print(f"\nseed {SEED}: {WRITERS} writers x {OPS_PER_WRITER} movements, {TAILERS} tailers, page {PAGE}")

    writers_done = threading.Event()
    go = threading.Barrier(WRITERS + TAILERS, timeout=60)  # a thread that dies before it breaks the barrier
    race_started = time.monotonic()
    with ThreadPoolExecutor(WRITERS + TAILERS) as pool:
        tailing = [pool.submit(_tailer, settings, writers_done, go) for _ in range(TAILERS)]
        writing = [pool.submit(_writer, settings, index, go) for index in range(WRITERS)]
        try:
            writers = [future.result() for future in writing]
        finally:
            writers_done.set()
        tailers = [future.result() for future in tailing]
    race_seconds = time.monotonic() - race_started

    history = list(ledger.full_history(ACCOUNT))
    ids = [event.event_id for event in history]
    amounts = [event.signed_amount for event in history]
    by_key = Counter(event.idempotency_key for event in history)
    succeeded = {key: amount for log in writers for key, amount in log.succeeded.items()}
    refused = [key for log in writers for key in log.refused]

    # Drafts per request, from the tokens the writers' clients sent.
    tokens: dict[str, list[str | None]] = {}
    for log in writers:
        for record_id, token in log.sent:
            tokens.setdefault(record_id, []).append(token)
    redrafts = sum(len(set(sent)) - 1 for sent in tokens.values())
    resent = sum(len(sent) - len(set(sent)) for sent in tokens.values())

    # What each check would report, gathered before asserting so a failing run shows all of it.
    full = set(ids)
    missed = [sorted(full - set(log.seen)) for log in tailers]
    backwards = [sum(1 for a, b in zip(log.seen, log.seen[1:]) if b <= a) for log in tailers]
    negative = _first_negative_prefix(amounts)
    times = [ulid_time(event_id) for event_id in ids]
    # fold_at resolves milliseconds: the balance at the end of each millisecond, and its lowest instants.
    at_end_of: dict = {}
    for moment, running in zip(times, itertools.accumulate(amounts)):
        at_end_of[moment] = running
    lowest = sorted(at_end_of, key=lambda moment: at_end_of[moment])[:LOWEST_INSTANTS]
    samples = sorted(set(times[::SAMPLE_EVERY] + times[-1:] + lowest))
    checkpoints = root.checkpoints
    fold_problems = []
    for moment in samples:
        expected = [amount for at, amount in zip(times, amounts) if at <= moment]
        fold = checkpoints.fold_at(ACCOUNT, moment)
        if fold.balance < 0 or fold.balance != sum(expected) or fold.event_count != len(expected):
            fold_problems.append((format_rfc3339(moment), fold.balance, sum(expected), fold.event_count, len(expected)))
    balance = ledger.get_account(ACCOUNT).available

    print(
        f"writers: {len(succeeded)} movements committed ({sum(v > 0 for v in succeeded.values())} credits, "
        f"{sum(v < 0 for v in succeeded.values())} debits), {len(refused)} debits refused for insufficient funds, "
        f"{sum(log.unavailable for log in writers)} StoreUnavailable retried by the client "
        f"({sum(log.replayed for log in writers)} successes were replays)"
    )
    print(
        f"transactions sent: {sum(len(sent) for sent in tokens.values())} for {len(tokens)} requests; "
        f"{redrafts} redrafts with fresh ids (overtaken), {resent} resends of the same draft (contention)"
    )
    print(f"history: {len(history)} events, final balance {balance}, race {race_seconds:.1f} s")
    for number, log in enumerate(tailers):
        print(
            f"tailer {number}: {len(log.seen)} events seen in {log.polls} polls / {log.pages} pages, "
            f"{len(missed[number])} missed, {backwards[number]} not above the previous id"
        )
    print(
        f"replay: lowest prefix {min(itertools.accumulate(amounts))}, first negative {negative}; "
        f"fold_at at {len(samples)} instants (lowest {min(at_end_of.values())}): "
        f"{len(fold_problems)} wrong or negative {fold_problems[:5]}"
    )

    # 1. Tailers saw every event of the account, in strictly increasing id order, none twice.
    for number, log in enumerate(tailers):
        assert not missed[number], f"tailer {number} missed {len(missed[number])} events, e.g. {missed[number][:5]}"
        assert backwards[number] == 0, f"tailer {number} received {backwards[number]} ids not above the previous one"
        assert log.seen == ids, f"tailer {number} did not see exactly the history in id order"
    # 2. The history in id order never takes the no-overdraft account below zero.
    assert negative is None, f"the replay in id order goes to {negative[1]} at event {ids[negative[0]]}"
    # 3. Point-in-time balances are never negative and equal the replay up to that instant.
    assert not fold_problems, f"fold_at (instant, balance, expected, count, expected count): {fold_problems[:10]}"
    # 4. The strong balance is the sum of what succeeded; each key recorded at most once, refused keys never.
    assert balance == OPENING_CREDIT + sum(succeeded.values()) == sum(amounts)
    assert all(count == 1 for count in by_key.values()), [key for key, count in by_key.items() if count > 1]
    assert {key for key in by_key if key.startswith("w")} == set(succeeded)
    assert not set(refused) & set(by_key)
    assert len(succeeded) + len(refused) == WRITERS * OPS_PER_WRITER
    assert len(history) == 2 + len(succeeded)  # the opening, the funding credit, one event per movement
    print(f"total {time.monotonic() - started:.1f} s")
