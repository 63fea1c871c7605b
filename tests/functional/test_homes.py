"""Accounts' homes across regions: what a region remembers about homes elsewhere must not outlive a move.

Two regions on moto, linked by the replicator (see replication/simulation.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.errors import WrongRegion
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
