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
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from audit.canonical import digest_of
from failover.lease import IN_FLIGHT_SECONDS, wait_seconds
from failover.move import Move
from failover.reconcile import find, repair
from ledger import errors
from ledger.commands import BatchRequest, MovementRequest, OpenAccountRequest, ReversalRequest, TransferRequest
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
    moved: list[tuple[str, str, str, str]] = field(default_factory=list)  # (account, from, to, planned|forced)
    duplicates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # key -> every body it was acked with
    batches: bool = False  # whether clients also send atomic batches

    def forced(self) -> bool:
        return any(how == "forced" for *_, how in self.moved)

    def no_overdraft(self) -> set[str]:
        return {account for account, (_, overdraft) in self.accounts.items() if not overdraft}


def _call(ledger: Any, kind: str, caller: Caller, request: Any) -> Any:
    if kind == "credit":
        return ledger.credit(caller, request[0], request[1])
    if kind == "debit":
        return ledger.debit(caller, request[0], request[1])
    if kind == "transfer":
        return ledger.transfer(caller, request)
    if kind == "batch":
        return ledger.batch(caller, request)
    return ledger.reverse(caller, request[0], request[1])


def _home_of(model: Model, kind: str, request: Any) -> str:
    if kind == "transfer":
        return model.accounts[request.from_account][0]
    if kind == "batch":
        first = request.operations[0]
        return model.accounts[getattr(first, "account_id", None) or first.from_account][0]
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
        kinds, weights = ["credit", "debit", "transfer", "reversal"], [3, 3, 4, 1]
        if model.batches:  # only then: a schedule without batches draws exactly what it drew before they existed
            kinds, weights = [*kinds, "batch"], [*weights, 3]
        kind = rng.choices(kinds, weights)[0]
        amount = rng.choice([1, 5, 20, 100])
        if kind == "batch":
            request = _atomic_batch(model, rng)
        elif kind in ("credit", "debit"):
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
    if key in model.acked and model.acked[key] != body:
        # Two regions recorded one key: only ever after a forced move, which replication cannot stop.
        assert model.moved and any(how == "forced" for *_, how in model.moved), f"seed {world.seed}: key {key} answered differently on a retry"
        model.duplicates.setdefault(key, [model.acked[key]]).append(body)
        return
    model.acked[key] = body


def _atomic_batch(model: Model, rng: random.Random) -> BatchRequest:
    """2 to 6 operations on accounts of one home (its credits and debits are written there), transfers to anyone."""
    home = rng.choice(sorted({where for where, _ in model.accounts.values()}))
    local = [account for account, (where, _) in model.accounts.items() if where == home]
    operations: list[dict[str, Any]] = []
    for _ in range(rng.randint(2, 6)):
        kind = rng.choices(["credit", "debit", "transfer"], [3, 1, 2])[0]
        account, amount = rng.choice(local), rng.choice([1, 5, 20, 100])
        if kind == "transfer":
            target = rng.choice([a for a in model.accounts if a != account])
            operations.append({"type": kind, "from_account": account, "to_account": target, "amount": amount, "currency": "EUR"})
        else:
            operations.append({"type": kind, "account_id": account, "amount": amount, "currency": "EUR"})
    return BatchRequest.model_validate({"mode": "atomic", "operations": operations})


def _legs_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events an acknowledged answer names: a transaction's, or every operation's of a batch."""
    return [event for result in body.get("results", [body]) for event in result.get("events", [])]


def run_schedule(world: World, steps: int, failovers: Failovers = None, batches: bool = False) -> Model:
    """Random steps; with `failovers`, planned and forced moves of homes too ("lease": forced moves wait out
    the old home's lease; "override": they do not), heartbeats, and time passing in whole seconds; with
    `batches`, atomic batches among the writes."""
    rng = world.rng
    model = Model(batches=batches)
    if failovers:
        world.hold_leases()
    open_accounts(world, model)
    actions = ["write", "capture", "deliver", "partition", "heal", "crash-replicator", "crash-projector", "project"]
    weights = [12, 3, 4, 1, 1, 0.5, 0.5, 3]
    if failovers:
        actions += ["move", "move-step", "force", "tick", "wait", "isolate"]
        weights += [1, 3, 1.5, 4, 1.5, 0.7]
    moves = MovesInFlight()
    for n in range(steps):
        action = rng.choices(actions, weights)[0]
        if action == "move":
            moves.start(world, model, rng)
        elif action == "move-step":
            moves.step(world)
        elif action == "force":
            moves.force(world, model, rng, override=failovers == "override")
        elif action == "tick":
            world.tick(rng.choice(world.names))
        elif action == "wait":  # long enough, now and then, for a cut-off region's lease and writes in flight to end
            world.advance(rng.uniform(0.2, 1.2) * ((world.lease_seconds or 1.0) + IN_FLIGHT_SECONDS))
        elif action == "isolate":
            cut_off = rng.choice(world.names)
            for other in world.names:
                if other != cut_off:
                    world.replicator.partition(cut_off, other)
                    world.replicator.partition(other, cut_off)
        elif action == "write":
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
        if n % 8 == 7 or action in ("move-step", "force", "tick"):
            check_continuously(world, model, one_writer=failovers == "lease")
    moves.finish(world)
    return model


Failovers = Literal[None, "lease", "override"]


@dataclass
class MovesInFlight:
    """Fail-overs the schedule started, stepped as the command's phases are, among everything else."""

    planned: list[Move] = field(default_factory=list)

    def start(self, world: World, model: Model, rng: random.Random) -> None:
        """A planned move of one account from its home (as the home's replica says) to another region."""
        source, target = rng.sample(world.names, 2)
        roots = {name: region.root for name, region in world.regions.items()}
        if _excluded(roots[source], target):
            return  # a region failed over from by force comes back through `regions failover`'s readmission only
        homed = [a for a in roots[source].event_store.accounts() if a.home_region == source and a.moving_from is None]
        if not homed:
            return
        account = rng.choice(homed)
        move = Move(roots[source], roots[target], account.account_id)
        if move.fence(account):
            move.phase = "replicate"  # type: ignore[attr-defined]
            self.planned.append(move)
            model.moved.append((account.account_id, source, target, "planned"))
            model.accounts[account.account_id] = (target, model.accounts[account.account_id][1])

    def step(self, world: World) -> None:
        for move in list(self.planned):
            account_id = next(iter(move.epochs))
            if move.phase == "replicate" and move.replicated(account_id, world.now):  # type: ignore[attr-defined]
                move.phase = "open"  # type: ignore[attr-defined]
            elif move.phase == "open" and move.open(account_id):  # type: ignore[attr-defined]
                self.planned.remove(move)

    def force(self, world: World, model: Model, rng: random.Random, *, override: bool) -> None:
        """A forced move of every account homed in `source` to `target`, from `target`'s replica alone."""
        source, target = rng.sample(world.names, 2)
        root = world.regions[target].root
        beats, exclusions = root.heartbeats.read()
        if not override:
            wait = wait_seconds(beats, source, world.now, target)
            if wait == math.inf:
                return  # the command cannot tell whether a third region still hears the source
            world.advance(wait)  # the command waits out the source's lease (nothing else moves meanwhile)
        move = Move(world.regions[source].root, root)
        chosen = move.select(root.event_store.accounts())
        root.heartbeats.set_exclusions(target, exclusions.get(target, set()) | {source})
        for account_id in [a.account_id for a in chosen]:
            for _ in range(5):  # as the command's phase waits for the target's projector
                account = root.event_store.get_account(account_id)
                if account is None or not move.select([account]):
                    break
                if move.take_over(account):
                    model.moved.append((account_id, source, target, "forced"))
                    break  # clients are not told: they go on trying the old home, as they would
                world.project(target)

    def finish(self, world: World) -> None:
        """Complete every planned move (healing first): a command run to its end. A move that a forced one
        overtook during an overridden split (the account homed elsewhere under this move's epoch or a later
        one, everywhere, once all has arrived) can never open: its command times out naming the account, and
        the operator leaves it to `reconcile`."""
        world.settle()
        for _ in range(100):
            self.planned = [move for move in self.planned if not _overtaken(move)]
            if not self.planned:
                return
            self.step(world)
            world.settle()
        raise AssertionError(f"seed {world.seed}: planned moves did not complete: {[m.epochs for m in self.planned]}")


def _overtaken(move: Move) -> bool:
    account_id, epoch = next(iter(move.epochs.items()))
    there = move.target.event_store.get_account(account_id)
    return there is not None and there.write_epoch >= epoch and there.moving_from is None and there.home_region != move.target_name


def _excluded(root: Any, region: str) -> bool:
    _, exclusions = root.heartbeats.read()
    return any(region in out for out in exclusions.values())


def check_continuously(world: World, model: Model, *, one_writer: bool = False) -> None:
    """What must hold at every moment: no no-overdraft account's guard below zero, anywhere; with leases
    honoured, no account that two regions would both take a write for."""
    writers: dict[str, list[str]] = defaultdict(list)
    for name in world.names:
        lease = world.regions[name].root.lease
        takes_writes = lease is None or not lease.fenced()
        for account, item in world.items(name, "accounts").items():
            if account in model.no_overdraft() and not model.forced():
                assert int(item.get("available", {}).get("N", "0")) >= 0, f"seed {world.seed}: {account} below zero in {name}"
            if takes_writes and item["home_region"]["S"] == name and "moving_from" not in item:
                writers[account].append(name)
    if one_writer:
        two = {account: names for account, names in writers.items() if len(names) > 1}
        assert not two, f"seed {world.seed}: two writer regions at once: {two}"


def check_converged(world: World, model: Model, *, split: bool = False) -> None:
    """After healing and draining: every region holds the same log and items, and views equal their logs.

    `split`: two regions may have written one account (a forced move): a key recorded
    twice, a guard that is not its log and a history below zero are then findings for
    `reconcile` (`check_reconciled`), not failures.
    """
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
        for event in _legs_of(body):
            assert (event["entity_id"], event["event_id"]) in present, f"seed {seed}: acknowledged {key} lost"
    # Every key (every operation of a batch under its key) recorded at most once (the scope is one caller).
    transactions: dict[tuple[str, int | None], set[str]] = defaultdict(set)
    for events in log.values():
        for event in events:
            if event.transaction_type not in ("open", "move"):
                transactions[(event.idempotency_key, event.batch_operation)].add(event.transaction_id)
    twice = {key: ids for key, ids in transactions.items() if len(ids) > 1}
    assert not twice or split, f"seed {seed}: keys recorded twice: {twice}"
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
            if split:
                continue
            assert available == totals.balance, f"seed {seed}: {account}'s available {available} != log {totals.balance} in {name}"
            if account in model.no_overdraft():
                running = 0
                for event in log[account]:
                    running += event.signed_amount
                    assert running >= 0, f"seed {seed}: {account}'s history goes below zero at {event.event_id}"


def check_reconciled(world: World, model: Model, override: bool) -> None:
    """What `reconcile` names after the schedule, then that `--repair` leaves nothing to name.

    With leases honoured, no guard is overwritten and no event has a stale epoch; a
    forced move may still leave what the old home acknowledged but had not replicated
    (a key recorded again elsewhere, a no-overdraft history below zero). Overridden,
    anything may happen. Either way the duplicate keys named are exactly those the
    clients were answered twice for.
    """
    seed = world.seed
    first = world.regions[world.names[0]].root
    findings = find(first)
    kinds = {f.kind for f in findings}
    if not model.forced():
        assert not findings, f"seed {seed}: planned moves only, yet reconcile finds {findings}"
    elif not override:
        assert kinds <= {"duplicate_key", "overdraft"}, f"seed {seed}: with the lease, reconcile finds {findings}"
    named = {f.detail.split("key ")[1].split(" ")[0].strip("'") for f in findings if f.kind == "duplicate_key"}
    assert named == set(model.duplicates), f"seed {seed}: duplicates named {named}, answered twice {set(model.duplicates)}"
    roots = {name: region.root for name, region in world.regions.items()}
    for finding in findings:
        repair(finding, roots, "2026-12-03T00:00:00Z", wait=world.project)
    world.settle()
    world.hold_leases()
    left = [f for f in find(first) if not f.reviewed]
    assert not left, f"seed {seed}: after --repair reconcile still finds {left}"
    check_converged(world, model, split=True)
    for name in world.names:
        accounts = world.items(name, "accounts")
        for account, totals in world.folds(name).items():
            available = int(without_stamps(accounts[account]).get("available", 0))
            assert available == totals.balance, f"seed {seed}: repaired {account}'s available {available} != log {totals.balance}"
