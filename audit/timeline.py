"""Every event of a time window across all accounts, in ULID order, at a cost bounded by the page.

The events table's `by_time` index is keyed by one of `TIME_SHARDS` shards drawn from
the event id and sorted by event id. A window, whatever its length, is one range
query per shard, merged in order: an empty year costs `TIME_SHARDS` requests, not a
query per day and shard. A page asks each shard first for its share of the page
(`limit / TIME_SHARDS`, plus one to look ahead), then refills only the shard the
merge runs dry on, with half of what the page still lacks, so it reads little more than it
returns however the events fall. The index projects keys only: the merge orders
positions, and only the events the page returns are read from the table, 100 to a
request. An export reads each shard in large pages: its cost is linear in the events
exported.

Ties on the event id are broken by account, so `(event_id, entity_id)` is a total
order and a resume point (ties need two regions to draw the same 80 random bits in
one millisecond).

Index reads are eventually consistent, and a write commits a moment after its id
was minted, so the newest events may not be in the index yet. Every page says up to
when it is settled (`settled_until`, `SETTLE` before now): a reader that tails the
timeline reads again from there (deduplicating by event id and account) and misses
nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ledger import errors
from ledger.cursors import CursorCodec
from ledger.events import Event
from ledger.ids import format_rfc3339, is_account_id, is_ulid, parse_rfc3339, time_range_bounds
from ledger.schema import TIME_SHARDS
from ledger.store import EventStore

MAX_WINDOW = timedelta(days=366)
MAX_QUERY_LIMIT = 1000
READ_BATCH = 100  # events read from the table per request (BatchGetItem's limit)
# How long after its id's instant an event may still appear in the index: the write
# path's time budget (a commit lands at most seconds after it minted its ids), clock
# differences between writers, and the index's own propagation, with room to spare.
SETTLE = timedelta(seconds=30)
Position = tuple[str, str]  # (event_id, entity_id): the timeline's order
Want = Callable[[bool], int]  # how many items to ask a shard for (first ask or a refill)


def position_of(event: Event) -> Position:
    return (event.event_id, event.entity_id)


@dataclass(frozen=True)
class TimelinePage:
    events: list[Event]
    next_cursor: str | None
    settled_until: datetime


class Timeline:
    def __init__(
        self,
        store: EventStore,
        cursors: CursorCodec,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._store = store
        self._cursors = cursors
        self._clock = clock

    def settled_until(self) -> datetime:
        """Every event whose id is at or before this instant is in the index by now."""
        return self._clock() - SETTLE

    def events(self, start: datetime, end: datetime, after: Position | None = None) -> Iterator[Event]:
        """Every event recorded in [start, end] (inclusive, to the millisecond), after `after`, in large pages."""
        chunk: list[Position] = []
        for position in self._merged(start, end, after, lambda _first: MAX_QUERY_LIMIT):
            chunk.append(position)
            if len(chunk) == READ_BATCH:
                yield from self._store.events_at(chunk)
                chunk = []
        yield from self._store.events_at(chunk)

    def page(self, start: datetime, end: datetime | None, limit: int, cursor: str | None = None) -> TimelinePage:
        """One page, with a cursor bound to this window while more remain.

        `end` defaults to the settled now; a cursor of such a page carries its end, so
        the next page is asked for without `to` as well.
        """
        settled = self.settled_until()
        fields = self._cursors.open(cursor, {"w0", "w1", "e", "a"}) if cursor else None
        if end is None:
            end = _cursor_end(fields) if fields else settled
        if end < start:
            raise errors.InvalidQuery("from must not be after to")
        if end - start > MAX_WINDOW:
            raise errors.InvalidQuery("the window is at most 366 days; page through longer periods window by window")
        window = (format_rfc3339(start), format_rfc3339(end))
        after = self._position(fields, window, start, end) if fields else None
        found: list[Position] = []

        def want(first: bool) -> int:
            lacking = limit + 1 - len(found)  # one more than the page, to know whether more remain
            share = -(-lacking // TIME_SHARDS) + 1 if first else -(-lacking // 2) + 1
            return max(2, min(share, MAX_QUERY_LIMIT))

        for position in self._merged(start, end, after, want):
            found.append(position)
            if len(found) > limit:
                break
        more = len(found) > limit
        found = found[:limit]
        next_cursor = self._write_cursor(window, found[-1]) if more else None
        return TimelinePage(self._store.events_at(found), next_cursor, min(settled, end))

    def _merged(self, start: datetime, end: datetime, after: Position | None, want: Want) -> Iterator[Position]:
        """The positions of the window's events in timeline order: the shards' index entries (keys only), merged."""
        low, high = time_range_bounds(start, end)
        if after is not None:
            low = max(low, after[0])
        shards = [self._shard(f"{n:02d}", low, high, want) for n in range(TIME_SHARDS)]
        for position in heapq.merge(*shards):
            if after is None or position > after:
                yield position

    def _shard(self, shard: str, low: str, high: str, want: Want) -> Iterator[Position]:
        resume: Position | None = None
        first = True
        while True:
            positions, resume = self._store.time_shard_positions(shard, low, high, want(first), resume)
            first = False
            yield from positions
            if resume is None:
                return

    def _write_cursor(self, window: tuple[str, str], position: Position) -> str:
        return self._cursors.seal({"w0": window[0], "w1": window[1], "e": position[0], "a": position[1]})

    @staticmethod
    def _position(fields: dict[str, str], window: tuple[str, str], start: datetime, end: datetime) -> Position:
        """Where a cursor resumes, once it is known to be this window's."""
        if (fields["w0"], fields["w1"]) != window:
            raise errors.InvalidCursor("the cursor belongs to another query; repeat the same from and to")
        low, high = time_range_bounds(start, end)
        if not is_ulid(fields["e"]) or not is_account_id(fields["a"]) or not low <= fields["e"] <= high:
            raise errors.InvalidCursor("the cursor points outside its window")
        return (fields["e"], fields["a"])


def _cursor_end(fields: dict[str, str]) -> datetime:
    try:
        return parse_rfc3339(fields["w1"])
    except ValueError as exc:
        raise errors.InvalidCursor("the cursor's window is not readable") from exc
