"""Authentication and authorization: tokens, roles, tenants' account scope, and keys scoped to the principal.

Tenants are account-id prefixes here (`acme:*`, `globex:*`). A token for one tenant
must get nothing of another's accounts on any route: not the data, not whether an
account exists (404 exactly as for an account that does not), and no write.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from api_client import TEST_TOKEN_KEY, Api, token
from ledger.store import event_from_item

EUR = "EUR"


@pytest.fixture
def tenants(api: Api) -> dict[str, Any]:
    """acme:alice (1,000 EUR) and globex:bob (500 EUR), each with a credit, and a transfer inside globex."""
    for account in ("acme:alice", "acme:ann", "globex:bob", "globex:bea"):
        assert api.post("/accounts", {"account_id": account, "currency": EUR}).status == 201
    alice_credit = api.post("/accounts/acme:alice/credits", {"amount": 1000, "currency": EUR}).json
    bob_credit = api.post("/accounts/globex:bob/credits", {"amount": 500, "currency": EUR}).json
    inside_globex = api.post(
        "/transfers", {"from_account": "globex:bob", "to_account": "globex:bea", "amount": 5, "currency": EUR}
    ).json
    return {"alice_credit": alice_credit["transaction_id"], "bob_credit": bob_credit["transaction_id"],
            "globex_transfer": inside_globex["transaction_id"]}


def acme(api: Api, *roles: str) -> Api:
    return api.as_(token("acme-app", roles or ("writer", "reader", "auditor", "operator"), ("acme:*",)))


# -- the attack ------------------------------------------------------------------


def test_mallory_can_neither_move_alice_s_money_nor_reverse_her_credit_nor_read_her_history(api, tenants, table_snapshot):
    mallory = api.as_(token("mallory", ("writer", "reader", "auditor", "operator"), ("mallory:*",)))
    before = table_snapshot()

    stolen = mallory.post("/transfers", {"from_account": "acme:alice", "to_account": "mallory:wallet", "amount": 5000, "currency": EUR})
    reversed_ = mallory.post(f"/transactions/{tenants['alice_credit']}/reversal", {})
    history = mallory.get("/accounts/acme:alice/events")

    assert (stolen.status, stolen.code) == (404, "account_not_found")
    assert (reversed_.status, reversed_.code) == (404, "transaction_not_found")
    assert (history.status, history.code) == (404, "account_not_found")
    assert table_snapshot() == before


# -- BOLA on every route -------------------------------------------------------------------

def _foreign_requests(ids: dict[str, Any]) -> dict[str, tuple[str, str, dict | None, tuple[int, str]]]:
    """Every route, aimed at globex from an acme token holding every role: (method, path, body, expected)."""
    missing = (404, "account_not_found")
    gone = (404, "transaction_not_found")
    return {
        "open": ("POST", "/accounts", {"account_id": "globex:new", "currency": EUR}, missing),
        "account": ("GET", "/accounts/globex:bob", None, missing),
        "balance": ("GET", "/accounts/globex:bob/balance", None, missing),
        "strong balance": ("GET", "/accounts/globex:bob/balance?consistency=strong", None, missing),
        "balance then": ("GET", "/accounts/globex:bob/balance?at=2020-01-01T00:00:00Z", None, missing),
        "digest": ("GET", "/accounts/globex:bob/digest", None, missing),
        "history": ("GET", "/accounts/globex:bob/events", None, missing),
        "credit": ("POST", "/accounts/globex:bob/credits", {"amount": 1, "currency": EUR}, missing),
        "debit": ("POST", "/accounts/globex:bob/debits", {"amount": 1, "currency": EUR}, missing),
        "transfer out": ("POST", "/transfers", {"from_account": "globex:bob", "to_account": "acme:alice", "amount": 1, "currency": EUR}, missing),
        "transfer in": ("POST", "/transfers", {"from_account": "acme:alice", "to_account": "globex:bob", "amount": 1, "currency": EUR}, missing),
        "transaction": ("GET", f"/transactions/{ids['bob_credit']}", None, gone),
        "transfer's legs": ("GET", f"/transactions/{ids['globex_transfer']}", None, gone),
        "freeze": ("POST", "/accounts/globex:bob/freeze", {}, missing),
        "unfreeze": ("POST", "/accounts/globex:bob/unfreeze", {}, missing),
        "reversal": ("POST", f"/transactions/{ids['bob_credit']}/reversal", {}, gone),
        "timeline": ("GET", "/events?from=2020-01-01T00:00:00Z", None, (403, "forbidden")),
    }


def test_every_route_refuses_another_tenant_s_accounts_and_changes_nothing(api, tenants, table_snapshot):
    intruder = acme(api)
    before = table_snapshot()
    seen = {}
    for name, (method, path, body, expected) in _foreign_requests(tenants).items():
        response = intruder.post(path, body) if method == "POST" else intruder.get(path)
        seen[name] = (response.status, response.code)
        assert response.headers["content-type"] == "application/problem+json", name
        assert "globex:bob\": " not in response.body.decode() and "500" not in response.body.decode(), name
    assert seen == {name: spec[3] for name, spec in _foreign_requests(tenants).items()}
    assert table_snapshot() == before


def test_a_foreign_account_answers_exactly_as_one_that_does_not_exist(api, tenants):
    """Byte for byte, apart from the id: a tenant cannot tell taken ids from free ones."""
    intruder = acme(api)
    foreign = intruder.get("/accounts/globex:bob/balance?consistency=strong")
    nowhere = api.get("/accounts/globex:nobody/balance?consistency=strong")
    assert (foreign.status, foreign.json) == (nowhere.status, json.loads(nowhere.body.decode().replace("globex:nobody", "globex:bob")))


def test_each_tenant_still_works_on_its_own_accounts(api, tenants):
    own = acme(api)
    moved = own.post("/transfers", {"from_account": "acme:alice", "to_account": "acme:ann", "amount": 7, "currency": EUR})
    assert moved.status == 201
    assert own.get("/accounts/acme:alice/balance?consistency=strong").json["balance"] == 993
    assert own.get(f"/transactions/{tenants['alice_credit']}").status == 200
    assert own.post(f"/transactions/{moved.json['transaction_id']}/reversal", {}).status == 201


def test_a_transaction_across_tenants_is_seen_by_both_and_reversed_by_neither_alone(api, tenants):
    crossing = api.post("/transfers", {"from_account": "acme:alice", "to_account": "globex:bob", "amount": 3, "currency": EUR}).json
    tx = crossing["transaction_id"]
    seen = acme(api, "reader").get(f"/transactions/{tx}")
    assert seen.status == 200 and [e["entity_id"] for e in seen.json["events"]] == ["acme:alice"]  # not globex's leg
    refused = acme(api, "writer").post(f"/transactions/{tx}/reversal", {})
    assert (refused.status, refused.code) == (403, "forbidden")


# -- roles ------------------------------------------------------------------------------------

ROLE_CHECKS = [
    # (roles held, method, path, body, expected status)
    (("reader",), "POST", "/accounts/acme:alice/credits", {"amount": 1, "currency": EUR}, 403),
    (("reader",), "POST", "/accounts", {"account_id": "acme:x", "currency": EUR}, 403),
    (("reader",), "GET", "/accounts/acme:alice/digest", None, 403),
    (("reader",), "GET", "/accounts/acme:alice/balance?consistency=strong", None, 200),
    (("reader",), "GET", "/accounts/acme:alice/events", None, 200),
    (("writer",), "GET", "/accounts/acme:alice/balance", None, 403),
    (("writer",), "GET", "/accounts/acme:alice/events", None, 403),
    (("writer",), "POST", "/accounts", {"account_id": "acme:x", "currency": EUR}, 403),
    (("writer",), "POST", "/accounts/acme:alice/debits", {"amount": 1, "currency": EUR}, 201),
    (("operator",), "POST", "/accounts/acme:alice/credits", {"amount": 1, "currency": EUR}, 403),
    (("operator",), "POST", "/accounts", {"account_id": "acme:x", "currency": EUR}, 201),
    (("operator",), "GET", "/accounts/acme:alice", None, 200),
    (("auditor",), "GET", "/accounts/acme:alice/digest", None, 200),
    (("auditor",), "GET", "/accounts/acme:alice/events", None, 200),
    (("auditor",), "POST", "/accounts/acme:alice/credits", {"amount": 1, "currency": EUR}, 403),
    (("auditor",), "GET", "/events?from=2020-01-01T00:00:00Z", None, 403),  # a tenant's auditor: not every account
    ((), "GET", "/accounts/acme:alice/balance", None, 403),
]


@pytest.mark.parametrize("roles, method, path, body, status", ROLE_CHECKS, ids=lambda v: str(v) if isinstance(v, (tuple, int)) else None)
def test_each_role_does_exactly_its_job(api, tenants, roles, method, path, body, status):
    caller = api.as_(token("acme-app", roles, ("acme:*",)))
    response = caller.post(path, body) if method == "POST" else caller.get(path)
    assert response.status == status, response.json
    if status == 403:
        assert response.code == "forbidden"


def test_an_auditor_of_every_account_reads_the_cross_account_timeline(api, tenants):
    auditor = api.as_(token("auditor", ("auditor",), ("*",)))
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    response = auditor.get(f"/events?from={since}&to={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 60))}")
    assert response.status == 200, response.json
    assert {e["entity_id"] for e in response.json["events"]} >= {"acme:alice", "globex:bob"}


# -- bad tokens -----------------------------------------------------------------------------------

def _tampered(good: str) -> str:
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["accounts"] = ["*"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


BAD_TOKENS = {
    "expired": lambda: token("acme-app", ("reader",), ("acme:*",), ttl=60, now=time.time() - 3600),
    "tampered claims": lambda: _tampered(token("acme-app", ("reader",), ("acme:*",))),
    "another key": lambda: token("acme-app", ("reader",), ("*",), key="another-key-" + "1" * 32),
    "alg none": lambda: jwt.encode({"sub": "x", "roles": ["reader"], "accounts": ["*"], "iss": "dynamo-ledger",
                                    "iat": int(time.time()), "exp": int(time.time()) + 60}, None, algorithm="none"),
    "wrong issuer": lambda: jwt.encode({"sub": "x", "roles": ["reader"], "accounts": ["*"], "iss": "someone-else",
                                        "iat": int(time.time()), "exp": int(time.time()) + 60}, TEST_TOKEN_KEY, algorithm="HS256"),
    "no expiry": lambda: jwt.encode({"sub": "x", "roles": ["reader"], "accounts": ["*"], "iss": "dynamo-ledger",
                                     "iat": int(time.time())}, TEST_TOKEN_KEY, algorithm="HS256"),
    "garbage": lambda: "not.a.token",
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
def test_a_bad_token_is_401_with_a_challenge_and_writes_nothing(api, tenants, table_snapshot, kind):
    caller = api.as_(BAD_TOKENS[kind]())
    before = table_snapshot()
    for response in (caller.get("/accounts/acme:alice/balance"), caller.post("/accounts/acme:alice/credits", {"amount": 1, "currency": EUR})):
        assert (response.status, response.code) == (401, "unauthorized"), (kind, response.json)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith('Bearer realm="dynamo-ledger", error="invalid_token"')
    assert table_snapshot() == before


def test_a_token_is_refused_after_its_expiry_even_when_the_gateway_cached_its_grant(api, tenants):
    """API Gateway caches an authorizer's answer per token: the view checks `expires_at` again."""
    from api.auth import grant_of
    from ledger import errors

    class Request:
        context = {"authorizer": {"principalId": "p", "roles": "reader", "accounts": '["*"]', "expires_at": int(time.time()) - 120}}

    with pytest.raises(errors.Unauthenticated, match="expired"):
        grant_of(Request())  # type: ignore[arg-type]


def test_cognito_claims_give_the_same_grant():
    from api.auth import grant_of

    class Request:
        context = {"authorizer": {"claims": {"sub": "u-1", "custom:roles": "reader,writer", "custom:accounts": "acme:*",
                                             "exp": time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(time.time() + 600))}}}

    grant = grant_of(Request())  # type: ignore[arg-type]
    assert (grant.principal, grant.roles, grant.covers("acme:a"), grant.covers("globex:a")) == ("u-1", {"reader", "writer"}, True, False)


def test_patterns_are_literal_but_for_the_star():
    from access.grants import Grant

    grant = Grant("p", frozenset({"reader"}), ("acme:*", "x.y"), 0)
    assert [grant.covers(a) for a in ("acme:", "acme:a:b", "acmeX", "x.y", "xzy", "ACME:a")] == [True, True, False, True, False, False]


# -- the principal on every event, and keys scoped to it -------------------------------------------

def test_every_event_records_the_principal_that_wrote_it(api, tenants, dynamodb, settings):
    acme(api).post("/accounts/acme:alice/debits", {"amount": 1, "currency": EUR})
    events = [event_from_item(item) for item in dynamodb.scan(TableName=settings.tables.events)["Items"]]
    callers = {f"{event.entity_id}/{event.transaction_type}": event.caller for event in events}
    assert callers["acme:alice/debit"] == "acme-app"
    assert callers["acme:alice/credit"] == "test-operator"


def test_a_principal_containing_hash_cannot_replay_another_s_key(api, tenants):
    """`org` with key `team#pay-1` and `org#team` with key `pay-1`: two principals, two recordings."""
    org = api.as_(token("org", ("writer", "reader"), ("acme:*",)))
    org_team = api.as_(token("org#team", ("writer",), ("acme:*",)))
    credit = {"amount": 10, "currency": EUR}

    first = org.post("/accounts/acme:alice/credits", credit, key="team#pay-1")
    second = org_team.post("/accounts/acme:alice/credits", credit, key="pay-1")

    assert (first.status, second.status) == (201, 201)
    assert "idempotent-replayed" not in second.headers
    assert first.json["transaction_id"] != second.json["transaction_id"]
    assert org.get("/accounts/acme:alice/balance?consistency=strong").json["balance"] == 1020


def test_the_same_key_from_the_same_principal_still_replays(api, tenants):
    writer = acme(api, "writer")
    first = writer.post("/accounts/acme:alice/credits", {"amount": 10, "currency": EUR}, key="k-1")
    again = acme(api, "writer").post("/accounts/acme:alice/credits", {"amount": 10, "currency": EUR}, key="k-1")
    assert again.headers.get("idempotent-replayed") == "true" and again.body == first.body
