"""Bad input changes nothing (DESIGN invariant 5): a clear 4xx problem document, and the tables untouched.

Each case is one request against a ledger holding `alice` (EUR, 1000 available, no
overdraft), `bob` (EUR) and `carol` (USD). Every case asserts the status, the
problem `code`, the problem content type and shape, and that a snapshot of every
ledger table taken before the request equals one taken after it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from pydantic import ValidationError

from ledger import errors
from ledger.commands import MovementRequest, TransferRequest
from ledger.cursors import CursorCodec
from ledger.service import Caller

PROBLEM = "application/problem+json"
MOVE = {"amount": 100, "currency": "EUR"}
TRANSFER = {"from_account": "alice", "to_account": "bob", "amount": 100, "currency": "EUR"}


@dataclass(frozen=True)
class Bad:
    """One bad request and the refusal it must get."""

    path: str
    body: Any = None
    raw: str | bytes | None = None
    status: int = 422
    code: str = "validation_error"
    method: str = "POST"
    content_type: str = "application/json"


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def without(base: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in base.items() if key not in names}


CREDIT = "/accounts/alice/credits"
DEBIT = "/accounts/alice/debits"
EVENTS = "/accounts/alice/events"

MALFORMED = {
    "malformed JSON": Bad(CREDIT, raw='{"amount": 100, "currency": ', status=400, code="malformed_request"),
    "trailing garbage": Bad(CREDIT, raw='{"amount": 100, "currency": "EUR"} x', status=400, code="malformed_request"),
    "body is a list": Bad(CREDIT, body=[MOVE], status=400, code="malformed_request"),
    "body is a string": Bad(CREDIT, raw='"amount=100"', status=400, code="malformed_request"),
    "body is a number": Bad(CREDIT, raw="100", status=400, code="malformed_request"),
    "body is null": Bad(CREDIT, raw="null", status=400, code="malformed_request"),
    "empty body": Bad(CREDIT, raw="", status=400, code="malformed_request"),
    "invalid UTF-8": Bad(CREDIT, raw=b'{"amount": 100, "currency": "EU\xff"}', status=400, code="malformed_request"),
    "duplicate keys": Bad(
        CREDIT, raw='{"amount": 1, "amount": 100000, "currency": "EUR"}', status=400, code="malformed_request"
    ),
    "duplicate nested keys": Bad(
        CREDIT,
        raw='{"amount": 1, "currency": "EUR", "metadata": {"a": "1", "a": "2"}}',
        status=400,
        code="malformed_request",
    ),
    "NaN": Bad(CREDIT, raw='{"amount": NaN, "currency": "EUR"}', status=400, code="malformed_request"),
    "Infinity": Bad(CREDIT, raw='{"amount": Infinity, "currency": "EUR"}', status=400, code="malformed_request"),
    "-Infinity": Bad(CREDIT, raw='{"amount": -Infinity, "currency": "EUR"}', status=400, code="malformed_request"),
    # 16 KiB of nesting is within the size limit but deeper than Python's recursion limit.
    "deeply nested array": Bad(CREDIT, raw="[" * 5000 + "]" * 5000, status=400, code="malformed_request"),
    "deeply nested object": Bad(CREDIT, raw='{"a":' * 2000 + "1" + "}" * 2000, status=400, code="malformed_request"),
    "oversized body": Bad(
        CREDIT, body=with_(MOVE, description="x" * (16 * 1024)), status=413, code="payload_too_large"
    ),
}

MISSING_AND_UNKNOWN = {
    "empty object": Bad(CREDIT, body={}),
    "missing amount": Bad(CREDIT, body=without(MOVE, "amount")),
    "missing currency": Bad(CREDIT, body=without(MOVE, "currency")),
    "unknown field": Bad(CREDIT, body=with_(MOVE, memo="hi")),
    "account in the body of a credit": Bad(CREDIT, body=with_(MOVE, account_id="bob")),
    "transfer missing to_account": Bad("/transfers", body=without(TRANSFER, "to_account")),
    "transfer unknown field": Bad("/transfers", body=with_(TRANSFER, fee=1)),
    "open missing currency": Bad("/accounts", body={"account_id": "dave"}),
    "open unknown field": Bad("/accounts", body={"account_id": "dave", "currency": "EUR", "balance": 10**6}),
    "open with status": Bad("/accounts", body={"account_id": "dave", "currency": "EUR", "status": "open"}),
}

AMOUNTS = {
    "float 1.0": 1.0,
    "float 1.5": 1.5,
    "string": "100",
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -100,
    "2**53": 2**53,
    "huge": 10**30,
    "null": None,
    "list": [100],
    "object": {"value": 100},
}

CURRENCIES = {
    "lower-case currency": "eur",
    "unknown currency XXX": "XXX",
    "unknown currency ABC": "ABC",
    "four letters": "EURO",
    "numeric code": 978,
    "empty currency": "",
    "padded currency": " EUR",
}

LIMITS = {
    "17 metadata entries": with_(MOVE, metadata={f"k{i}": "v" for i in range(17)}),
    "65-char metadata key": with_(MOVE, metadata={"k" * 65: "v"}),
    "257-char metadata value": with_(MOVE, metadata={"k": "v" * 257}),
    "empty metadata key": with_(MOVE, metadata={"": "v"}),
    "integer metadata value": with_(MOVE, metadata={"k": 1}),
    "null metadata value": with_(MOVE, metadata={"k": None}),
    "boolean metadata value": with_(MOVE, metadata={"k": True}),
    "nested metadata value": with_(MOVE, metadata={"k": {"deep": "v"}}),
    "metadata is a list": with_(MOVE, metadata=["k", "v"]),
    "control char in metadata key": with_(MOVE, metadata={"k\x00": "v"}),
    "control char in metadata value": with_(MOVE, metadata={"k": "v\x1b[31m"}),
    "description with NUL": with_(MOVE, description="rent\x00"),
    "description with newline": with_(MOVE, description="line one\nline two"),
    "description with line separator": with_(MOVE, description="a\u2028b"),
    "description with lone surrogate": with_(MOVE, description="a\ud800b"),
    "empty description": with_(MOVE, description=""),
    "257-char description": with_(MOVE, description="d" * 257),
    "description not a string": with_(MOVE, description=5),
}

DOMAIN = {
    "credit in another currency": Bad(CREDIT, body=with_(MOVE, currency="USD"), code="currency_mismatch"),
    "debit in another currency": Bad(DEBIT, body=with_(MOVE, currency="USD"), code="currency_mismatch"),
    "transfer in the receiver's foreign currency": Bad(
        "/transfers", body=with_(TRANSFER, to_account="carol"), code="currency_mismatch"
    ),
    "transfer to the same account": Bad("/transfers", body=with_(TRANSFER, to_account="alice"), code="same_account"),
    "debit beyond the balance": Bad(DEBIT, body=with_(MOVE, amount=1001), code="insufficient_funds"),
    "credit of an unknown account": Bad("/accounts/ghost/credits", body=MOVE, status=404, code="account_not_found"),
    "debit of an unknown account": Bad("/accounts/ghost/debits", body=MOVE, status=404, code="account_not_found"),
    "transfer from an unknown account": Bad(
        "/transfers", body=with_(TRANSFER, from_account="ghost"), status=404, code="account_not_found"
    ),
    "transfer to an unknown account": Bad(
        "/transfers", body=with_(TRANSFER, to_account="ghost"), status=404, code="account_not_found"
    ),
    "open an existing account": Bad(
        "/accounts", body={"account_id": "bob", "currency": "EUR"}, status=409, code="account_exists"
    ),
}

ACCOUNT_IDS_IN_BODIES = {
    "open with a slash": {"account_id": "a/b", "currency": "EUR"},
    "open with an empty id": {"account_id": "", "currency": "EUR"},
    "open with a 65-char id": {"account_id": "a" * 65, "currency": "EUR"},
    "open with a unicode id": {"account_id": "été", "currency": "EUR"},
    "open with a NUL id": {"account_id": "a\x00", "currency": "EUR"},
    "open with a numeric id": {"account_id": 7, "currency": "EUR"},
    "open with allow_overdraft as a string": {"account_id": "dave", "currency": "EUR", "allow_overdraft": "yes"},
    "open with allow_overdraft as 1": {"account_id": "dave", "currency": "EUR", "allow_overdraft": 1},
    "open with a lower-case currency": {"account_id": "dave", "currency": "eur"},
    # "." and ".." are dot segments: RFC 3986 clients resolve /accounts/.. to "/", so the
    # account's Location and every path naming it would point elsewhere.
    "open with id '.'": {"account_id": ".", "currency": "EUR"},
    "open with id '..'": {"account_id": "..", "currency": "EUR"},
    "transfer from a bad id": with_(TRANSFER, from_account="../alice"),
    "transfer to a 65-char id": with_(TRANSFER, to_account="b" * 65),
}

HOSTILE_SEGMENTS = {
    "encoded path traversal": "..%2F..%2Fetc",
    "double-dot encoded traversal": "%2e%2e%2F%2e%2e%2Fetc%2Fpasswd",
    "encoded NUL": "alice%00",
    "encoded newline": "alice%0Aadmin",
    "encoded space": "ali%20ce",
    "65 chars": "a" * 65,
    "encoded unicode": "%C3%A9t%C3%A9",
    "raw unicode": "été",
    "script tag": "%3Cscript%3E",
    "percent sign": "100%25",
}

QUERIES = {
    "limit=0": {"limit": "0"},
    "limit=1001": {"limit": "1001"},
    "limit=abc": {"limit": "abc"},
    "limit=-1": {"limit": "-1"},
    "limit=1.5": {"limit": "1.5"},
    "limit empty": {"limit": ""},
    "limit=1234567": {"limit": "1234567"},
    "limit superscript two": {"limit": "\u00b2"},
    "order=sideways": {"order": "sideways"},
    "order=ASC": {"order": "ASC"},
    "from=not-a-time": {"from": "not-a-time"},
    "from without a zone": {"from": "2026-11-22T10:00:00"},
    "from a date only": {"from": "2026-11-22"},
    "from month 13": {"from": "2026-13-01T00:00:00Z"},
    "from at hour 25": {"from": "2026-11-22T25:00:00Z"},
    "from before year 1 in UTC": {"from": "0001-01-01T00:00:00+01:00"},
    "to after year 9999 in UTC": {"to": "9999-12-31T23:59:59-01:00"},
    "from after to": {"from": "2026-11-22T10:00:00Z", "to": "2026-11-22T09:59:59Z"},
    "unknown param": {"page": "2"},
    "cursor not base64 JSON": {"cursor": "not-a-cursor"},
    "cursor of a list": {"cursor": base64.urlsafe_b64encode(b"[1, 2]").decode()},
    "cursor missing members": {"cursor": base64.urlsafe_b64encode(b'{"a": "alice"}').decode()},
    "cursor with a non-ULID position": {
        "cursor": base64.urlsafe_b64encode(
            json.dumps({"a": "alice", "o": "asc", "l": "0" * 26, "h": "7" + "Z" * 25, "e": "not-a-ulid"}).encode()
        ).decode()
    },
}


def _movement_cases() -> dict[str, Bad]:
    cases: dict[str, Bad] = {}
    for name, amount in AMOUNTS.items():
        cases[f"credit amount {name}"] = Bad(CREDIT, body=with_(MOVE, amount=amount))
        cases[f"debit amount {name}"] = Bad(DEBIT, body=with_(MOVE, amount=amount))
        cases[f"transfer amount {name}"] = Bad("/transfers", body=with_(TRANSFER, amount=amount))
    cases["credit amount 1e400 (a float)"] = Bad(CREDIT, raw='{"amount": 1e400, "currency": "EUR"}')
    cases["credit amount -0"] = Bad(CREDIT, raw='{"amount": -0, "currency": "EUR"}')
    cases["credit amount 1e2"] = Bad(CREDIT, raw='{"amount": 1e2, "currency": "EUR"}')
    for name, currency in CURRENCIES.items():
        cases[f"credit {name}"] = Bad(CREDIT, body=with_(MOVE, currency=currency))
        cases[f"transfer {name}"] = Bad("/transfers", body=with_(TRANSFER, currency=currency))
        cases[f"open {name}"] = Bad("/accounts", body={"account_id": "dave", "currency": currency})
    for name, body in LIMITS.items():
        cases[f"credit {name}"] = Bad(CREDIT, body=body)
    cases["transfer 17 metadata entries"] = Bad(
        "/transfers", body=with_(TRANSFER, metadata={f"k{i}": "v" for i in range(17)})
    )
    cases["open 17 metadata entries"] = Bad(
        "/accounts", body={"account_id": "dave", "currency": "EUR", "metadata": {f"k{i}": "v" for i in range(17)}}
    )
    return cases


def _path_cases() -> dict[str, Bad]:
    cases: dict[str, Bad] = {}
    for name, segment in HOSTILE_SEGMENTS.items():
        code = "invalid_identifier"
        cases[f"credit path {name}"] = Bad(f"/accounts/{segment}/credits", body=MOVE, status=400, code=code)
        cases[f"debit path {name}"] = Bad(f"/accounts/{segment}/debits", body=MOVE, status=400, code=code)
        cases[f"GET account {name}"] = Bad(f"/accounts/{segment}", method="GET", status=400, code=code)
        cases[f"GET events {name}"] = Bad(f"/accounts/{segment}/events", method="GET", status=400, code=code)
    bad_transaction_ids = {
        "lower case": "01m82nxajzrf54yvx4qd25fvpa",
        "25 chars": "0" * 25,
        "word": "not-a-ulid",
        "first char 8 (past 2**48 ms)": "8" + "0" * 25,
        "encoded traversal": "..%2F..%2Fetc",
    }
    for name, value in bad_transaction_ids.items():
        cases[f"GET transaction {name}"] = Bad(
            f"/transactions/{value}", method="GET", status=400, code="invalid_identifier"
        )
    return cases


def _query_cases() -> dict[str, Bad]:
    cases: dict[str, Bad] = {}
    for name, params in QUERIES.items():
        code = "invalid_cursor" if name.startswith("cursor") else "invalid_query"
        cases[f"history {name}"] = Bad(f"{EVENTS}?{urlencode(params)}", method="GET", status=400, code=code)
    return cases


def _content_type_cases() -> dict[str, Bad]:
    cases: dict[str, Bad] = {}
    for content_type in (
        "text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data",
        "*/*", "text/plain, application/json", "text/html; application/json", "application/json; charset=latin-1",
        "application/jsonx",
    ):  # fmt: skip
        cases[f"credit as {content_type}"] = Bad(
            CREDIT, body=MOVE, status=415, code="unsupported_media_type", content_type=content_type
        )
    cases["open account as text/plain"] = Bad(
        "/accounts",
        body={"account_id": "dave", "currency": "EUR"},
        status=415,
        code="unsupported_media_type",
        content_type="text/plain",
    )
    return cases


CASES: dict[str, Bad] = {
    **MALFORMED,
    **MISSING_AND_UNKNOWN,
    **_movement_cases(),
    **DOMAIN,
    **{
        name: Bad("/accounts" if name.startswith("open") else "/transfers", body=body)
        for name, body in ACCOUNT_IDS_IN_BODIES.items()
    },
    **_path_cases(),
    **_query_cases(),
    **_content_type_cases(),
}


@pytest.fixture
def populated(api, open_account):
    open_account("alice")
    open_account("bob")
    open_account("carol", currency="USD")
    assert api.post("/accounts/alice/credits", {"amount": 1000, "currency": "EUR"}).status == 201


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_refused_with_a_problem_document_and_changes_nothing(api, populated, table_snapshot, case):
    before = table_snapshot()

    if case.method == "GET":
        response = api.get(case.path)
    else:
        response = api.post(case.path, case.body, raw=case.raw, content_type=case.content_type)

    assert (response.status, response.code) == (case.status, case.code), response.json
    assert response.headers["content-type"] == PROBLEM
    assert {"type", "title", "status", "detail"} <= set(response.json)
    assert response.json["status"] == case.status
    assert table_snapshot() == before


def test_a_validation_problem_names_every_field_at_fault(api, populated):
    response = api.post(CREDIT, {"amount": 1.5, "currency": "eur", "memo": "x"})

    assert response.code == "validation_error"
    assert {error["field"] for error in response.json["errors"]} == {"amount", "currency", "memo"}


# -- the limits themselves are accepted -----------------------------------------------


def test_a_body_of_exactly_16_kib_is_accepted_and_one_byte_more_is_not(api, populated):
    body = json.dumps({"amount": 1, "currency": "EUR"})
    at_limit = body + " " * (16 * 1024 - len(body))

    accepted = api.post(CREDIT, raw=at_limit)
    refused = api.post(CREDIT, raw=at_limit + " ")

    assert accepted.status == 201
    assert (refused.status, refused.code) == (413, "payload_too_large")


def test_metadata_and_description_at_their_limits_are_accepted(api, populated):
    metadata = {f"{i:02d}" + "k" * 62: "v" * 256 for i in range(16)}

    response = api.post(CREDIT, with_(MOVE, metadata=metadata, description="d" * 256))

    assert response.status == 201, response.json
    assert response.json["events"][0]["metadata"] == metadata


def test_the_largest_amount_is_accepted(api, populated):
    response = api.post(CREDIT, with_(MOVE, amount=2**53 - 1))

    assert response.status == 201
    assert response.json["events"][0]["amount"] == 2**53 - 1


def test_a_64_char_account_id_with_every_allowed_symbol_is_accepted(api):
    account_id = "Az09._:-" * 8

    opened = api.post("/accounts", {"account_id": account_id, "currency": "EUR"})
    credited = api.post(f"/accounts/{account_id}/credits", MOVE)

    assert (opened.status, credited.status) == (201, 201)


# -- cursors that belong to another query ---------------------------------------------


def _cursor(api, account_id: str, **params: str) -> str:
    page = api.get(f"/accounts/{account_id}/events", {"limit": "1", **params})
    assert page.json["next_cursor"], page.json
    return page.json["next_cursor"]


@pytest.mark.parametrize(
    "issued_for, replayed_with",
    [
        ({"account": "bob"}, {}),
        ({"order": "desc"}, {}),
        ({}, {"order": "desc"}),
        ({"from": "2000-01-01T00:00:00Z"}, {}),
        ({}, {"to": "2999-01-01T00:00:00Z"}),
    ],
    ids=["another account", "another order", "order added", "another from", "to added"],
)
def test_a_cursor_of_another_query_is_refused(api, populated, issued_for, replayed_with):
    api.post("/accounts/bob/credits", MOVE)  # bob now has two events, so page one has a cursor
    issued_for = dict(issued_for)
    account = issued_for.pop("account", "alice")
    cursor = _cursor(api, account, **issued_for)

    response = api.get(EVENTS, {"cursor": cursor, **replayed_with})

    assert (response.status, response.code) == (400, "invalid_cursor")


def _payload(cursor: str) -> dict:
    payload = cursor.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _resigned(settings, fields: dict) -> str:
    """A cursor with these fields, signed with the deployment's own key (as if the key leaked)."""
    return CursorCodec(settings.cursor_key).seal(fields)


def test_a_cursor_with_its_account_rewritten_is_refused(api, populated):
    cursor = _cursor(api, "alice")
    signature = cursor.split(".")[1]
    forged = base64.urlsafe_b64encode(json.dumps({**_payload(cursor), "a": "bob"}).encode()).decode().rstrip("=")

    response = api.get(EVENTS, {"cursor": f"{forged}.{signature}"})

    assert (response.status, response.code) == (400, "invalid_cursor")


def test_a_cursor_moved_outside_its_window_is_refused_even_when_signed(api, populated, settings):
    cursor = _cursor(api, "alice", **{"from": "2000-01-01T00:00:00Z"})
    forged = _resigned(settings, {**_payload(cursor), "e": "0" * 26})

    response = api.get(EVENTS, {"cursor": forged, "from": "2000-01-01T00:00:00Z"})

    assert (response.status, response.code) == (400, "invalid_cursor")


HOSTILE_CURSORS = {
    "2,000 nested brackets": base64.urlsafe_b64encode(b"[" * 2000).decode(),
    "nested brackets with a dot": base64.urlsafe_b64encode(b"[" * 2000).decode() + ".AAAA",
    "oversized": "A" * 5000 + ".AAAA",
    "not base64": "%%%.###",
    "empty parts": ".",
    "many dots": "a.b.c",
    "a JSON list": base64.urlsafe_b64encode(b"[1,2,3]").decode() + ".AAAAAAAAAAAAAAAAAAAAAA",
}


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS.values(), ids=HOSTILE_CURSORS.keys())
@pytest.mark.parametrize("path", [EVENTS, "/events"])
def test_a_hostile_cursor_is_a_400_not_a_crash(api, populated, path, cursor):
    params = {"cursor": cursor}
    if path == "/events":
        params.update({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"})

    response = api.get(path, params)

    assert (response.status, response.code) == (400, "invalid_cursor")


def test_a_timeline_cursor_whose_position_lies_outside_its_window_is_refused(api, populated, settings):
    window = {"from": "2026-01-01T00:00:00.000Z", "to": "2026-01-02T00:00:00.000Z"}
    forged = _resigned(settings, {"w0": window["from"], "w1": window["to"], "e": "7" + "Z" * 25, "a": "alice"})

    response = api.get("/events", {"cursor": forged, **window})

    assert (response.status, response.code) == (400, "invalid_cursor")


# -- hostile ids as API Gateway delivers them (percent-decoded) -----------------------

DECODED_HOSTILE_IDS = ["../../etc", "..%2F..%2Fetc", "alice\x00", "alice\nadmin", "a" * 65, "été", "", "a b"]


@pytest.mark.parametrize("account_id", DECODED_HOSTILE_IDS, ids=repr)
def test_a_hostile_account_id_is_refused_by_every_ledger_operation(ledger, populated, table_snapshot, account_id):
    caller = Caller("anonymous", "hostile")
    movement = MovementRequest(amount=1, currency="EUR")
    before = table_snapshot()

    for operation in (
        lambda: ledger.credit(caller, account_id, movement),
        lambda: ledger.debit(caller, account_id, movement),
        lambda: ledger.get_account(account_id),
        lambda: ledger.history(account_id),
    ):
        with pytest.raises(errors.InvalidIdentifier):
            operation()
    with pytest.raises(ValidationError) as refused:
        TransferRequest(from_account="alice", to_account=account_id, amount=1, currency="EUR")
    assert [error["loc"] for error in refused.value.errors()] == [("to_account",)]
    assert table_snapshot() == before


# -- the HTTP envelope ------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("GET", "/transfers"), ("PUT", CREDIT), ("DELETE", "/accounts/alice")])
def test_a_method_a_route_does_not_take_is_405_as_a_problem_naming_the_allowed_ones(
    api, populated, table_snapshot, method, path
):
    before = table_snapshot()

    response = api.request(method, path, MOVE)

    assert (response.status, response.code) == (405, "method_not_allowed")
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["allow"]
    assert table_snapshot() == before


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_a_json_content_type_with_parameters_or_other_case_is_accepted(api, populated, content_type):
    response = api.post(CREDIT, MOVE, content_type=content_type)

    assert response.status == 201
