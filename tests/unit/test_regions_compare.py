"""`ledger regions compare` names what differs: of an item, only the attributes that differ, stamps in full."""

from __future__ import annotations

from runtime.regions_commands import differences


def snapshot(accounts: dict) -> dict:
    return {"events": {}, "folds": {}, "accounts": accounts, "idempotency": {}, "balances": {}}


def test_an_item_that_differs_is_shown_by_the_attributes_that_differ():
    common = {"account_id": {"S": "ann"}, "currency": {"S": "EUR"}, "metadata": {"M": {"note": {"S": "x" * 200}}}}
    east = {**common, "available": {"N": "641"}, "aws:rep:updatetime": {"N": "1765015506197001"}, "aws:rep:updateregion": {"S": "us-east-1"}}
    west = {**common, "available": {"N": "640"}, "aws:rep:updatetime": {"N": "1765015506197002"}, "aws:rep:updateregion": {"S": "us-east-1"}}

    [line] = differences({"us-east-1": snapshot({"ann": east}), "eu-west-1": snapshot({"ann": west})})

    assert line.startswith("account item of ann differs: ")
    assert '"available": {"N": "641"}' in line and '"available": {"N": "640"}' in line
    assert "1765015506197001" in line and "1765015506197002" in line
    assert "currency" not in line and "metadata" not in line and "updateregion" not in line


def test_an_item_missing_in_one_region_is_named_missing():
    item = {"account_id": {"S": "ann"}}

    [line] = differences({"eu-west-1": snapshot({"ann": item}), "us-east-1": snapshot({})})

    assert "us-east-1=missing" in line
