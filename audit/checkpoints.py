"""Period checkpoints: balance and digest at a point in time, at a bounded cost.

A checkpoint of (account, day D) holds the fold of the account's log up to the end
of D (balance, credits, debits, event count), the digest chain after D's last event
(`audit.canonical`), and a compact fingerprint of each of D's events (16-byte ULID
plus the first 4 bytes of the SHA-256 of its canonical line), so `ledger audit
verify` can name the event that was edited, removed or slipped in later. Only days
with events get one.

Checkpoints are built from the log, never from the projection: checkpoint(D) is the
previous checkpoint plus D's events. A day is closed once it ended more than a
settle window ago (default one hour): events are minted in the account's home
region, so an event older than that can only appear after a region fail-over,
and `audit verify` would report it. Writes are put-if-absent; a checkpoint is a
pure function of the log, so racing builders write the same item.

A point-in-time read takes the newest checkpoint of a day before the instant
(one Query, Limit 1) and folds only the events after it: at most one day's worth,
once `ledger audit close` has run for the days before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING

import ulid

from ledger.events import Event
from ledger.fold import Totals
from ledger.ids import format_rfc3339, time_range_bounds, ulid_time
from ledger.store import EventStore

from .canonical import GENESIS_DIGEST, canonical_line, chain

if TYPE_CHECKING:
    from .store import CheckpointStore

SETTLE = timedelta(hours=1)
MAX_FINGERPRINTS = 15_000  # 20 bytes each: a checkpoint item stays far below 400 KB
_FINGERPRINT_BYTES = 20


def fingerprint(event: Event) -> bytes:
    return ulid.parse(event.event_id).bytes + hashlib.sha256(canonical_line(event)).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    account_id: str
    period: str  # the UTC day, YYYY-MM-DD; covers every event before the next day's midnight
    currency: str
    balance: int
    credits: int
    debits: int
    event_count: int
    digest: str
    last_event_id: str
    fingerprints: bytes | None = None  # of this day's events, in order; None when there were too many

    @property
    def ends(self) -> datetime:
        return datetime.combine(date.fromisoformat(self.period) + timedelta(days=1), time(), timezone.utc)


@dataclass
class Fold:
    """The running state of a replay: the domain's fold (`ledger.fold.Totals`) and the digest chain."""

    totals: Totals = field(default_factory=Totals)
    digest: str = GENESIS_DIGEST
    day_fingerprints: list[bytes] = field(default_factory=list)

    @classmethod
    def after(cls, checkpoint: Checkpoint | None) -> Fold:
        if checkpoint is None:
            return cls()
        totals = Totals(
            checkpoint.currency, checkpoint.balance, checkpoint.credits, checkpoint.debits, checkpoint.event_count,
            checkpoint.last_event_id or None,
        )  # fmt: skip
        return cls(totals, checkpoint.digest)

    def copy(self) -> Fold:
        return Fold(replace(self.totals), self.digest)

    def add(self, event: Event) -> None:
        self.totals.add(event)
        self.digest = chain(self.digest, canonical_line(event))
        self.day_fingerprints.append(fingerprint(event))

    # The figures, read through to the fold.
    currency = property(lambda self: self.totals.currency)
    balance = property(lambda self: self.totals.balance)
    credits = property(lambda self: self.totals.credits)
    debits = property(lambda self: self.totals.debits)
    event_count = property(lambda self: self.totals.event_count)
    last_event_id = property(lambda self: self.totals.newest_event_id)

    def checkpoint(self, account_id: str, period: str) -> Checkpoint:
        prints = b"".join(self.day_fingerprints) if len(self.day_fingerprints) <= MAX_FINGERPRINTS else None
        return Checkpoint(
            account_id, period, self.currency or "", self.balance, self.credits, self.debits,
            self.event_count, self.digest, self.last_event_id or "", prints,
        )  # fmt: skip


def day_of(event_id: str) -> str:
    return ulid_time(event_id).date().isoformat()


class Checkpoints:
    """Checkpoints built from the log (`events`), kept in their own store."""

    def __init__(
        self,
        store: CheckpointStore,
        events: EventStore,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._store = store
        self._events_store = events
        self._clock = clock

    # -- reads ------------------------------------------------------------------

    def before(self, account_id: str, moment: datetime) -> Checkpoint | None:
        """The newest checkpoint whose day ended at or before `moment`."""
        end_day = moment.astimezone(timezone.utc).date()  # days strictly before it ended by `moment`
        return self._store.newest_before(account_id, end_day.isoformat())

    def all(self, account_id: str) -> Iterator[Checkpoint]:
        return self._store.all(account_id)

    def fold_at(self, account_id: str, moment: datetime, settled_until: str | None = None) -> Fold:
        """The fold and digest of every event up to `moment` (inclusive, to the millisecond).

        With `settled_until` (the account's newest committed event), events after it
        are left out: a write still in flight may commit later with an id just
        before `moment`, and the answer must not change when it does.
        """
        checkpoint = self.before(account_id, moment)
        state = Fold.after(checkpoint)
        start = checkpoint.ends if checkpoint else None
        for event in self._events(account_id, start, moment):
            if settled_until is not None and event.event_id > settled_until:
                break
            state.add(event)
        return state

    def _events(self, account_id: str, start: datetime | None, end: datetime | None) -> Iterator[Event]:
        low, high = time_range_bounds(start, end)
        after: str | None = None
        while True:
            events, more = self._events_store.account_events(account_id, low, high, limit=1000, after=after)
            yield from events
            if not more:
                return
            after = events[-1].event_id

    # -- writes -----------------------------------------------------------------

    def closed_until(self) -> datetime:
        """Days that ended before this instant are closed."""
        return self._clock() - SETTLE

    def close(self, account_id: str, until: datetime | None = None) -> int:
        """Write the missing checkpoints of every closed day with events; return how many were written."""
        limit = min(until or self.closed_until(), self.closed_until())
        newest = self.before(account_id, limit)
        state = Fold.after(newest)
        written = 0
        current: str | None = None
        for event in self._events(account_id, newest.ends if newest else None, limit):
            day = day_of(event.event_id)
            if current is not None and day != current:
                written += self._put(state.checkpoint(account_id, current))
                state.day_fingerprints = []
            current = day
            state.add(event)
        if current is not None and _day_end(current) <= limit:
            written += self._put(state.checkpoint(account_id, current))
        return written

    def _put(self, checkpoint: Checkpoint) -> int:
        # Put-if-absent: another builder may have written it, the same item from the same log.
        return int(self._store.put_new(checkpoint, format_rfc3339(self._clock())))


def _day_end(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day) + timedelta(days=1), time(), timezone.utc)


def split_fingerprints(blob: bytes) -> list[tuple[str, bytes]]:
    """(event id, 4-byte hash) pairs of a checkpoint's fingerprints."""
    pairs = []
    for at in range(0, len(blob), _FINGERPRINT_BYTES):
        chunk = blob[at : at + _FINGERPRINT_BYTES]
        pairs.append((ulid.from_bytes(chunk[:16]).str, chunk[16:]))
    return pairs
