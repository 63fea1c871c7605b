"""`ledger projections verify` and `rebuild` as an operator runs them, against moto."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from ledger.bootstrap import build_ledger
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest
from ledger.service import Caller
from projections.bootstrap import build_balance_store, build_stream_handler
from projections.schema import balance_key
from runtime.cli import main
from stream_support import REGION, Stage, stream_records


@pytest.fixture
def stage(moto_dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.delenv("LEDGER_ENDPOINT_URL", raising=False)  # the CLI's client must be moto's
    with Stage(moto_dynamodb) as created:
        ledger = build_ledger(created.settings, moto_dynamodb)
        for n, account in enumerate(("alice", "bob")):
            ledger.open_account(Caller("ops", f"open-{n}"), OpenAccountRequest(account_id=account, currency="EUR"))
        ledger.credit(Caller("ops", "c1"), "alice", MovementRequest(amount=700, currency="EUR"))
        ledger.transfer(Caller("ops", "t1"), TransferRequest(from_account="alice", to_account="bob", amount=200, currency="EUR"))
        yield created


def records(stage: Stage, client: Any) -> list[dict[str, Any]]:
    return stream_records(client, boto3.client("dynamodbstreams", region_name=REGION), stage.settings)


def ledger_command(stage: Stage, *args: str) -> int:
    return main(["projections", *args, "--stage", stage.settings.stage, "--region", REGION])


def balance(stage: Stage, client: Any, account: str) -> tuple[int, int]:
    view = build_balance_store(stage.settings, client).get(account, consistent=True)
    return (view.balance, view.event_count)


def test_verify_passes_when_every_view_is_the_fold_of_its_log(stage: Stage, moto_dynamodb: Any, capsys):
    build_stream_handler(stage.settings, moto_dynamodb)({"Records": records(stage, moto_dynamodb)}, None)

    assert ledger_command(stage, "verify") == 0
    assert "every balance equals the fold of its log" in capsys.readouterr().out


def test_verify_names_a_tampered_balance_and_rebuild_repairs_it(stage: Stage, moto_dynamodb: Any, capsys):
    build_stream_handler(stage.settings, moto_dynamodb)({"Records": records(stage, moto_dynamodb)}, None)
    moto_dynamodb.update_item(
        TableName=build_balance_store(stage.settings, moto_dynamodb)._tables.balances,
        Key={"pk": {"S": balance_key("bob")}},
        UpdateExpression="SET balance = :b",
        ExpressionAttributeValues={":b": {"N": "999"}},
    )
    capsys.readouterr()

    assert ledger_command(stage, "verify") == 1
    out = capsys.readouterr().out
    assert "DRIFT bob: view balance=999 credits=200 debits=0 events=2; log balance=200 credits=200 debits=0 events=2" in out
    assert "alice" not in out and "1 account(s) differ from their log" in out

    assert ledger_command(stage, "rebuild") == 0
    assert "rebuilt bob" in capsys.readouterr().out
    assert ledger_command(stage, "verify") == 0
    assert balance(stage, moto_dynamodb, "bob") == (200, 2)


def test_rebuild_before_the_stream_is_projected_does_not_double_count_it(stage: Stage, moto_dynamodb: Any):
    pending = records(stage, moto_dynamodb)
    assert ledger_command(stage, "verify", "--account", "alice") == 1  # nothing projected yet: the view lags

    assert ledger_command(stage, "rebuild") == 0
    assert balance(stage, moto_dynamodb, "alice") == (500, 3)
    # The stream records of what rebuild folded arrive afterwards, as they would.
    response = build_stream_handler(stage.settings, moto_dynamodb)({"Records": pending}, None)

    assert response == {"batchItemFailures": []}
    assert balance(stage, moto_dynamodb, "alice") == (500, 3)
    assert balance(stage, moto_dynamodb, "bob") == (200, 2)
    assert ledger_command(stage, "verify") == 0
