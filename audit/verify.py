"""`ledger audit verify`: replay the log and compare it with every stored checkpoint.

A checkpoint was written when its day closed; the log must still fold to the same
figures and digest at that day's end. When it does not, the day's stored event
fingerprints name the event: one whose hash changed was edited, one that is gone
was removed, one that was not there was inserted afterwards. The digest chain
carries a change forward, so only the first differing day of an account is
explained; the later ones are counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ledger.events import Event

from .checkpoints import Checkpoint, Checkpoints, Fold, day_of, fingerprint, split_fingerprints

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Finding:
    account_id: str
    period: str
    what: str  # edited | removed | inserted | changed
    event_id: str | None
    detail: str
    later_periods: int = 0

    def describe(self) -> str:
        event = f" event {self.event_id}" if self.event_id else ""
        later = f"; {self.later_periods} later checkpoint(s) no longer match either" if self.later_periods else ""
        return f"{self.account_id} {self.period}: {self.what}{event}: {self.detail}{later}"


def verify_account(checkpoints: Checkpoints, account_id: str, events: Iterable[Event]) -> Finding | None:
    """The first checkpoint of the account the log no longer matches, explained; None if all match."""
    pending = iter(sorted(checkpoints.all(account_id), key=lambda c: c.period))
    target = next(pending, None)
    state = Fold()
    target_events: list[Event] = []
    mismatches: list[tuple[Checkpoint, Fold, list[Event]]] = []

    def settle(checkpoint: Checkpoint) -> None:
        if (state.digest, state.event_count, state.balance) != (checkpoint.digest, checkpoint.event_count, checkpoint.balance):
            mismatches.append((checkpoint, state.copy(), list(target_events)))

    for event in events:
        day = day_of(event.event_id)
        while target is not None and day > target.period:
            settle(target)
            target, target_events = next(pending, None), []
        if target is None:
            break
        if day == target.period:
            target_events.append(event)
        state.add(event)
    while target is not None:
        settle(target)
        target, target_events = next(pending, None), []
    if not mismatches:
        return None
    checkpoint, replayed, listed = mismatches[0]
    return _explain(checkpoint, replayed, listed, len(mismatches) - 1)


def _explain(checkpoint: Checkpoint, replayed: Fold, day_events: list[Event], later: int) -> Finding:
    figures = (
        f"checkpoint says {checkpoint.event_count} events, balance {checkpoint.balance}, digest {checkpoint.digest[:12]}...; "
        f"the log now gives {replayed.event_count}, {replayed.balance}, {replayed.digest[:12]}..."
    )
    base = {"account_id": checkpoint.account_id, "period": checkpoint.period, "later_periods": later}
    if checkpoint.fingerprints is None:
        return Finding(what="changed", event_id=None, detail=figures, **base)
    stored = dict(split_fingerprints(checkpoint.fingerprints))
    now = {event.event_id: fingerprint(event)[16:] for event in day_events}
    for event_id in sorted(set(stored) | set(now)):
        if event_id not in now:
            return Finding(what="removed", event_id=event_id, detail=figures, **base)
        if event_id not in stored:
            return Finding(what="inserted", event_id=event_id, detail=figures, **base)
        if stored[event_id] != now[event_id]:
            return Finding(what="edited", event_id=event_id, detail=figures, **base)
    # The day itself is intact: an earlier day changed before its checkpoint was built.
    return Finding(what="changed", event_id=None, detail=figures + " (the day's own events are intact)", **base)
