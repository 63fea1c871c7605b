"""`ledger projections verify` and `rebuild` as an operator runs them (`runtime.cli.main`), against moto.

The command builds its own client from settings; with no endpoint configured that
client is moto's in-process one, so the command sees the tables the test wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

import projections.verify
from composition.root import Root
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.service import Caller
from projections.schema import balance_key
from runtime.cli import main
from stream_support import REGION, Stage, stream_records


@pytest.fixture
def stage(moto_dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    """alice opened, +700, -200 to bob; bob opened, +200. Nothing projected yet."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for name in ("LEDGER_ENDPOINT_URL", "LEDGER_STAGE", "LEDGER_REGION"):
        monkeypatch.delenv(name, raising=False)  # the command's client must be moto's, on this stage
    with Stage(moto_dynamodb) as created:
        ledger = Root(created.settings, client=moto_dynamodb).ledger
        for n, account in enumerate(("alice", "bob")):
            ledger.open_account(Caller("ops", f"open-{n}"), OpenAccountRequest(account_id=account, currency="EUR"))
        ledger.credit(Caller("ops", "c1"), "alice", MovementRequest(amount=700, currency="EUR"))
        ledger.transfer(Caller("ops", "t1"), TransferRequest(from_account="alice", to_account="bob", amount=200, currency="EUR"))
        yield created


class Pauses:
    """verify's pauses between rechecks: recorded, not slept; `during` runs in each (a projector catching up)."""

    def __init__(self) -> None:
        self.taken: list[float] = []
        self.during: Callable[[], None] | None = None

    def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)
        if self.during:
            self.during()


@pytest.fixture(autouse=True)
def pauses(monkeypatch: pytest.MonkeyPatch) -> Pauses:
    recorded = Pauses()
    monkeypatch.setitem(projections.verify.verify.__kwdefaults__, "sleep", recorded)
    return recorded


def records(stage: Stage, client: Any) -> list[dict[str, Any]]:
    return stream_records(client, boto3.client("dynamodbstreams", region_name=REGION), stage.settings)


def project(stage: Stage, client: Any, batch: list[dict[str, Any]]) -> None:
    assert Root(stage.settings, client=client).stream_handler({"Records": batch}, None) == {"batchItemFailures": []}


def ledger_command(stage: Stage, *args: str) -> int:
    return main(["projections", *args, "--aws", "--stage", stage.settings.stage, "--region", REGION])


def balance(stage: Stage, client: Any, account: str) -> tuple[int, int, int, int]:
    view = Root(stage.settings, client=client).balance_store.get(account, consistent=True)
    assert view is not None
    return (view.balance, view.credits, view.debits, view.event_count)


ALICE, BOB = (500, 700, 200, 3), (200, 200, 0, 2)


def test_verify_exits_0_when_every_view_is_the_fold_of_its_log(stage: Stage, moto_dynamodb: Any, capsys, pauses: Pauses):
    project(stage, moto_dynamodb, records(stage, moto_dynamodb))

    assert ledger_command(stage, "verify") == 0
    out = capsys.readouterr().out
    assert "every balance equals the fold of its log" in out and "DRIFT" not in out
    assert pauses.taken == []  # nothing to look at twice


def test_verify_does_not_call_a_projector_that_is_merely_behind_drift(stage: Stage, moto_dynamodb: Any, pauses: Pauses):
    pending = records(stage, moto_dynamodb)
    pauses.during = lambda: project(stage, moto_dynamodb, pending)

    assert ledger_command(stage, "verify") == 0
    assert len(pauses.taken) == 1


def test_verify_names_a_tampered_balance_with_both_figures_and_rebuild_repairs_it(
    stage: Stage, moto_dynamodb: Any, capsys, pauses: Pauses
):
    project(stage, moto_dynamodb, records(stage, moto_dynamodb))
    moto_dynamodb.update_item(  # someone edits the view by hand
        TableName=Root(stage.settings, client=moto_dynamodb).balance_store._tables.balances,
        Key={"pk": {"S": balance_key("bob")}},
        UpdateExpression="SET balance = :b",
        ExpressionAttributeValues={":b": {"N": "999"}},
    )
    capsys.readouterr()

    assert ledger_command(stage, "verify") == 1
    out = capsys.readouterr().out
    assert "DRIFT bob: view balance=999 credits=200 debits=0 events=2; log balance=200 credits=200 debits=0 events=2" in out
    assert "alice" not in out and "1 account(s) differ from their log" in out
    assert len(pauses.taken) == 3  # looked at again before it was called drift

    assert ledger_command(stage, "rebuild") == 0
    out = capsys.readouterr().out
    assert "rebuilt bob" in out and "rebuilt alice" not in out and "checked 2 account(s), rebuilt 1" in out
    assert (balance(stage, moto_dynamodb, "alice"), balance(stage, moto_dynamodb, "bob")) == (ALICE, BOB)
    assert ledger_command(stage, "verify") == 0


@pytest.mark.parametrize("projected_first", [0, 3], ids=["nothing-projected", "some-projected"])
def test_rebuild_before_the_stream_is_projected_does_not_double_count_it(
    stage: Stage, moto_dynamodb: Any, projected_first: int
):
    pending = records(stage, moto_dynamodb)
    assert len(pending) == 5
    if projected_first:
        project(stage, moto_dynamodb, pending[:projected_first])
    assert ledger_command(stage, "verify") == 1  # the view lags the log

    assert ledger_command(stage, "rebuild") == 0
    assert (balance(stage, moto_dynamodb, "alice"), balance(stage, moto_dynamodb, "bob")) == (ALICE, BOB)
    # The stream records of what rebuild folded arrive afterwards, as they would, the projected ones again too.
    project(stage, moto_dynamodb, pending)

    assert (balance(stage, moto_dynamodb, "alice"), balance(stage, moto_dynamodb, "bob")) == (ALICE, BOB)
    assert ledger_command(stage, "verify") == 0
    assert ledger_command(stage, "rebuild") == 0  # nothing left to repair
    assert (balance(stage, moto_dynamodb, "alice"), balance(stage, moto_dynamodb, "bob")) == (ALICE, BOB)
