"""The ledger's use cases: open accounts, record movements, read history.

A write is decided in full before anything is sent: event ids, the response the
caller will get, and the idempotency record that stores that response. Then one
`TransactWriteItems` commits all of it (`EventStore.commit`). If the key was used
before, the stored response is replayed (same request) or the call is refused
(different request). Throttling and transaction conflicts are retried with
jittered backoff under the same client token, so DynamoDB deduplicates a retry
of a commit that in fact landed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Literal

from . import errors
from .accounts import Account
from .cursors import CursorCodec, development_key
from .batches import combined_guards
from .commands import (
    BatchRequest,
    CreditOperation,
    MovementRequest,
    OpenAccountRequest,
    ReversalRequest,
    StatusChangeRequest,
    TransferRequest,
    fingerprint,
)
from .events import AccountOpened, Credited, Debited, Event, StatusChanged
from .ids import format_rfc3339, is_account_id, is_ulid, new_ulid, new_ulid_after, time_range_bounds, ulid_time
from .responses import View, render
from .reversals import check_reversible, legs_complete, reversal_legs
from .store import (
    BalanceGuard,
    Commit,
    Contention,
    EventStore,
    HomedElsewhere,
    IdempotencyRecord,
    KeyAlreadyUsed,
    OutOfOrder,
    ReversalMarker,
    StaleEpoch,
)

MAX_IDEMPOTENCY_KEY = 255
MAX_TRANSACTION_ITEMS = 100  # TransactWriteItems' limit
MAX_PAGE = 1000
DEFAULT_PAGE = 100
Order = Literal["asc", "desc"]


def _anywhere(account_id: str) -> bool:
    return True


@dataclass(frozen=True)
class Caller:
    """Who writes (the principal), the Idempotency-Key they sent, and the accounts they may touch.

    Keys are scoped per principal. `may_touch` is the token's account scope: an
    account outside it is refused exactly as one that does not exist.
    """

    scope: str
    idempotency_key: str | None
    may_touch: Callable[[str], bool] = _anywhere

    def check(self, account_id: str) -> None:
        if not self.may_touch(account_id):
            raise errors.AccountNotFound(f"account {account_id!r} does not exist", account_id=account_id)

    def check_transaction(self, transaction_id: str, events: list[Event]) -> None:
        """Every account of a transaction must be in scope to act on it; none in scope, it does not exist."""
        outside = sorted({e.entity_id for e in events if not self.may_touch(e.entity_id)})
        if len(outside) == len({e.entity_id for e in events}):
            raise errors.TransactionNotFound(f"no transaction {transaction_id}", transaction_id=transaction_id)
        if outside:
            raise errors.Forbidden(f"transaction {transaction_id} moves money on {', '.join(outside)}, which this token may not touch")

    def record_id(self, operation: int | None = None) -> str:
        """The idempotency record's id of this key; of one operation of an independent batch under it.

        An operation's id ends in `#<index>` after the key under its own prefix, so it spells no
        single write's key (`op#` vs `key#`) and no other operation's (the index is the last part).
        """
        key = self.idempotency_key
        if key is None:
            raise errors.IdempotencyKeyMissing("every write needs an Idempotency-Key header")
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= ch <= "~" for ch in key):
            raise errors.IdempotencyKeyInvalid(f"the key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        # Its own prefix, so no scope reaches `reversal#` markers; `#` and `%` escaped in the scope, so no
        # (scope, key) pair spells another's (`org` + `team#k` vs `org#team` + `k`). Scopes without them
        # keep the form records had before the escape, so keys recorded earlier still replay.
        if operation is not None:
            return f"op#{escape_scope(self.scope)}#{key}#{operation}"
        return f"key#{escape_scope(self.scope)}#{key}"


def escape_scope(scope: str) -> str:
    return scope.replace("%", "%25").replace("#", "%23")


@dataclass(frozen=True)
class Outcome:
    """What a write recorded (its result as JSON, and where it is read), or replayed from its record."""

    body: str
    resource: str
    replayed: bool = False


@dataclass(frozen=True)
class HistoryPage:
    events: list[Event]
    next_cursor: str | None
    settled_until: str | None  # the account's newest committed event: the page is complete up to it


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for cancelled transactions: full jitter, capped, within a time budget.

    The budget keeps a write's answer inside API Gateway's 29 s (and a client's
    patience): what is still contended after it is a retryable 503.
    """

    attempts: int = 6
    base_seconds: float = 0.02
    cap_seconds: float = 0.5
    budget_seconds: float = 5.0
    max_remints: int = 50  # fresh ids after a newer event committed first; each costs one round trip

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


class Minter:
    """What a draft learns from refused attempts: ids above each account's newest, epochs, remote homes.

    Calling it mints an event id for an account, above the newest id the account is
    known to hold.
    """

    def __init__(self, epochs: dict[str, int] | None = None, remote: dict[str, int] | None = None) -> None:
        self._floors: dict[str, str] = {}
        self.epochs: dict[str, int] = epochs if epochs is not None else {}
        # Accounts homed elsewhere -> their epoch, as last seen. Kept across requests: a guess gone
        # stale (the home moved here) fails the remote check, and the redraft writes it as home.
        self.remote: dict[str, int] = remote if remote is not None else {}

    def __call__(self, account_id: str) -> str:
        """An id above the account's newest known, and above every id minted for it before (a batch's
        events of one account sort in the order they were asked for)."""
        minted = new_ulid_after(self._floors.get(account_id))
        self._floors[account_id] = minted
        return minted

    def learn(self, refusal: OutOfOrder | HomedElsewhere | StaleEpoch) -> None:
        """What a refused attempt taught: the next draft mints above, checks remotely, or writes under it."""
        account = refusal.account_id
        if isinstance(refusal, OutOfOrder):
            self._floors[account] = max(refusal.newest, self._floors.get(account, refusal.newest))
        elif isinstance(refusal, HomedElsewhere):
            self.remote[account] = refusal.epoch
        else:
            self.remote.pop(account, None)  # homed here now, whatever was last seen
            self.epochs[account] = refusal.epoch


@dataclass(frozen=True)
class Draft:
    """A write decided in full (events, guards, where its result is read), before its idempotency record.

    Its answer is rendered from its events (`ledger.responses`), the first time and on every replay.
    """

    commit: Commit
    view: View
    resource: str

    @property
    def body(self) -> str:
        return render(self.view, self.commit.events)


class Ledger:
    """Use cases over one region's event store."""

    def __init__(
        self,
        store: EventStore,
        region: str,
        *,
        idempotency_ttl: timedelta = timedelta(hours=24),
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        cursors: CursorCodec | None = None,
        regions: tuple[str, ...] = (),
        write_gate: Callable[[], None] = lambda: None,
        observe: Callable[[str, int], None] = lambda name, count: None,
    ) -> None:
        self._store = store
        self._write_gate = write_gate  # raises while this region may not write (failover.lease)
        self._observe = observe  # counts what operators watch ("ConflictsRetried", "Redrafts"); no I/O here
        self._region = region
        self._ttl = idempotency_ttl
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._cursors = cursors or CursorCodec(development_key("dev"))
        self._regions = regions or (region,)
        self._epochs: dict[str, int] = {}  # accounts' write epochs as last seen; learned from refusals
        self._remote: dict[str, int] = {}  # credit legs' accounts homed in other regions, as last seen

    def add_region(self, region: str) -> None:
        """A region joined the deployment: accounts may be homed there from now on."""
        if region not in self._regions:
            self._regions = (*self._regions, region)

    # -- writes -----------------------------------------------------------------

    def open_account(self, caller: Caller, request: OpenAccountRequest) -> Outcome:
        caller.check(request.account_id)
        record_id = caller.record_id()
        home = request.home_region or self._region
        if home not in self._regions:
            raise errors.InvalidRequest(
                f"home_region: {home!r} is not a region of this ledger ({', '.join(self._regions)})",
                errors=[{"field": "home_region", "message": f"one of {', '.join(self._regions)}", "type": "unknown_region"}],
            )
        if home != self._region:
            # The account item's first write is its home's, like every later one: one writer per item.
            raise errors.WrongRegion(
                f"an account homed in {home} is opened in {home}, not {self._region}",
                account_id=request.account_id,
                home_region=home,
            )

        def draft(mint: Minter) -> Draft:
            event_id = mint(request.account_id)
            opened_at = format_rfc3339(ulid_time(event_id))
            event = AccountOpened(
                entity_id=request.account_id,
                event_id=event_id,
                transaction_id=event_id,
                transaction_type="open",
                currency=request.currency,
                allow_overdraft=request.allow_overdraft,
                recorded_at=opened_at,
                region=self._region,
                idempotency_key=caller.idempotency_key or "",
                caller=caller.scope,
                metadata=request.metadata,
                write_epoch=1,
            )
            account = Account(
                account_id=request.account_id,
                currency=request.currency,
                allow_overdraft=request.allow_overdraft,
                metadata=request.metadata,
                home_region=home,
                opened_at=opened_at,
                opened_event_id=event_id,
                last_event_id=event_id,
            )
            return Draft(Commit(events=(event,), new_account=account), "account", f"/accounts/{request.account_id}")

        return self._record(record_id, fingerprint("open_account", None, request), draft)

    def credit(self, caller: Caller, account_id: str, request: MovementRequest) -> Outcome:
        return self._movement(caller, "credit", account_id, request)

    def debit(self, caller: Caller, account_id: str, request: MovementRequest) -> Outcome:
        return self._movement(caller, "debit", account_id, request)

    def _movement(self, caller: Caller, kind: Literal["credit", "debit"], account_id: str, request: MovementRequest) -> Outcome:
        check_account_id(account_id)
        caller.check(account_id)
        record_id = caller.record_id()
        event_class = Credited if kind == "credit" else Debited

        def draft(mint: Minter) -> Draft:
            transaction_id = new_ulid()
            event = event_class(**self._leg(caller, transaction_id, kind, account_id, request, mint(account_id)))
            return self._transaction_draft(mint, transaction_id, (event,))

        return self._record(record_id, fingerprint(kind, account_id, request), draft)

    def transfer(self, caller: Caller, request: TransferRequest) -> Outcome:
        caller.check(request.from_account)
        caller.check(request.to_account)
        record_id = caller.record_id()
        if request.from_account == request.to_account:
            raise errors.SameAccountTransfer("from_account and to_account must differ")

        def draft(mint: Minter) -> Draft:
            transaction_id = new_ulid()
            debit = Debited(
                **self._leg(caller, transaction_id, "transfer", request.from_account, request, mint(request.from_account)),
                counterparty=request.to_account,
            )
            credit = Credited(
                **self._leg(caller, transaction_id, "transfer", request.to_account, request, mint(request.to_account)),
                counterparty=request.from_account,
            )
            return self._transaction_draft(mint, transaction_id, (debit, credit))

        return self._record(record_id, fingerprint("transfer", None, request), draft)

    def batch(self, caller: Caller, request: BatchRequest) -> Outcome | list[Outcome | errors.LedgerError]:
        """Record a batch's operations: all in one transaction (`atomic`), or each on its own (`independent`)."""
        for index, operation in enumerate(request.operations):
            for account_id in _accounts_of(operation):
                caller.check(account_id)
            if isinstance(operation, TransferRequest) and operation.from_account == operation.to_account:
                raise errors.SameAccountTransfer(f"operation {index}: from_account and to_account must differ", operations=[index])
        if request.mode == "atomic":
            return self._atomic_batch(caller, request)
        return self._independent_batch(caller, request)

    def _atomic_batch(self, caller: Caller, request: BatchRequest) -> Outcome:
        """Every operation's events and one guard per account in one `TransactWriteItems`: all or none.

        A hot account written 25 times in a batch takes one guarded update, not 25
        transactions contending for its item.
        """
        record_id = caller.record_id()

        def draft(mint: Minter) -> Draft:
            events: list[Event] = []
            guards: list[BalanceGuard] = []
            for index, operation in enumerate(request.operations):
                transaction_id = new_ulid()
                drafted = self._transaction_draft(mint, transaction_id, self._legs(caller, transaction_id, index, operation, mint))
                events.extend(drafted.commit.events)
                guards.extend(drafted.commit.guards)
            combined = combined_guards(guards)
            items = 1 + len(events) + len(combined)
            if items > MAX_TRANSACTION_ITEMS:
                raise errors.BatchTooLarge(
                    f"an atomic batch writes its events (one per credit or debit, two per transfer), one item per "
                    f"account and its idempotency record in one transaction of at most {MAX_TRANSACTION_ITEMS} items; "
                    f"this one needs {items}: split it, or send it as independent",
                    items=items,
                    limit=MAX_TRANSACTION_ITEMS,
                )
            return Draft(Commit(events=tuple(events), guards=combined), "batch", "/batches")

        try:
            return self._record(record_id, fingerprint("batch", None, request), draft)
        except errors.LedgerError as refused:
            account = refused.extra.get("account_id")
            if account is not None:  # which operations the refusal is about
                refused.extra["operations"] = [i for i, op in enumerate(request.operations) if account in _accounts_of(op)]
            raise

    def _independent_batch(self, caller: Caller, request: BatchRequest) -> list[Outcome | errors.LedgerError]:
        """Each operation recorded or refused on its own, in order, under the batch's key and its index.

        Every operation's record carries the whole batch's fingerprint, so the key reused
        for another batch is refused before anything is written.
        """
        fp = fingerprint("batch", None, request)
        record_ids = [caller.record_id(operation=index) for index in range(len(request.operations))]
        for record in self._store.idempotency_records(record_ids):
            if record.request_hash != fp:
                raise errors.IdempotencyKeyReused("this Idempotency-Key was used for a different request; use a new key")
        results: list[Outcome | errors.LedgerError] = []
        started = self._monotonic()
        for index, operation in enumerate(request.operations):
            if self._monotonic() - started > self._retry.budget_seconds:
                # Each operation may take the whole retry budget; the batch stops starting new ones after one
                # budget, so its answer stays inside API Gateway's and Lambda's time. A retry picks up the rest.
                results.append(errors.StoreUnavailable(f"operation {index} was not tried in time; retry the batch with the same Idempotency-Key"))
                continue

            def draft(mint: Minter, index=index, operation=operation) -> Draft:
                transaction_id = new_ulid()
                return self._transaction_draft(mint, transaction_id, self._legs(caller, transaction_id, index, operation, mint))

            try:
                results.append(self._record(record_ids[index], fp, draft))
            except errors.LedgerError as refused:
                results.append(refused)
        return results

    def _legs(self, caller: Caller, transaction_id: str, index: int, operation, mint: Minter) -> tuple[Event, ...]:
        """The events of operation `index` of a batch, before their epochs."""

        def leg(kind: str, account_id: str) -> dict:
            return {**self._leg(caller, transaction_id, kind, account_id, operation, mint(account_id)), "batch_operation": index}

        if isinstance(operation, TransferRequest):
            return (
                Debited(**leg("transfer", operation.from_account), counterparty=operation.to_account),
                Credited(**leg("transfer", operation.to_account), counterparty=operation.from_account),
            )
        if isinstance(operation, CreditOperation):
            return (Credited(**leg("credit", operation.account_id)),)
        return (Debited(**leg("debit", operation.account_id)),)

    def reverse(self, caller: Caller, transaction_id: str, request: ReversalRequest) -> Outcome:
        """Append events that negate every leg of a transaction; at most once per transaction.

        The original events are never touched: each reversal leg names the original
        in `reverses`, and a once-only marker (committed with the legs) lets
        `reversed_by()` name the reversal. Overdraft and home-region rules apply to
        the reversal's legs as to any other movement. Openings and reversals are
        refused (`NotReversible`); a transfer read from the index with one leg missing
        is read again, then refused as retryable, never half reversed.
        """
        record_id = caller.record_id()
        legs = self._all_legs(transaction_id, caller)

        def draft(mint: Minter) -> Draft:
            reversal_id = new_ulid()
            events = reversal_legs(
                transaction_id,
                legs,
                reversal_id=reversal_id,
                new_event_id=mint,
                region=self._region,
                idempotency_key=caller.idempotency_key or "",
                caller=caller.scope,
                description=request.description,
                metadata=request.metadata,
            )
            marker = ReversalMarker(transaction_id, reversal_id, events[0].recorded_at)
            return self._transaction_draft(mint, reversal_id, events, marker)

        return self._record(record_id, fingerprint("reversal", transaction_id, request), draft)

    def freeze(self, caller: Caller, account_id: str, request: StatusChangeRequest) -> Outcome:
        """Stop every movement of the account (credits, debits, transfers, reversals) until it is unfrozen."""
        return self._change_status(caller, account_id, "frozen", request)

    def unfreeze(self, caller: Caller, account_id: str, request: StatusChangeRequest) -> Outcome:
        return self._change_status(caller, account_id, "open", request)

    def _change_status(self, caller: Caller, account_id: str, status: Literal["open", "frozen"], request: StatusChangeRequest) -> Outcome:
        """An `account.status_changed` event and the account's new status, in one guarded write at its home.

        The guard checks the status it changes from (freezing an account that is not open is
        `account_not_open`, unfreezing one that is not frozen `account_not_frozen`), the
        home, the epoch and the order of the account's events, as every movement does.
        """
        check_account_id(account_id)
        caller.check(account_id)
        record_id = caller.record_id()
        account = self.get_account(account_id)  # its currency; the guard checks the rest as it writes
        kind = "freeze" if status == "frozen" else "unfreeze"

        def draft(mint: Minter) -> Draft:
            event_id = mint(account_id)
            epoch = mint.epochs.get(account_id, account.write_epoch)
            event = StatusChanged(
                entity_id=account_id,
                event_id=event_id,
                transaction_id=event_id,
                transaction_type=kind,
                currency=account.currency,
                recorded_at=format_rfc3339(ulid_time(event_id)),
                region=self._region,
                idempotency_key=caller.idempotency_key or "",
                caller=caller.scope,
                description=request.description,
                metadata=request.metadata,
                write_epoch=epoch,
                status=status,
            )
            guard = BalanceGuard(
                account_id, account.currency, 0, event_id, epoch,
                status_from="open" if status == "frozen" else "frozen", status_to=status,
            )  # fmt: skip
            return Draft(Commit(events=(event,), guards=(guard,)), "transaction", f"/accounts/{account_id}")

        return self._record(record_id, fingerprint(kind, account_id, request), draft)

    def _all_legs(self, transaction_id: str, caller: Caller) -> list[Event]:
        """The transaction's legs once all are visible: the index may show a transfer half-propagated."""
        for attempt in range(self._retry.attempts):
            if attempt:
                self._sleep(self._retry.delay(attempt))
            legs = self.transaction(transaction_id)
            caller.check_transaction(transaction_id, legs)
            check_reversible(transaction_id, legs)
            if legs_complete(legs):
                return legs
        raise errors.StoreUnavailable(
            f"not every leg of transaction {transaction_id} is readable yet; retry with the same Idempotency-Key",
            transaction_id=transaction_id,
        )

    def _leg(self, caller: Caller, transaction_id: str, kind: str, account_id: str, request, event_id: str) -> dict:
        return {
            "entity_id": account_id,
            "event_id": event_id,
            "transaction_id": transaction_id,
            "transaction_type": kind,
            "amount": request.amount,
            "currency": request.currency,
            "recorded_at": format_rfc3339(ulid_time(event_id)),
            "region": self._region,
            "idempotency_key": caller.idempotency_key or "",
            "caller": caller.scope,
            "description": request.description,
            "metadata": request.metadata,
        }

    def _transaction_draft(
        self,
        mint: Minter,
        transaction_id: str,
        legs: tuple[Event, ...],
        reversal: ReversalMarker | None = None,
    ) -> Draft:
        """The legs with their epochs, and a guard per leg.

        A debit (and a lone credit) runs in its account's home, guarded there. The credit
        leg of a transaction between two homes is recorded here as an event only: its
        account is checked but not written, and the event says `available_pending`, so the
        account's home adds it to `available` when the event reaches it (one writer per item).
        """
        events: list[Event] = []
        guards: list[BalanceGuard] = []
        for leg in legs:
            account = leg.entity_id
            remote_ok = len(legs) > 1 and leg.signed_amount > 0
            remote = remote_ok and account in mint.remote  # a debit runs at home, whatever was learned
            epoch = mint.remote[account] if remote else mint.epochs.get(account, 1)
            events.append(leg.model_copy(update={"write_epoch": epoch, "available_pending": True if remote else None}))
            guards.append(BalanceGuard(account, leg.currency, leg.signed_amount, leg.event_id, epoch, remote, remote_ok))
        commit = Commit(events=tuple(events), guards=tuple(guards), reversal=reversal)
        return Draft(commit, "transaction", f"/transactions/{transaction_id}")

    def _record(self, record_id: str, fp: str, draft: Callable[[Minter], Draft]) -> Outcome:
        """Commit the drafted write once; replay or refuse a used key; retry what DynamoDB cannot.

        Two refusals are retried here and nowhere else: a transaction cancelled by a
        concurrent one (`Contention`, which botocore does not retry), with jittered
        backoff under the same ids and client token, within the time budget; and an
        account that committed a newer event meanwhile (`OutOfOrder`), at once, with
        the draft made again from fresh ids above it, so id order stays commit order.
        Throttling and 5xx were retried by botocore already and end the request.
        """
        started = self._monotonic()
        mint = Minter(self._epochs, self._remote)
        now = self._clock()
        commit, drafted = self._sealed(draft(mint), record_id, fp, now)
        contention: Contention | None = None
        attempt = remints = 0
        while True:
            try:
                self._write_gate()  # before every attempt: a lease lost during backoff stops the next
                self._store.commit(commit)
                return Outcome(drafted.body, drafted.resource)
            except (OutOfOrder, HomedElsewhere, StaleEpoch) as stale:
                # The draft was right but stale: a newer event, a home elsewhere, a moved epoch.
                remints += 1
                if remints > self._retry.max_remints:
                    break
                self._observe("Redrafts", 1)
                mint.learn(stale)
                commit, drafted = self._sealed(draft(mint), record_id, fp, now)
                continue
            except KeyAlreadyUsed as used:
                existing = used.record or self._store.get_idempotency_record(record_id)
                if existing is not None:
                    if existing.request_hash != fp:
                        raise errors.IdempotencyKeyReused(
                            "this Idempotency-Key was used for a different request; use a new key"
                        ) from used
                    return self._replay(existing)
                # expired and deleted in between: record afresh (counts as an attempt)
            except Contention as busy:
                contention = busy
                self._observe("ConflictsRetried", 1)
            attempt += 1
            delay = self._retry.delay(attempt)
            if attempt >= self._retry.attempts or self._monotonic() - started + delay > self._retry.budget_seconds:
                break
            self._sleep(delay)
        if contention is not None and contention.on_idempotency_record:
            raise errors.IdempotencyInFlight("a request with this Idempotency-Key is in progress; retry shortly")
        raise errors.StoreUnavailable("the ledger is busy; retry with the same Idempotency-Key")

    def _sealed(self, drafted: Draft, record_id: str, fp: str, now: datetime) -> tuple[Commit, Draft]:
        """The draft's commit with its idempotency record (naming the events its answer is rendered from) and
        client token; and the draft."""
        events = drafted.commit.events
        record = IdempotencyRecord(
            idempotency_id=record_id,
            request_hash=fp,
            view=drafted.view,
            event_keys=tuple((e.entity_id, e.event_id) for e in events),
            resource=drafted.resource,
            recorded_at=format_rfc3339(now),
            expires_at=int((now + self._ttl).timestamp()),
        )
        commit = replace(drafted.commit, idempotency=record, now_epoch=int(now.timestamp()), token=events[0].event_id)
        return commit, drafted

    def _replay(self, record: IdempotencyRecord) -> Outcome:
        """The answer a key recorded, rendered again from the events it names (read consistently).

        Records written before answers were rendered hold the answer itself. Where the record
        is but its events are not (a replica that received the record first), the write is
        recorded: the retry is refused as retryable, never recorded again.
        """
        if record.body is not None:
            return Outcome(record.body, record.resource, replayed=True)
        events = self._store.events_by_keys(record.event_keys)
        if len(events) != len(record.event_keys):
            raise errors.StoreUnavailable(
                "the write this Idempotency-Key recorded is not fully readable in this region yet; retry with the same key"
            )
        return Outcome(render(record.view, events), record.resource, replayed=True)

    # -- reads ------------------------------------------------------------------

    @property
    def cursors(self) -> CursorCodec:
        """The codec of this deployment's cursors, for other read models that page."""
        return self._cursors

    @property
    def store(self) -> EventStore:
        """The event store, for read models (the auditor's timeline) that query the log directly."""
        return self._store

    def get_account(self, account_id: str) -> Account:
        check_account_id(account_id)
        account = self._store.get_account(account_id)
        if account is None:
            raise errors.AccountNotFound(f"account {account_id!r} does not exist", account_id=account_id)
        return account

    def account_ids(self) -> Iterator[str]:
        """Every account id (a scan of the accounts table: for operators, not request paths)."""
        return self._store.account_ids()

    def full_history(self, account_id: str, *, page_size: int = MAX_PAGE) -> Iterator[Event]:
        """Every event of the account in ULID order, read consistently, page by page."""
        check_account_id(account_id)
        low, high = time_range_bounds(None, None)
        after: str | None = None
        while True:
            events, more = self._store.account_events(account_id, low, high, limit=page_size, after=after)
            yield from events
            if not more:
                return
            after = events[-1].event_id

    def reversed_by(self, transaction_id: str) -> str | None:
        """The transaction that reversed this one, if it was reversed."""
        return self._store.reversal_of(transaction_id)

    def transaction(self, transaction_id: str) -> list[Event]:
        if not is_ulid(transaction_id):
            raise errors.InvalidIdentifier("a transaction id is a 26-character ULID")
        events = self._store.transaction_events(transaction_id)
        if not events:
            raise errors.TransactionNotFound(f"no transaction {transaction_id}", transaction_id=transaction_id)
        return events

    def history(
        self,
        account_id: str,
        *,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        order: Order = "asc",
        after: str | None = None,
    ) -> HistoryPage:
        """One page of the account's events in id order, which is commit order, up to where it is settled.

        The account item names its newest committed event (`last_event_id`), read
        consistently first: every event up to it is in the log, and every event that
        commits later gets a greater id. The page stops there and says so
        (`settled_until`), so a reader that resumes after it misses nothing.
        """
        check_account_id(account_id)
        if not 1 <= limit <= MAX_PAGE:
            raise errors.InvalidQuery(f"limit must be between 1 and {MAX_PAGE}")
        if start and end and start > end:
            raise errors.InvalidQuery("from must not be after to")
        if after is not None and (cursor is not None or order != "asc" or not is_ulid(after)):
            raise errors.InvalidQuery("after is an event id, for ascending pages without a cursor")
        low, high = time_range_bounds(start, end)
        resume = self._read_cursor(cursor, account_id, order, low, high) if cursor else after
        settled = self.get_account(account_id).last_event_id  # also: an unknown account is a 404
        top = min(high, settled) if settled else high
        events, more = self._store.account_events(
            account_id, low, top, ascending=order == "asc", limit=limit, after=resume
        ) if low <= top else ([], False)
        next_cursor = self._write_cursor(account_id, order, low, high, events[-1].event_id) if more else None
        return HistoryPage(events, next_cursor, settled)

    def _write_cursor(self, account_id: str, order: str, low: str, high: str, last: str) -> str:
        return self._cursors.seal({"a": account_id, "o": order, "l": low, "h": high, "e": last})

    def _read_cursor(self, cursor: str, account_id: str, order: str, low: str, high: str) -> str:
        """The event id a cursor resumes after; refuses a cursor of another query."""
        fields = self._cursors.open(cursor, {"a", "o", "l", "h", "e"})
        last = fields["e"]
        if (fields["a"], fields["o"], fields["l"], fields["h"]) != (account_id, order, low, high):
            raise errors.InvalidCursor("the cursor belongs to another query; repeat the same account, order and range")
        if not is_ulid(last) or not low <= last <= high:
            raise errors.InvalidCursor("the cursor points outside its query's range")
        return last


def check_account_id(account_id: str) -> None:
    """Refuse an account id that is not of the allowed form (before any read uses it)."""
    if not is_account_id(account_id):
        raise errors.InvalidIdentifier("an account id is 1 to 64 characters of A-Z a-z 0-9 . _ : -")


def _accounts_of(operation) -> tuple[str, ...]:
    if isinstance(operation, TransferRequest):
        return (operation.from_account, operation.to_account)
    return (operation.account_id,)
