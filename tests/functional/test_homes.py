"""Accounts' homes across regions: what a region remembers about homes elsewhere must not outlive a move.

Two regions on moto, linked by the replicator (see replication/simulation.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from failover.move import Move
from failover.reconcile import find, repair
from ledger.errors import AccountMoving, InsufficientFunds, WrongRegion
from ledger.service import Caller
from replication.replicator import Lag
from replication.simulation import World

EAST, WEST = "us-east-1", "eu-west-1"
_stages = itertools.count(1)


@pytest.fixture
def world(moto_dynamodb: Any, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Any:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    world = World([EAST, WEST], f"homes{next(_stages)}", tmp_path, seed=1, lag=Lag(0, 0))  # moto lives per module
    yield world
    world.queue.close()


def _move_home(world: World, account: str, to: str, epoch: int) -> None:
    """What a fail-over leaves behind, written straight to every replica."""
    for region in world.regions.values():
        region.plain.update_item(
            TableName=region.root.settings.tables.accounts,
            Key={"account_id": {"S": account}},
            UpdateExpression="SET home_region = :home, write_epoch = :epoch",
            ExpressionAttributeValues={":home": {"S": to}, ":epoch": {"N": str(epoch)}},
        )


def test_a_credit_to_an_account_whose_home_moved_here_is_written_at_home_not_left_pending(world):
    east = world.regions[EAST].root.ledger
    west = world.regions[WEST].root.ledger
    east.open_account(Caller("t", "o-payer"), OpenAccountRequest(account_id="payer", currency="EUR", allow_overdraft=True))
    west.open_account(Caller("t", "o-payee"), OpenAccountRequest(account_id="payee", currency="EUR"))
    world.settle()
    transfer = TransferRequest(from_account="payer", to_account="payee", amount=5, currency="EUR")
    east.transfer(Caller("t", "t1"), transfer)  # east learns: payee is homed in the west
    world.settle()

    _move_home(world, "payee", EAST, 2)
    east.transfer(Caller("t", "t2"), transfer)

    account = east.get_account("payee")
    newest = list(east.full_history("payee"))[-1]
    assert not newest.available_pending, "the credit was left for a home that is no longer elsewhere"
    assert account.last_event_id == newest.event_id, "the account's guard did not take its own newest event"
    assert newest.write_epoch == 2
    world.settle()
    assert east.get_account("payee").available == 10
    east.debit(Caller("t", "d1"), "payee", MovementRequest(amount=10, currency="EUR"))  # all of it is spendable


def test_a_debit_of_an_account_known_to_be_homed_elsewhere_is_still_refused_here(world):
    east = world.regions[EAST].root.ledger
    west = world.regions[WEST].root.ledger
    east.open_account(Caller("t", "o-payer"), OpenAccountRequest(account_id="payer", currency="EUR", allow_overdraft=True))
    west.open_account(Caller("t", "o-payee"), OpenAccountRequest(account_id="payee", currency="EUR"))
    world.settle()
    east.transfer(Caller("t", "t1"), TransferRequest(from_account="payer", to_account="payee", amount=5, currency="EUR"))
    world.settle()  # east remembers: payee is homed in the west

    with pytest.raises(WrongRegion):
        east.transfer(Caller("t", "back"), TransferRequest(from_account="payee", to_account="payer", amount=5, currency="EUR"))
    assert [e.type for e in east.full_history("payee")] == ["account.opened", "account.credited"]


# -- fail-over ---------------------------------------------------------------------------


def _until(world: World, done, rounds: int = 50) -> None:
    """Step replication and projection until `done()`, as the command's waits do on a running serve."""
    for _ in range(rounds):
        if done():
            return
        world.advance(1.0)
        world.replicator.step()
        world.project()
    raise AssertionError("not done after replication and projection settled")


def _planned(world: World, source: str, target: str, pattern: str | None = None) -> Move:
    move = Move(world.regions[source].root, world.regions[target].root, pattern)
    chosen = move.select(world.regions[source].root.event_store.accounts())
    for account in chosen:
        assert move.fence(account)
    for account in chosen:
        _until(world, lambda: move.replicated(account.account_id, world.now))
        _until(world, lambda: move.open(account.account_id))
    return move


def test_a_planned_fail_over_moves_the_home_and_both_sides_refuse_while_it_is_under_way(world):
    east = world.regions[EAST].root.ledger
    west = world.regions[WEST].root.ledger
    east.open_account(Caller("t", "o-a"), OpenAccountRequest(account_id="a", currency="EUR"))
    east.open_account(Caller("t", "o-b"), OpenAccountRequest(account_id="b", currency="EUR"))
    east.credit(Caller("t", "c1"), "a", MovementRequest(amount=10, currency="EUR"))
    east.debit(Caller("t", "d1"), "a", MovementRequest(amount=3, currency="EUR"))
    world.project()

    move = Move(world.regions[EAST].root, world.regions[WEST].root, "a")
    [account] = move.select(world.regions[EAST].root.event_store.accounts())
    assert move.fence(account)
    with pytest.raises(AccountMoving) as refused:  # 503: the west may not even hold the account yet
        east.debit(Caller("t", "d2"), "a", MovementRequest(amount=1, currency="EUR"))
    assert refused.value.extra["home_region"] == WEST
    east.credit(Caller("t", "c2"), "b", MovementRequest(amount=1, currency="EUR"))  # other accounts go on
    _until(world, lambda: move.replicated("a", world.now))
    with pytest.raises(AccountMoving):
        west.debit(Caller("t", "d2"), "a", MovementRequest(amount=1, currency="EUR"))
    _until(world, lambda: move.open("a"))
    world.settle()
    with pytest.raises(WrongRegion) as refused:  # moved: the old home names the new one
        east.debit(Caller("t", "d2"), "a", MovementRequest(amount=1, currency="EUR"))
    assert refused.value.extra["home_region"] == WEST

    west.debit(Caller("t", "d3"), "a", MovementRequest(amount=7, currency="EUR"))  # all 7 left, nothing more
    with pytest.raises(InsufficientFunds):
        west.debit(Caller("t", "d4"), "a", MovementRequest(amount=1, currency="EUR"))
    world.settle()
    history = list(west.full_history("a"))
    assert [e.type for e in history][-2:] == ["account.home_moved", "account.debited"]
    assert history[-2].write_epoch == 2 and history[-2].from_region == EAST
    for name in (EAST, WEST):
        assert world.items(name, "accounts")["a"]["home_region"]["S"] == WEST
        assert world.balances(name)["a"].balance == 0


def test_a_move_opens_only_on_a_log_its_projector_has_folded_so_a_credit_in_between_counts_once(world):
    """A transfer's credit leg, recorded in the east after the fence, reaches the west before its projector does."""
    east = world.regions[EAST].root.ledger
    east.open_account(Caller("t", "o-a"), OpenAccountRequest(account_id="a", currency="EUR"))
    east.open_account(Caller("t", "o-e"), OpenAccountRequest(account_id="e", currency="EUR", allow_overdraft=True))
    world.settle()
    move = Move(world.regions[EAST].root, world.regions[WEST].root, "a")
    [account] = move.select(world.regions[EAST].root.event_store.accounts())
    assert move.fence(account)
    _until(world, lambda: move.replicated("a", world.now))
    world.project()
    east.transfer(Caller("t", "t1"), TransferRequest(from_account="e", to_account="a", amount=4, currency="EUR"))
    world.advance(1.0)
    world.replicator.step()  # the credit is in the west's log; the west's projector has not seen it

    assert not move.open("a"), "opened on a log the west's projector had not folded"
    world.project()
    assert move.open("a")
    world.settle()
    for name in (EAST, WEST):
        assert int(world.items(name, "accounts")["a"]["available"]["N"]) == 4


def test_repatriating_is_the_same_move_the_other_way(world):
    east = world.regions[EAST].root.ledger
    east.open_account(Caller("t", "o-a"), OpenAccountRequest(account_id="a", currency="EUR"))
    east.credit(Caller("t", "c1"), "a", MovementRequest(amount=10, currency="EUR"))
    _planned(world, EAST, WEST)
    world.regions[WEST].root.ledger.debit(Caller("t", "d1"), "a", MovementRequest(amount=4, currency="EUR"))
    _planned(world, WEST, EAST)
    east.debit(Caller("t", "d2"), "a", MovementRequest(amount=6, currency="EUR"))
    world.settle()
    account = east.get_account("a")
    assert (account.home_region, account.write_epoch, account.available) == (EAST, 3, 0)


def test_a_forced_move_counts_the_old_homes_late_writes_when_they_arrive(world):
    east = world.regions[EAST].root.ledger
    east.open_account(Caller("t", "o-a"), OpenAccountRequest(account_id="a", currency="EUR", allow_overdraft=True))
    east.credit(Caller("t", "c1"), "a", MovementRequest(amount=10, currency="EUR"))
    world.settle()
    world.replicator.partitions = {(EAST, WEST), (WEST, EAST)}
    east.debit(Caller("t", "late"), "a", MovementRequest(amount=3, currency="EUR"))  # never left the east
    move = Move(world.regions[EAST].root, world.regions[WEST].root)
    [account] = move.select(world.regions[WEST].root.event_store.accounts())
    _until(world, lambda: move.take_over(account))
    assert world.regions[WEST].root.ledger.get_account("a").available == 10
    world.settle()
    for name in (EAST, WEST):
        item = world.items(name, "accounts")["a"]
        assert (item["home_region"]["S"], int(item["available"]["N"])) == (WEST, 7)
        assert world.balances(name)["a"].balance == 7


# -- reconciling after a split ------------------------------------------------------------


def _roots(world: World) -> dict[str, Any]:
    return {name: region.root for name, region in world.regions.items()}


def test_after_a_planned_move_and_a_forced_one_with_the_lease_waited_out_reconcile_finds_nothing(world):
    east = world.regions[EAST].root.ledger
    east.open_account(Caller("t", "o-a"), OpenAccountRequest(account_id="a", currency="EUR"))
    east.credit(Caller("t", "c1"), "a", MovementRequest(amount=10, currency="EUR"))
    _planned(world, EAST, WEST)
    world.regions[WEST].root.ledger.debit(Caller("t", "d1"), "a", MovementRequest(amount=4, currency="EUR"))
    world.settle()
    assert find(world.regions[EAST].root) == []


def test_both_sides_writing_through_a_split_are_named_exactly_and_repaired(world):
    """--override-lease: the east, cut off but alive, goes on writing an account the west took over."""
    east = world.regions[EAST].root.ledger
    west = world.regions[WEST].root.ledger
    east.open_account(Caller("t", "o-a"), OpenAccountRequest(account_id="a", currency="EUR"))
    east.credit(Caller("t", "c1"), "a", MovementRequest(amount=10, currency="EUR"))
    world.settle()
    world.replicator.partitions = {(EAST, WEST), (WEST, EAST)}
    move = Move(world.regions[EAST].root, world.regions[WEST].root)
    [account] = move.select(world.regions[WEST].root.event_store.accounts())
    _until(world, lambda: move.take_over(account))
    world.advance(1.0)
    west.debit(Caller("t", "d-west"), "a", MovementRequest(amount=7, currency="EUR"))
    west.debit(Caller("t", "same"), "a", MovementRequest(amount=1, currency="EUR"))
    east.debit(Caller("t", "d-east"), "a", MovementRequest(amount=7, currency="EUR"))  # both spend the same 10
    east.debit(Caller("t", "same"), "a", MovementRequest(amount=1, currency="EUR"))  # a client's retry, elsewhere
    world.settle()

    findings = find(world.regions[EAST].root)

    kinds = sorted(f.kind for f in findings)
    assert kinds == ["duplicate_key", "overdraft", "overwritten_guard", "stale_epoch", "stale_epoch"], findings
    stale = {f.detail.split()[1] for f in findings if f.kind == "stale_epoch"}
    east_events = {e.event_id for e in east.full_history("a") if e.region == EAST and e.transaction_type == "debit"}
    assert stale == east_events, "the stale-epoch events are exactly the east's writes after the move"

    now = "2026-12-03T00:00:00Z"
    for finding in findings:
        repair(finding, _roots(world), now, wait=world.project)
    world.settle()

    after = find(world.regions[WEST].root)
    assert [f for f in after if not f.reviewed] == [], after
    assert {f.kind for f in after} == {"stale_epoch", "overdraft"}, "reviewed, still shown"
    item = world.items(WEST, "accounts")["a"]
    assert (item["home_region"]["S"], int(item["write_epoch"]["N"])) == (WEST, 2)
    history = list(west.full_history("a"))
    assert int(item["available"]["N"]) == sum(e.signed_amount for e in history) == 10 - 7 - 7 - 1
    assert [e.transaction_type for e in history].count("reversal") == 1


# -- credits from another home, late --------------------------------------------------------


def test_a_credit_from_another_home_arriving_below_the_views_floor_is_counted_and_settled_once(moto_dynamodb, monkeypatch, tmp_path):
    """The home has moved on (its own writes, projected) when the transfer's credit leg reaches it: the log decides."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    world = World([EAST, WEST], f"homes{next(_stages)}", tmp_path, seed=1, lag=Lag(0, 0), projection_window=1)
    try:
        east = world.regions[EAST].root.ledger
        west = world.regions[WEST].root.ledger
        east.open_account(Caller("t", "o-payer"), OpenAccountRequest(account_id="payer", currency="EUR", allow_overdraft=True))
        west.open_account(Caller("t", "o-payee"), OpenAccountRequest(account_id="payee", currency="EUR"))
        world.settle()
        east.transfer(Caller("t", "t1"), TransferRequest(from_account="payer", to_account="payee", amount=5, currency="EUR"))
        leg = list(east.full_history("payee"))[-1]
        assert leg.available_pending
        west.credit(Caller("t", "c1"), "payee", MovementRequest(amount=1, currency="EUR"))
        west.credit(Caller("t", "c2"), "payee", MovementRequest(amount=2, currency="EUR"))
        world.project(WEST)  # the west counts its own credits before the leg arrives
        view = world.regions[WEST].plain.get_item(
            TableName=world.regions[WEST].root.settings.tables.events.replace("-events", "-balances"),
            Key={"pk": {"S": "balance#payee"}},
        )["Item"]
        assert view["floor"]["S"] > leg.event_id, "the leg would not arrive below the floor: the test proves nothing"

        world.settle()

        for name in (EAST, WEST):
            assert world.balances(name)["payee"].balance == 8
            assert int(world.items(name, "accounts")["payee"]["available"]["N"]) == 8, name
        west.debit(Caller("t", "d1"), "payee", MovementRequest(amount=8, currency="EUR"))  # all of it is spendable
    finally:
        for client, table in world.table_names():
            client.delete_table(TableName=table)
        world.queue.close()
