"""Property-based API testing from the OpenAPI document (schemathesis), over real HTTP, on moto.

Schemathesis generates requests from `openapi.json`, valid and invalid, and sends
them to the app behind the same hardened HTTP server `ledger serve` runs. For every
answer: no 5xx; the status is one the document lists for that route; the body has
the documented shape (so the document cannot drift from the code); every refusal is
an `application/problem+json` document with a `code` the document names; and a
refused request changed no table. A few accounts and a transaction exist, so that
generated ids sometimes hit real data.

`HYPOTHESIS_PROFILE=ci` (the default) sends about 1,000 requests; `thorough` ten
times more.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis import GenerationMode
from chalice.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from composition.root import Root
from api import openapi
from profiles import examples
from api.app import create_app
from api_client import TEST_TOKEN_KEY, token
from ledger.config import Settings, dynamodb_client
from runtime.http_server import create_server
from runtime.tables import all_definitions, ensure_tables

EXAMPLES = examples(92)  # 11 operations, positive and negative: about 1,000 requests a run
SCHEMA = schemathesis.openapi.from_dict(openapi.document())
PROBLEM_CODES = set(openapi.document()["x-problem-statuses"])
SEEDED = {"alice": "EUR", "bob": "EUR", "carol": "USD"}
AUTHORIZED = {"Authorization": f"Bearer {token(ttl=3 * 3600)}"}


@pytest.fixture(scope="module")
def served(moto_dynamodb: Any) -> Iterator[tuple[str, Any, Settings]]:
    """The app behind the local server on a free port, over fresh tables with a little data."""
    stage = Settings(stage="fuzz", region="us-east-1", token_key=TEST_TOKEN_KEY)
    client = dynamodb_client(stage)
    ensure_tables(client, stage)
    server = create_server(create_app(Root(stage, client=client)), Config(chalice_stage="fuzz"), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        _seed(base)
        yield base, client, stage
    finally:
        server.shutdown()
        server.server_close()
        for definition in all_definitions(stage)[0]:
            client.delete_table(TableName=definition["TableName"])


def _seed(base: str) -> None:
    import urllib.request

    def post(path: str, body: dict, key: str) -> None:
        request = urllib.request.Request(
            base + path, json.dumps(body).encode(), {**AUTHORIZED, "Content-Type": "application/json", "Idempotency-Key": key},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

    for account, currency in SEEDED.items():
        post("/accounts", {"account_id": account, "currency": currency, "allow_overdraft": account == "bob"}, f"seed-{account}")
    post("/accounts/alice/credits", {"amount": 1000, "currency": "EUR"}, "seed-credit")
    post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 10, "currency": "EUR"}, "seed-transfer")


def snapshot(client: Any, stage: Settings) -> dict[str, list[str]]:
    tables = stage.tables
    found = {}
    for table in (tables.events, tables.accounts, tables.idempotency):
        items: list[str] = []
        for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            items.extend(json.dumps(item, sort_keys=True) for item in page["Items"])
        found[table] = sorted(items)
    return found


def check_answer(case: Any, base: str, client: Any, stage: Settings) -> None:
    writes = case.method.upper() == "POST"
    before = snapshot(client, stage) if writes else None

    response = case.call(base_url=base, headers=AUTHORIZED)

    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    if response.status_code >= 400:
        assert response.headers.get("content-type") == ["application/problem+json"], (response.text, case.as_curl_command())
        problem = response.json()
        assert problem["status"] == response.status_code and problem["code"] in PROBLEM_CODES, problem
        if writes:
            assert snapshot(client, stage) == before, f"a refused {case.method} {case.formatted_path} changed a table"


def test_every_generated_request_gets_a_documented_answer_and_a_refusal_changes_nothing(served):
    base, client, stage = served
    sent: dict[str, int] = {}
    for result in SCHEMA.get_all_operations():
        operation = result.ok()
        breakable = bool(operation.definition.raw.get("parameters") or operation.definition.raw.get("requestBody"))
        modes = list(GenerationMode) if breakable else [GenerationMode.POSITIVE]
        for mode in modes:  # valid requests, and requests that break the document on purpose

            @settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:  # noqa: B023 - run at once, in this iteration
                sent[operation.label] = sent.get(operation.label, 0) + 1
                check_answer(case, base, client, stage)

            try:
                fuzz()
            except Unsatisfiable:  # nothing of this operation can break its document (a bare path, say)
                assert mode is GenerationMode.NEGATIVE

    print(f"schemathesis sent {sum(sent.values())} requests: {sent}")
    assert sum(sent.values()) >= 1000, sent
