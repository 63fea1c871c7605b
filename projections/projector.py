"""Apply a batch of events to the balances exactly once, in any order, after any crash.

Events are grouped by account; each group goes in one transaction (seen-sets plus
one `ADD` of the group's summed change), up to `max_group` events at a time. When a
group is refused because some event was applied before (a redelivery, a replay,
a retry after a partial failure) or the transaction contended, its events go one
at a time, and an event found already applied counts as done. Nothing depends on
arrival order: addition commutes, and the seen-sets make each event count once;
the view's `as_of` only ever moves to a newer event (see `BalanceStore.apply`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ledger.events import Event

from .store import AlreadyApplied, BalanceStore

EventKey = tuple[str, str]


def key_of(event: Event) -> EventKey:
    return (event.entity_id, event.event_id)


@dataclass
class ProjectionReport:
    """What happened to each event of a batch: applied, skipped as duplicate, or failed."""

    applied: set[EventKey] = field(default_factory=set)
    duplicates: set[EventKey] = field(default_factory=set)
    failed: dict[EventKey, Exception] = field(default_factory=dict)
    transactions: int = 0


class Projector:
    def __init__(self, store: BalanceStore, max_group: int = 50) -> None:
        self._store = store
        self._max_group = max_group

    def project(self, events: Sequence[Event]) -> ProjectionReport:
        report = ProjectionReport()
        unique: dict[EventKey, Event] = {}
        for event in events:
            unique.setdefault(key_of(event), event)
        by_account: dict[str, list[Event]] = {}
        for event in unique.values():
            by_account.setdefault(event.entity_id, []).append(event)
        for group in by_account.values():
            group.sort(key=lambda e: e.event_id)  # oldest first: `as_of` then only moves forward
            for start in range(0, len(group), self._max_group):
                self._apply_group(group[start : start + self._max_group], report)
        return report

    def _apply_group(self, group: list[Event], report: ProjectionReport) -> None:
        if len(group) > 1:
            report.transactions += 1
            try:
                self._store.apply(group)
                report.applied.update(key_of(e) for e in group)
                return
            except Exception:  # noqa: BLE001 - every refusal falls back to one event at a time
                pass
        for event in group:
            report.transactions += 1
            try:
                self._store.apply([event])
                report.applied.add(key_of(event))
            except AlreadyApplied:
                report.duplicates.add(key_of(event))
            except Exception as exc:  # noqa: BLE001 - reported per record to the batch processor
                report.failed[key_of(event)] = exc
