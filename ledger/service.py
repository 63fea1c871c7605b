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

import base64
import binascii
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from . import errors
from .accounts import Account
from .commands import MovementRequest, OpenAccountRequest, ReversalRequest, TransferRequest, fingerprint
from .events import AccountOpened, Credited, Debited, Event
from .ids import format_rfc3339, is_account_id, is_ulid, new_ulid, time_range_bounds, ulid_time
from .reversals import check_reversible, legs_complete, reversal_legs
from .store import BalanceGuard, Commit, Contention, EventStore, IdempotencyRecord, KeyAlreadyUsed, ReversalMarker

MAX_IDEMPOTENCY_KEY = 255
MAX_PAGE = 1000
DEFAULT_PAGE = 100
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class Caller:
    """Who writes, and the Idempotency-Key they sent; keys are scoped per caller."""

    scope: str
    idempotency_key: str | None

    def record_id(self) -> str:
        key = self.idempotency_key
        if key is None:
            raise errors.IdempotencyKeyMissing("every write needs an Idempotency-Key header")
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= ch <= "~" for ch in key):
            raise errors.IdempotencyKeyInvalid(f"the key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
        return f"key#{self.scope}#{key}"  # its own prefix: no scope can reach `reversal#` markers


@dataclass(frozen=True)
class Outcome:
    """A write's HTTP-level result, as stored with its idempotency record."""

    status_code: int
    body: str
    headers: dict[str, str]
    replayed: bool = False


@dataclass(frozen=True)
class HistoryPage:
    events: list[Event]
    next_cursor: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for throttling and conflicts: full jitter, capped."""

    attempts: int = 6
    base_seconds: float = 0.02
    cap_seconds: float = 0.5

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


def _json(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _event_json(event: Event) -> dict:
    return event.model_dump(mode="json", exclude_none=True)


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
    ) -> None:
        self._store = store
        self._region = region
        self._ttl = idempotency_ttl
        self._retry = retry
        self._clock = clock
        self._sleep = sleep

    # -- writes -----------------------------------------------------------------

    def open_account(self, caller: Caller, request: OpenAccountRequest) -> Outcome:
        record_id = caller.record_id()
        event_id = new_ulid()
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
            metadata=request.metadata,
        )
        account = Account(
            account_id=request.account_id,
            currency=request.currency,
            allow_overdraft=request.allow_overdraft,
            metadata=request.metadata,
            home_region=self._region,
            opened_at=opened_at,
            opened_event_id=event_id,
        )
        body = _json(account.public())
        headers = {"Location": f"/accounts/{request.account_id}"}
        commit = Commit(events=(event,), new_account=account)
        return self._record(record_id, fingerprint("open_account", None, request), commit, body, headers)

    def credit(self, caller: Caller, account_id: str, request: MovementRequest) -> Outcome:
        return self._movement(caller, "credit", account_id, request)

    def debit(self, caller: Caller, account_id: str, request: MovementRequest) -> Outcome:
        return self._movement(caller, "debit", account_id, request)

    def _movement(self, caller: Caller, kind: Literal["credit", "debit"], account_id: str, request: MovementRequest) -> Outcome:
        check_account_id(account_id)
        record_id = caller.record_id()
        transaction_id = new_ulid()
        event_class = Credited if kind == "credit" else Debited
        event = event_class(**self._leg(caller, transaction_id, kind, account_id, request))
        return self._record_transaction(record_id, fingerprint(kind, account_id, request), transaction_id, kind, (event,))

    def transfer(self, caller: Caller, request: TransferRequest) -> Outcome:
        record_id = caller.record_id()
        if request.from_account == request.to_account:
            raise errors.SameAccountTransfer("from_account and to_account must differ")
        transaction_id = new_ulid()
        debit = Debited(
            **self._leg(caller, transaction_id, "transfer", request.from_account, request),
            counterparty=request.to_account,
        )
        credit = Credited(
            **self._leg(caller, transaction_id, "transfer", request.to_account, request),
            counterparty=request.from_account,
        )
        fp = fingerprint("transfer", None, request)
        return self._record_transaction(record_id, fp, transaction_id, "transfer", (debit, credit))

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
        legs = self._all_legs(transaction_id)
        reversal_id = new_ulid()
        events = reversal_legs(
            transaction_id,
            legs,
            reversal_id=reversal_id,
            new_event_id=new_ulid,
            region=self._region,
            idempotency_key=caller.idempotency_key or "",
            description=request.description,
            metadata=request.metadata,
        )
        marker = ReversalMarker(transaction_id, reversal_id, events[0].recorded_at)
        fp = fingerprint("reversal", transaction_id, request)
        body_extra = {"reverses": transaction_id}
        return self._record_transaction(record_id, fp, reversal_id, "reversal", events, marker, body_extra)

    def _all_legs(self, transaction_id: str) -> list[Event]:
        """The transaction's legs once all are visible: the index may show a transfer half-propagated."""
        for attempt in range(self._retry.attempts):
            if attempt:
                self._sleep(self._retry.delay(attempt))
            legs = self.transaction(transaction_id)
            check_reversible(transaction_id, legs)
            if legs_complete(legs):
                return legs
        raise errors.StoreUnavailable(
            f"not every leg of transaction {transaction_id} is readable yet; retry with the same Idempotency-Key",
            transaction_id=transaction_id,
        )

    def _leg(self, caller: Caller, transaction_id: str, kind: str, account_id: str, request) -> dict:
        event_id = new_ulid()
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
            "description": request.description,
            "metadata": request.metadata,
        }

    def _record_transaction(
        self,
        record_id: str,
        fp: str,
        transaction_id: str,
        kind: str,
        events: tuple[Event, ...],
        reversal: ReversalMarker | None = None,
        body_extra: dict | None = None,
    ) -> Outcome:
        guards = tuple(BalanceGuard(e.entity_id, e.currency, e.signed_amount) for e in events)
        body = _json(
            {"transaction_id": transaction_id, "type": kind, **(body_extra or {}), "events": [_event_json(e) for e in events]}
        )
        headers = {"Location": f"/transactions/{transaction_id}"}
        return self._record(record_id, fp, Commit(events=events, guards=guards, reversal=reversal), body, headers)

    def _record(self, record_id: str, fp: str, commit: Commit, body: str, headers: dict[str, str]) -> Outcome:
        now = self._clock()
        record = IdempotencyRecord(
            idempotency_id=record_id,
            request_hash=fp,
            status_code=201,
            body=body,
            headers=headers,
            recorded_at=format_rfc3339(now),
            expires_at=int((now + self._ttl).timestamp()),
        )
        commit = Commit(
            events=commit.events,
            idempotency=record,
            new_account=commit.new_account,
            guards=commit.guards,
            reversal=commit.reversal,
            now_epoch=int(now.timestamp()),
            token=commit.events[0].event_id,
        )
        contention: Contention | None = None
        for attempt in range(self._retry.attempts):
            if attempt:
                self._sleep(self._retry.delay(attempt))
            try:
                self._store.commit(commit)
                return Outcome(record.status_code, body, headers)
            except KeyAlreadyUsed as used:
                existing = used.record or self._store.get_idempotency_record(record_id)
                if existing is None:  # expired and deleted in between: record afresh
                    continue
                if existing.request_hash != fp:
                    raise errors.IdempotencyKeyReused(
                        "this Idempotency-Key was used for a different request; use a new key"
                    ) from used
                return Outcome(existing.status_code, existing.body, existing.headers, replayed=True)
            except Contention as busy:
                contention = busy
        if contention is not None and contention.on_idempotency_record:
            raise errors.IdempotencyInFlight("a request with this Idempotency-Key is in progress; retry shortly")
        raise errors.StoreUnavailable("the ledger is busy; retry with the same Idempotency-Key")

    # -- reads ------------------------------------------------------------------

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
    ) -> HistoryPage:
        """One page of the account's events in ULID (= record time) order."""
        check_account_id(account_id)
        if not 1 <= limit <= MAX_PAGE:
            raise errors.InvalidQuery(f"limit must be between 1 and {MAX_PAGE}")
        if start and end and start > end:
            raise errors.InvalidQuery("from must not be after to")
        low, high = time_range_bounds(start, end)
        after = _read_cursor(cursor, account_id, order, low, high) if cursor else None
        events, more = self._store.account_events(
            account_id, low, high, ascending=order == "asc", limit=limit, after=after
        )
        if not events and after is None:
            self.get_account(account_id)  # an empty page of an unknown account is a 404
        next_cursor = _write_cursor(account_id, order, low, high, events[-1].event_id) if more else None
        return HistoryPage(events, next_cursor)


def check_account_id(account_id: str) -> None:
    """Refuse an account id that is not of the allowed form (before any read uses it)."""
    if not is_account_id(account_id):
        raise errors.InvalidIdentifier("an account id is 1 to 64 characters of A-Z a-z 0-9 . _ : -")


def _write_cursor(account_id: str, order: str, low: str, high: str, last: str) -> str:
    raw = _json({"a": account_id, "o": order, "l": low, "h": high, "e": last}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str, account_id: str, order: str, low: str, high: str) -> str:
    """The event id a cursor resumes after; refuses a cursor of another query."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        last = data["e"]
        same_query = (data["a"], data["o"], data["l"], data["h"]) == (account_id, order, low, high)
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise errors.InvalidCursor("the cursor is not one this service issued") from exc
    if not same_query or not is_ulid(last) or not low <= last <= high:
        raise errors.InvalidCursor("the cursor belongs to another query; repeat the same account, order and range")
    return last
