"""Apply a batch of events to the balances exactly once, in any order, after any crash.

Events are grouped by account; each group is one write of the account's balance item,
which decides for itself, on its own dedupe record, which events are new
(`BalanceStore.apply_groups`). The accounts of a batch are spread over `workers`
concurrent workers, each writing its share one conditional PutItem per account: a
batch of 100 events over 100 accounts is four writes in flight at a time, not 100
one after the other. Where each request is a commit to disk (DynamoDB Local), the
store writes them instead in one transaction of up to 100 items. Within an account nothing depends on arrival order: the view
counts every event once whatever the order, and its `as_of` only ever moves to a
newer event.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Lock

from ledger.events import Event

from .store import BalanceStore, Outcome

EventKey = tuple[str, str]


def key_of(event: Event) -> EventKey:
    return (event.entity_id, event.event_id)


@dataclass
class ProjectionReport:
    """What happened to each event of a batch: applied, skipped as duplicate, or failed."""

    applied: set[EventKey] = field(default_factory=set)
    duplicates: set[EventKey] = field(default_factory=set)
    failed: dict[EventKey, Exception] = field(default_factory=dict)
    writes: int = 0  # write requests to the balances table, refused ones included
    log_reads: int = 0  # reads of an account's log, for events below its view's floor

    def add(self, group: Sequence[Event], outcome: Outcome) -> None:
        self.applied.update(key_of(e) for e in outcome.applied)
        self.duplicates.update(key_of(e) for e in outcome.duplicates)
        for event in group:
            failure = outcome.failed.get(event.event_id)
            if failure is not None:
                self.failed[key_of(event)] = failure
        self.writes += outcome.writes
        self.log_reads += outcome.log_reads


class Projector:
    """Project batches of events into a `BalanceStore`: one write per account, `workers` requests at a time."""

    def __init__(self, store: BalanceStore, workers: int = 4) -> None:
        self._store = store
        self._workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = Lock()

    def project(self, events: Sequence[Event]) -> ProjectionReport:
        unique: dict[EventKey, Event] = {}
        for event in events:
            unique.setdefault(key_of(event), event)
        by_account: dict[str, list[Event]] = {}
        for event in unique.values():
            by_account.setdefault(event.entity_id, []).append(event)
        groups = [sorted(group, key=lambda e: e.event_id) for group in by_account.values()]
        size = self._store.request_size
        if self._store.spreads:  # every worker busy
            size = max(1, min(size, -(-len(groups) // self._workers)))
        chunks = [groups[start : start + size] for start in range(0, len(groups), size)]
        report = ProjectionReport()
        if len(chunks) <= 1 or self._workers == 1:
            for chunk in chunks:
                self._add(report, chunk, self._apply(chunk))
            return report
        futures = [(chunk, self._executor().submit(self._apply, chunk)) for chunk in chunks]
        died: BaseException | None = None
        for chunk, future in futures:  # wait for every chunk, even if one died, before anything is raised
            try:
                self._add(report, chunk, future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once every chunk is done
                died = died or exc
        if died is not None:
            raise died
        return report

    def _apply(self, chunk: list[list[Event]]) -> dict[str, Outcome]:
        return self._store.apply_groups(chunk)

    @staticmethod
    def _add(report: ProjectionReport, chunk: list[list[Event]], outcomes: dict[str, Outcome]) -> None:
        for group in chunk:
            report.add(group, outcomes[group[0].entity_id])

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="projector")
            return self._pool



