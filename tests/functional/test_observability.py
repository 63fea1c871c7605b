"""What operators see: EMF metrics with a region dimension, and JSON logs carrying the request's id.

The API is driven as API Gateway drives it (a proxy event with a request id and
the authorizer's context), so the correlation id is the one CloudWatch would show.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

import api.app
from api.app import create_app
from access.tokens import TokenCodec
from api_client import TEST_TOKEN_KEY, token
from observability import telemetry as figures


def emf_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{") and '"_aws"' in line]


def proxy_event(method: str, path: str, resource: str, params: dict[str, str], body: dict | None, key: str, request_id: str) -> dict:
    grant = TokenCodec(TEST_TOKEN_KEY).verify(token("ops", ("writer", "reader", "operator"), ("*",)))
    return {
        "httpMethod": method,
        "path": path,
        "resource": resource,
        "pathParameters": params or None,
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "headers": {"content-type": "application/json", "idempotency-key": key},
        "multiValueHeaders": {},
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
        "stageVariables": None,
        "requestContext": {
            "requestId": request_id,
            "httpMethod": method,
            "resourcePath": resource,
            "authorizer": {"principalId": grant.principal, **grant.to_context()},
        },
    }


@pytest.fixture
def lambda_app(root, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    return create_app(root)


@pytest.fixture
def api_log(monkeypatch) -> io.StringIO:
    written = io.StringIO()
    monkeypatch.setattr(api.app.logger.logger_handler, "stream", written)
    return written


def test_writes_replays_and_key_mismatches_are_counted_per_region_with_the_request_id_in_the_log(lambda_app, root, capsys, api_log):
    def call(path, resource, params, body, key, request_id):
        return lambda_app(proxy_event("POST", path, resource, params, body, key, request_id), None)

    assert call("/accounts", "/accounts", {}, {"account_id": "ola", "currency": "EUR"}, "o", "req-open")["statusCode"] == 201
    credit = ("/accounts/ola/credits", "/accounts/{account_id}/credits", {"account_id": "ola"})
    assert call(*credit, {"amount": 5, "currency": "EUR"}, "c", "req-credit")["statusCode"] == 201
    assert call(*credit, {"amount": 5, "currency": "EUR"}, "c", "req-retry")["statusCode"] == 201
    assert call(*credit, {"amount": 9, "currency": "EUR"}, "c", "req-reuse")["statusCode"] == 422

    emitted = emf_lines(capsys.readouterr().out)
    assert len(emitted) == 4  # one EMF line per request
    for line in emitted:
        assert line["region"] == "us-east-1" and line["service"] == "ledger-api"
        assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "DynamoLedger"
        assert ["region", "service"] in [sorted(d) for d in line["_aws"]["CloudWatchMetrics"][0]["Dimensions"]]
    named = [sorted(k for k in line if k[0].isupper()) for line in emitted]
    assert named == [[figures.RECORDED], [figures.RECORDED], [figures.REPLAYED], [figures.KEY_MISMATCHES, figures.REFUSALS]]
    assert root.api_telemetry.snapshot()["totals"] == {"WritesRecorded": 2, "WritesReplayed": 1, "IdempotencyKeyMismatches": 1, "Refusals": 1}

    logged = [json.loads(line) for line in api_log.getvalue().splitlines()]
    recorded = [line for line in logged if line["message"] == "recorded"]
    assert [line["correlation_id"] for line in recorded] == ["req-open", "req-credit"]


def test_a_store_failure_is_counted(root, settings, monkeypatch, capsys):
    from dataclasses import replace

    from composition.root import Root
    from ledger.config import dynamodb_client
    from runtime.dynamodb_local import pick_free_port

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    dead = replace(settings, endpoint_url=f"http://127.0.0.1:{pick_free_port()}")
    dead_root = Root(dead, client=dynamodb_client(dead))
    event = proxy_event("POST", "/accounts/x/credits", "/accounts/{account_id}/credits", {"account_id": "x"},
                        {"amount": 1, "currency": "EUR"}, "k", "req-dead")  # fmt: skip
    assert create_app(dead_root)(event, None)["statusCode"] == 503
    assert dead_root.api_telemetry.snapshot()["totals"].get(figures.STORE_UNAVAILABLE) == 1
    assert any(figures.STORE_UNAVAILABLE in line for line in emf_lines(capsys.readouterr().out))


def test_the_projector_counts_what_it_applied_and_its_lag(stage, moto_dynamodb, capsys, monkeypatch):
    import boto3

    from composition.root import Root
    from stream_support import REGION, stream_records

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    root = Root(stage.settings, client=moto_dynamodb)
    from ledger.commands import MovementRequest, OpenAccountRequest
    from ledger.service import Caller

    root.ledger.open_account(Caller("t", "o"), OpenAccountRequest(account_id="pia", currency="EUR"))
    root.ledger.credit(Caller("t", "c"), "pia", MovementRequest(amount=3, currency="EUR"))
    records = stream_records(moto_dynamodb, boto3.client("dynamodbstreams", region_name=REGION), stage.settings)
    assert root.stream_handler({"Records": records}, None) == {"batchItemFailures": []}

    snapshot = root.projector_telemetry.snapshot()
    assert snapshot["totals"][figures.PROJECTED] == 2 and snapshot["lag_ms"]["samples"] >= 1
    lines = emf_lines(capsys.readouterr().out)
    assert lines and all(line["region"] == stage.settings.region and line["service"] == "ledger-projector" for line in lines)


def test_ledger_status_against_an_endpoint_reads_what_the_tables_say(root, settings, ledger):
    """Given an endpoint or --aws there is no serve to ask: DescribeTable's (approximate) item counts."""
    from ledger.commands import OpenAccountRequest
    from ledger.service import Caller
    from runtime.status import _tables

    ledger.open_account(Caller("ops", "o"), OpenAccountRequest(account_id="una", currency="EUR"))

    approximate = _tables(root.dynamodb, settings, exact=False)
    exact = _tables(root.dynamodb, settings, exact=True)

    assert approximate["exact"] is False and exact["exact"] is True
    assert exact["items"][settings.tables.events] == 1 and exact["items"][settings.tables.accounts] == 1
    assert set(approximate["items"]) == set(exact["items"])
    assert all(count is None or count >= 0 for count in approximate["items"].values())
