"""Random workloads and schedules for the multi-region simulation, and the invariants they must keep.

`run_schedule(world, seed)` drives a `World` with one random source: accounts homed
in every region, credits, debits, transfers (cross-home ones included), reversals,
client retries sent to the same or another region, replication capture and delivery
with lags, partitions and heals, replicator and projector crashes, projector polls.
It keeps a model of what was acknowledged. `check_converged` then proves, after
healing and draining, what Global Tables and the one-writer rule promise.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from audit.canonical import digest_of
from ledger import errors
from ledger.commands import MovementRequest, OpenAccountRequest, ReversalRequest, TransferRequest
from ledger.service import Caller

from .simulation import World, without_stamps

SCOPE = "sim"


@dataclass
class Model:
    """What the clients were told: per acknowledged key, the transaction and its legs."""

    accounts: dict[str, tuple[str, bool]] = field(default_factory=dict)  # account -> (home, overdraft allowed)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> recorded body
    sent: list[tuple[str, str, Any]] = field(default_factory=list)  # (key, kind, request) for retries
    refused: Counter = field(default_factory=Counter)

    def no_overdraft(self) -> set[str]:
        return {account for account, (_, overdraft) in self.accounts.items() if not overdraft}


def _call(ledger: Any, kind: str, caller: Caller, request: Any) -> Any:
    if kind == "credit":
        return ledger.credit(caller, request[0], request[1])
    if kind == "debit":
        return ledger.debit(caller, request[0], request[1])
    if kind == "transfer":
        return ledger.transfer(caller, request)
    return ledger.reverse(caller, request[0], request[1])


def _home_of(model: Model, kind: str, request: Any) -> str:
    if kind == "transfer":
        return model.accounts[request.from_account][0]
    if kind == "reversal":
        return ""  # decided by its legs; any region may be tried
    return model.accounts[request[0]][0]


def open_accounts(world: World, model: Model, per_region: int = 2) -> None:
    for region in world.names:
        for n in range(per_region):
            account = f"{region[:2]}{region[-1]}-{n}"
            overdraft = n % 2 == 1
            world.regions[region].root.ledger.open_account(
                Caller(SCOPE, f"open-{account}"), OpenAccountRequest(account_id=account, currency="EUR", allow_overdraft=overdraft)
            )
            model.accounts[account] = (region, overdraft)


def _write(world: World, model: Model, rng: random.Random, n: int) -> None:
    names = list(model.accounts)
    if model.sent and rng.random() < 0.15:  # a client retry, to the same or another region
        key, kind, request = rng.choice(model.sent)
    else:
        key = f"w{n}"
        kind = rng.choices(["credit", "debit", "transfer", "reversal"], [3, 3, 4, 1])[0]
        amount = rng.choice([1, 5, 20, 100])
        if kind in ("credit", "debit"):
            request = (rng.choice(names), MovementRequest(amount=amount, currency="EUR"))
        elif kind == "transfer":
            source, target = rng.sample(names, 2)
            request = TransferRequest(from_account=source, to_account=target, amount=amount, currency="EUR")
        else:
            reversible = [body for body in model.acked.values() if body.get("type") in ("credit", "debit", "transfer")]
            if not reversible:
                return
            request = (rng.choice(reversible)["transaction_id"], ReversalRequest())
        model.sent.append((key, kind, request))
    home = _home_of(model, kind, request)
    region = home if home and rng.random() < 0.8 else rng.choice(world.names)
    try:
        outcome = _call(world.regions[region].root.ledger, kind, Caller(SCOPE, key), request)
    except errors.LedgerError as refusal:
        model.refused[refusal.code] += 1
        return
    body = json.loads(outcome.body)
    if key in model.acked:
        assert model.acked[key] == body, f"seed {world.seed}: key {key} answered differently on a retry"
    model.acked[key] = body


def run_schedule(world: World, steps: int) -> Model:
    rng = world.rng
    model = Model()
    open_accounts(world, model)
    for n in range(steps):
        action = rng.choices(
            ["write", "capture", "deliver", "partition", "heal", "crash-replicator", "crash-projector", "project"],
            [12, 3, 4, 1, 1, 0.5, 0.5, 3],
        )[0]
        if action == "write":
            _write(world, model, rng, n)
        elif action == "capture":
            world.replicator.capture(rng.choice(world.names))
        elif action == "deliver":
            world.advance(rng.uniform(0, 2) * (world.lag.fixed_ms + world.lag.jitter_ms + 1) / 1000)
            world.replicator.deliver(limit=rng.randint(1, 20))
        elif action == "partition":
            source, dest = rng.sample(world.names, 2)
            world.replicator.partition(source, dest)
        elif action == "heal":
            world.replicator.heal()
        elif action == "crash-replicator":
            world.crash_replicator()
        elif action == "crash-projector":
            world.crash_projector(rng.choice(world.names))
        else:
            world.project(rng.choice(world.names))
        if n % 8 == 7:
            check_continuously(world, model)
    return model


def check_continuously(world: World, model: Model) -> None:
    """What must hold at every moment: no no-overdraft account's guard below zero, anywhere."""
    for name in world.names:
        for account, item in world.items(name, "accounts").items():
            if account in model.no_overdraft():
                assert int(item.get("available", {}).get("N", "0")) >= 0, f"seed {world.seed}: {account} below zero in {name}"


def check_converged(world: World, model: Model) -> None:
    """After healing and draining: every region holds the same log and items, and views equal their logs."""
    seed = world.seed
    logs = {name: world.events(name) for name in world.names}
    digests = {name: {a: digest_of(events) for a, events in log.items()} for name, log in logs.items()}
    first = world.names[0]
    for name in world.names[1:]:
        assert digests[name] == digests[first], f"seed {seed}: events differ between {first} and {name}"
        for table in ("accounts", "idempotency"):
            assert world.items(name, table) == world.items(first, table), f"seed {seed}: {table} differ between {first} and {name}"
    log = logs[first]
    # Nothing acknowledged is lost.
    present = {(e.entity_id, e.event_id) for events in log.values() for e in events}
    for key, body in model.acked.items():
        for event in body.get("events", []):
            assert (event["entity_id"], event["event_id"]) in present, f"seed {seed}: acknowledged {key} lost"
    # Every key recorded at most once (the scope is one caller).
    transactions: dict[str, set[str]] = defaultdict(set)
    for events in log.values():
        for event in events:
            if not event.idempotency_key.startswith("open-"):
                transactions[event.idempotency_key].add(event.transaction_id)
    twice = {key: ids for key, ids in transactions.items() if len(ids) > 1}
    assert not twice, f"seed {seed}: keys recorded twice: {twice}"
    for name in world.names:
        folds = world.folds(name)
        views = world.balances(name)
        accounts = world.items(name, "accounts")
        for account, totals in folds.items():
            view = views.get(account)
            figures = (view.balance, view.credits, view.debits, view.event_count) if view else (0, 0, 0, 0)
            assert figures == (totals.balance, totals.credits, totals.debits, totals.event_count), (
                f"seed {seed}: {name}'s view of {account} is {figures}, its log folds to {totals}"
            )
            # Every credit from another home was settled there exactly once: the guard equals the log.
            available = int(without_stamps(accounts[account]).get("available", 0))
            assert available == totals.balance, f"seed {seed}: {account}'s available {available} != log {totals.balance} in {name}"
            if account in model.no_overdraft():
                running = 0
                for event in log[account]:
                    running += event.signed_amount
                    assert running >= 0, f"seed {seed}: {account}'s history goes below zero at {event.event_id}"
