"""`GET /accounts/{id}/balance`: the projected view in one read, or a strong fold of the log."""

from __future__ import annotations

from typing import Any

import pytest

from api_client import Api
from stream_support import Stage, project_everything

FIELDS = {"account_id", "currency", "balance", "credits", "debits", "event_count", "as_of", "consistency"}
FIELDS |= {f"{name}_str" for name in ("balance", "credits", "debits")} | {"region", "available", "in_flight", "replication_watermark"}


@pytest.fixture
def api(projected_api: Api) -> Api:
    """Every test here reads balances: the app over the stage's projected view."""
    return projected_api


def open_and_move(api: Api) -> list[dict]:
    assert api.post("/accounts", {"account_id": "alice", "currency": "EUR"}).status == 201
    assert api.post("/accounts/alice/credits", {"amount": 900, "currency": "EUR"}).status == 201
    debit = api.post("/accounts/alice/debits", {"amount": 250, "currency": "EUR"})
    assert debit.status == 201
    return debit.json["events"]


def test_an_account_with_nothing_projected_yet_reads_zero_with_no_as_of(api: Api):
    open_and_move(api)

    response = api.get("/accounts/alice/balance")

    assert response.status == 200
    assert response.json == {
        "account_id": "alice",
        "currency": "EUR",
        "balance": 0,
        "credits": 0,
        "debits": 0,
        "event_count": 0,
        "as_of": None,
        "consistency": "eventual",
        "balance_str": "0",
        "credits_str": "0",
        "debits_str": "0",
        "region": "us-east-1",
        "available": 650,  # the write path's guard has it already; the view is still empty
        "in_flight": 0,
        "replication_watermark": None,
    }


def test_the_view_shows_the_projected_figures_and_names_the_newest_event(api: Api, stage: Stage, moto_dynamodb: Any):
    [debit] = open_and_move(api)
    project_everything(stage, moto_dynamodb)

    response = api.get("/accounts/alice/balance")

    assert set(response.json) == FIELDS
    assert (response.json["balance"], response.json["credits"], response.json["debits"]) == (650, 900, 250)
    assert response.json["event_count"] == 3
    assert response.json["as_of"] == {"event_id": debit["event_id"], "recorded_at": debit["recorded_at"]}


def test_a_strong_read_sees_a_write_before_any_projection(api: Api):
    [debit] = open_and_move(api)

    response = api.get("/accounts/alice/balance", {"consistency": "strong"})

    assert response.status == 200 and set(response.json) == FIELDS
    assert response.json == {
        "account_id": "alice",
        "currency": "EUR",
        "balance": 650,
        "credits": 900,
        "debits": 250,
        "event_count": 3,
        "as_of": {"event_id": debit["event_id"], "recorded_at": debit["recorded_at"]},
        "consistency": "strong",
        "balance_str": "650",
        "credits_str": "900",
        "debits_str": "250",
        "region": "us-east-1",
        "available": 650,
        "in_flight": 0,
        "replication_watermark": None,
    }


def test_after_a_new_write_the_view_lags_and_a_strong_read_does_not(api: Api, stage: Stage, moto_dynamodb: Any):
    [debit] = open_and_move(api)
    project_everything(stage, moto_dynamodb)
    later = api.post("/accounts/alice/credits", {"amount": 50, "currency": "EUR"})
    assert later.status == 201
    [credit] = later.json["events"]

    eventual = api.get("/accounts/alice/balance").json
    strong = api.get("/accounts/alice/balance", {"consistency": "strong"}).json

    assert (eventual["balance"], eventual["event_count"], eventual["as_of"]["event_id"]) == (650, 3, debit["event_id"])
    assert (strong["balance"], strong["credits"], strong["event_count"]) == (700, 950, 4)
    assert strong["as_of"] == {"event_id": credit["event_id"], "recorded_at": credit["recorded_at"]}
    project_everything(stage, moto_dynamodb)  # the whole stream again: the old records count once
    assert api.get("/accounts/alice/balance").json == {**strong, "consistency": "eventual"}


@pytest.mark.parametrize("consistency", ["eventual", "strong"])
def test_an_unknown_account_is_404(api: Api, consistency: str):
    response = api.get("/accounts/nobody/balance", {"consistency": consistency})
    assert (response.status, response.code) == (404, "account_not_found")
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("consistency", ["eventual", "strong"])
@pytest.mark.parametrize("account_id", ["..", ".", "a%00b", "x" * 65, "al%20ice", "%E2%82%AC", "a%2Fb", "alice%27--", "%2A"])
def test_a_hostile_account_id_is_refused_as_an_invalid_identifier(api: Api, account_id: str, consistency: str):
    open_and_move(api)  # alice exists: a hostile id must not reach her (or anything)
    response = api.get(f"/accounts/{account_id}/balance", {"consistency": consistency})
    assert (response.status, response.code) == (400, "invalid_identifier"), response.json
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("params", [{"consistency": "bogus"}, {"consistency": ""}, {"fresh": "yes"}])
def test_bad_query_parameters_are_400_invalid_query(api: Api, params: dict[str, str]):
    open_and_move(api)
    response = api.get("/accounts/alice/balance", params)
    assert (response.status, response.code) == (400, "invalid_query")


def test_a_balance_beyond_two_to_the_53_is_exact_in_json_and_as_a_string(api: Api):
    """JavaScript reads 9907919180215090100 as ...089152: the string twin is what it should read."""
    api.post("/accounts", {"account_id": "whale", "currency": "EUR"})
    for _ in range(3):
        assert api.post("/accounts/whale/credits", {"amount": 2**53 - 1, "currency": "EUR"}).status == 201

    response = api.get("/accounts/whale/balance", {"consistency": "strong"})

    exact = 3 * (2**53 - 1)
    assert exact > 2**53
    assert f'"balance":{exact}' in response.body.decode()  # every digit, no float rounding
    assert response.json["balance_str"] == str(exact) == response.json["credits_str"]
    assert response.json["debits_str"] == "0"


def test_a_read_your_writes_balance_waits_for_the_event_it_names(projected_api: Api, stage: Stage, moto_dynamodb: Any):
    projected_api.post("/accounts", {"account_id": "alice", "currency": "EUR"})
    credit = projected_api.post("/accounts/alice/credits", {"amount": 5, "currency": "EUR"}).json["events"][0]

    early = projected_api.get("/accounts/alice/balance", {"min_as_of": credit["event_id"]})
    project_everything(stage, moto_dynamodb)
    later = projected_api.get("/accounts/alice/balance", {"min_as_of": credit["event_id"]})

    assert (early.status, early.code, early.headers["retry-after"]) == (503, "not_yet_replicated", "1")
    assert later.status == 200 and later.json["balance"] == 5
    bad = projected_api.get("/accounts/alice/balance", {"min_as_of": "not-an-id"})
    assert (bad.status, bad.code) == (400, "invalid_query")
