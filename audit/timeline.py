"""Every event of a time window across all accounts, in ULID order.

The events table's `by_time_bucket` index is partitioned by `YYYY-MM-DD#NN`: the
UTC day of the event's ULID and one of `TIME_BUCKET_SHARDS` shards, so a busy day
is spread over several partitions and none is hot. A window is read day by day;
within a day the shards are queried lazily, page by page, and merged in order, so
a page of the timeline reads only what it returns (plus one look-ahead item per
shard). Ties on the event id are broken by
account, so `(event_id, entity_id)` is a total order and a resume point (ties need
two regions to draw the same 80 random bits in one millisecond).

Index reads are eventually consistent: an event recorded a moment ago may not be
in the timeline yet. Auditors read closed windows; the per-account history reads
the table itself, consistently.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ledger import errors
from ledger.events import Event
from ledger.ids import format_rfc3339, is_account_id, is_ulid, time_range_bounds, ulid_time
from ledger.schema import TIME_BUCKET_SHARDS
from ledger.store import EventStore

MAX_WINDOW = timedelta(days=366)
Position = tuple[str, str]  # (event_id, entity_id): the timeline's order


def position_of(event: Event) -> Position:
    return (event.event_id, event.entity_id)


@dataclass(frozen=True)
class TimelinePage:
    events: list[Event]
    next_cursor: str | None


class Timeline:
    def __init__(self, store: EventStore, page_size: int = 200) -> None:
        self._store = store
        self._page_size = page_size

    def events(self, start: datetime, end: datetime, after: Position | None = None) -> Iterator[Event]:
        """Every event recorded in [start, end] (inclusive, to the millisecond), after `after`."""
        low, high = time_range_bounds(start, end)
        if after is not None:
            low = max(low, after[0])
        day = start.astimezone(timezone.utc).date()
        if after is not None:
            day = max(day, ulid_time(after[0]).date())  # days before the resume point hold nothing after it
        last_day = end.astimezone(timezone.utc).date()
        while day <= last_day:
            shards = [self._shard(f"{day.isoformat()}#{n:02d}", low, high) for n in range(TIME_BUCKET_SHARDS)]
            for event in heapq.merge(*shards, key=position_of):
                if after is None or position_of(event) > after:
                    yield event
            day += timedelta(days=1)

    def page(self, start: datetime, end: datetime, limit: int, cursor: str | None = None) -> TimelinePage:
        """One page of `events`, with a cursor bound to this window while more remain."""
        if end < start:
            raise errors.InvalidQuery("from must not be after to")
        if end - start > MAX_WINDOW:
            raise errors.InvalidQuery("the window is at most 366 days; page through longer periods window by window")
        window = (format_rfc3339(start), format_rfc3339(end))
        after = _read_cursor(cursor, window) if cursor else None
        found: list[Event] = []
        for event in self.events(start, end, after):
            found.append(event)
            if len(found) > limit:
                break
        more = len(found) > limit
        found = found[:limit]
        return TimelinePage(found, _write_cursor(window, position_of(found[-1])) if more else None)

    def _shard(self, bucket: str, low: str, high: str) -> Iterator[Event]:
        return self._store.time_bucket_events(bucket, low, high, self._page_size)


def _write_cursor(window: tuple[str, str], position: Position) -> str:
    raw = json.dumps({"w": list(window), "e": position[0], "a": position[1]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str, window: tuple[str, str]) -> Position:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = (data["e"], data["a"])
        same = tuple(data["w"]) == window
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise errors.InvalidCursor("the cursor is not one this service issued") from exc
    if not same or not is_ulid(position[0]) or not is_account_id(position[1]):
        raise errors.InvalidCursor("the cursor belongs to another query; repeat the same from and to")
    return position
