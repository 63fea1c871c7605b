"""Domain errors become RFC 9457 problem documents through one table (no IO)."""

from __future__ import annotations

import json

import pytest
from chalice import Response

from api.problems import PROBLEM_CONTENT_TYPE, STATUS_BY_ERROR, problem_for, problem_from_chalice
from ledger import errors


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | all_subclasses(sub)
    return found


REFUSALS = sorted(all_subclasses(errors.LedgerError), key=lambda cls: cls.__name__)


def test_every_refusal_has_its_own_status_in_the_table():
    assert set(STATUS_BY_ERROR) == set(REFUSALS)
    assert all(400 <= status < 600 for status in STATUS_BY_ERROR.values())


def test_every_refusal_has_a_distinct_stable_code():
    codes = [cls.code for cls in REFUSALS]

    assert len(codes) == len(set(codes))
    assert errors.LedgerError.code not in codes


@pytest.mark.parametrize("cls", REFUSALS, ids=lambda cls: cls.__name__)
def test_a_refusal_leaves_as_a_problem_document_with_its_code_and_status(cls):
    response = problem_for(cls("what went wrong", account_id="alice"))

    body = json.loads(response.body)
    assert response.status_code == STATUS_BY_ERROR[cls]
    assert response.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert body == {
        "type": f"urn:problem-type:dynamo-ledger:{cls.code}",
        "title": cls.title,
        "status": STATUS_BY_ERROR[cls],
        "detail": "what went wrong",
        "code": cls.code,
        "account_id": "alice",
    }


@pytest.mark.parametrize(
    "error, retry_after",
    [
        (errors.StoreUnavailable("busy"), "1"),
        (errors.IdempotencyInFlight("in flight"), "1"),
        (errors.AccountAlreadyExists("exists"), None),
        (errors.InsufficientFunds("poor"), None),
    ],
    ids=["store unavailable", "in flight", "account exists", "insufficient funds"],
)
def test_only_transient_refusals_carry_retry_after(error, retry_after):
    assert problem_for(error).headers.get("Retry-After") == retry_after


def test_chalices_own_refusals_are_reshaped_as_problems():
    refused = Response(
        body={"Code": "MethodNotAllowedError", "Message": "Unsupported method: PUT"},
        status_code=405,
        headers={"Allow": "POST"},
    )

    response = problem_from_chalice(refused)

    assert response.status_code == 405
    assert response.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["Allow"] == "POST"
    assert json.loads(response.body)["code"] == "method_not_allowed"
