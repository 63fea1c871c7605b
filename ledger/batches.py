"""Several movements of one account in one commit share one guard.

A transaction may write an item once, so a batch's events of one account are
guarded by one update of its account item: their summed change, the id of the
first (the account's newest committed event must be below it) and of the last
(which the item then names), and what `available` must hold so that no prefix of
them, in id order, takes a no-overdraft account below zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .store import BalanceGuard


def combined_guards(guards: Sequence[BalanceGuard]) -> tuple[BalanceGuard, ...]:
    """One guard per account, in the order accounts first appear."""
    by_account: dict[str, list[BalanceGuard]] = {}
    for guard in guards:
        by_account.setdefault(guard.account_id, []).append(guard)
    return tuple(_combined(group) for group in by_account.values())


def _combined(group: list[BalanceGuard]) -> BalanceGuard:
    if len(group) == 1:
        return group[0]
    ordered = sorted(group, key=lambda g: g.event_id)
    running = deficit = 0
    for guard in ordered:
        running += guard.delta
        deficit = max(deficit, -running)
    first, last = ordered[0], ordered[-1]
    remote = all(g.remote for g in group)  # credits checked at a home elsewhere; any other leg is written here
    return replace(
        last,
        delta=running,
        first_event_id=first.event_id,
        needed=deficit,
        remote=remote,
        remote_ok=all(g.remote_ok for g in group),
        epoch=next((g.epoch for g in ordered if not g.remote), last.epoch),
    )
