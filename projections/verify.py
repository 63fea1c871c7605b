"""Check the view against the log, and rebuild it from the log, per account.

`verify` folds each account's log (consistent reads) and compares it with the view;
an account that differs is looked at again a few times, so a projector that is
merely behind is not reported as drift. `rebuild` sets each differing view to the
fold of its log, only if the view did not move meanwhile (a version check), with
its floor at the newest event folded, so the running projector finds their stream
records, when they come, counted in the log and skips them. Both are safe to run
while the projector runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ledger.service import Ledger

from .balances import BalanceChange
from .store import Balance, BalanceStore, ViewChanged

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Drift:
    account_id: str
    view: Balance | None
    log: BalanceChange | None

    def describe(self) -> str:
        def figures(balance, credits, debits, count) -> str:
            return f"balance={balance} credits={credits} debits={debits} events={count}"

        view = figures(self.view.balance, self.view.credits, self.view.debits, self.view.event_count) if self.view else "no view"
        log = figures(self.log.balance, self.log.credits, self.log.debits, self.log.event_count) if self.log else "no events"
        return f"{self.account_id}: view {view}; log {log}"


@dataclass
class RebuildReport:
    checked: int = 0
    repaired: list[str] = field(default_factory=list)


def _fold(ledger: Ledger, account_id: str) -> tuple[BalanceChange | None, list]:
    events = list(ledger.full_history(account_id))
    return (BalanceChange.of(events) if events else None), events


def _accounts(ledger: Ledger, store: BalanceStore) -> list[str]:
    return sorted(set(ledger.account_ids()) | {b.account_id for b in store.all_balances()})


def verify(
    ledger: Ledger,
    store: BalanceStore,
    *,
    accounts: Iterable[str] | None = None,
    rechecks: int = 3,
    pause: float = 1.0,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Drift]:
    """Every account whose view differs from the fold of its log, after `rechecks` looks."""
    names = list(accounts) if accounts is not None else _accounts(ledger, store)
    suspects: list[str] = []
    for done, account_id in enumerate(names, 1):
        if not _agrees(ledger, store, account_id):
            suspects.append(account_id)
        if progress:
            progress(done, len(names))
    for _ in range(rechecks):
        if not suspects:
            break
        sleep(pause)
        suspects = [a for a in suspects if not _agrees(ledger, store, a)]
    return [Drift(a, store.get(a, consistent=True), _fold(ledger, a)[0]) for a in suspects]


def _agrees(ledger: Ledger, store: BalanceStore, account_id: str) -> bool:
    view = store.get(account_id, consistent=True)
    change, _ = _fold(ledger, account_id)
    return view.matches(change) if view else change is None


def rebuild(
    ledger: Ledger,
    store: BalanceStore,
    *,
    accounts: Iterable[str] | None = None,
    attempts: int = 5,
    progress: Progress | None = None,
) -> RebuildReport:
    """Set every differing view to the fold of its log; return which accounts were repaired."""
    names = list(accounts) if accounts is not None else _accounts(ledger, store)
    report = RebuildReport()
    for done, account_id in enumerate(names, 1):
        for _ in range(attempts):
            view = store.get(account_id, consistent=True)
            change, events = _fold(ledger, account_id)
            if (view.matches(change) if view else change is None):
                break
            currency = change.currency if change else (view.currency if view else "XXX")
            try:
                store.replace(account_id, events, currency, view.version if view else None)
                report.repaired.append(account_id)
                break
            except ViewChanged:
                continue
        else:
            raise RuntimeError(f"the view of {account_id!r} kept moving; run rebuild again")
        report.checked += 1
        if progress:
            progress(done, len(names))
    return report
