"""When DynamoDB fails, every route answers a fast, retryable 503, and nothing is recorded twice.

Faults are injected where botocore sends each HTTP attempt (`before-send`, ahead of
moto's own handler), so botocore's retries run for real and every attempt is
counted: retries live in one layer, and a store that is down, throttling or
answering 500 costs a bounded number of attempts, never the 30 of two stacked
retry loops. A dead endpoint is a real closed port.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from chalice.test import Client
from moto.core.models import botocore_stubber

from composition.root import Root
from api.app import create_app
from api_client import Api
from dataclasses import replace

from ledger.config import Settings, dynamodb_client
from ledger.store import BATCH_GET_ATTEMPTS
from runtime.dynamodb_local import pick_free_port

BOTOCORE_ATTEMPTS = 3  # ledger.config.REQUEST_PATH

READ_ROUTES = [
    "/accounts/alice",
    "/accounts/alice/balance",
    "/accounts/alice/balance?consistency=strong",
    "/accounts/alice/balance?at=2026-01-01T00:00:00Z",
    "/accounts/alice/digest?to=2026-01-01T00:00:00Z",
    "/accounts/alice/events",
    "/events?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
    "/transactions/01ARZ3NDEKTSV4RRFFQ69G5FAV",
]
WRITE_ROUTES = [
    ("/accounts", {"account_id": "carol", "currency": "EUR"}),
    ("/accounts/alice/credits", {"amount": 5, "currency": "EUR"}),
    ("/accounts/alice/debits", {"amount": 5, "currency": "EUR"}),
    ("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 5, "currency": "EUR"}),
    ("/transactions/01ARZ3NDEKTSV4RRFFQ69G5FAV/reversal", {}),
]


def _error(status: int, code: str) -> AWSResponse:
    body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}).encode()
    raw = _Raw(body)
    return AWSResponse("https://dynamodb.us-east-1.amazonaws.com/", status, {"Content-Type": "application/x-amz-json-1.0"}, raw)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class Faults:
    """Counts HTTP attempts per operation and answers some of them with a fault.

    botocore calls every `before-send` handler and takes the first answer, so moto
    would still apply a faulted request; the fault switches moto's handler off for
    that one attempt (`response-received` switches it back on).
    """

    def __init__(self, client: Any) -> None:
        self.attempts: dict[str, int] = {}
        self._rules: list[tuple[str, Callable[[Any], AWSResponse | None]]] = []
        client.meta.events.register_first("before-send.dynamodb", self._on_send)
        client.meta.events.register("response-received.dynamodb", self._after_attempt)

    def on(self, operation: str, answer: Callable[[Any], AWSResponse | None]) -> None:
        self._rules.append((operation, answer))

    def _on_send(self, request: Any, **_: Any) -> AWSResponse | None:
        operation = request.headers.get("X-Amz-Target", b"").decode().split(".")[-1]
        self.attempts[operation] = self.attempts.get(operation, 0) + 1
        for name, answer in self._rules:
            if name in (operation, "*"):
                response = answer(request)
                if response is not None:
                    botocore_stubber.enabled = False
                return response
        return None

    @staticmethod
    def _after_attempt(**_: Any) -> None:
        botocore_stubber.enabled = True


@pytest.fixture
def faulty(settings: Settings, dynamodb: Any) -> Iterator[tuple[Api, Faults]]:
    """The app over moto with two open accounts, alice holding 100, and a fault injector on its client."""
    client = dynamodb_client(settings)  # its own client: the hooks stay off the module's shared one
    with Client(create_app(Root(settings, client=client))) as http:
        api = Api(http)
        for account in ("alice", "bob"):
            assert api.post("/accounts", {"account_id": account, "currency": "EUR"}).status == 201
        assert api.post("/accounts/alice/credits", {"amount": 100, "currency": "EUR"}).status == 201
        yield api, Faults(client)


def assert_store_unavailable(response) -> None:
    assert response.status == 503, response.json
    assert response.code == "store_unavailable"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(("code", "status"), [("ThrottlingException", 400), ("ProvisionedThroughputExceededException", 400), ("InternalServerError", 500)])
def test_a_write_dynamodb_keeps_refusing_is_a_503_after_botocores_attempts_alone(faulty, table_snapshot, code, status):
    api, faults = faulty
    before = table_snapshot()
    faults.on("TransactWriteItems", lambda _request: _error(status, code))

    response = api.post("/accounts/alice/credits", {"amount": 5, "currency": "EUR"})

    assert_store_unavailable(response)
    assert faults.attempts["TransactWriteItems"] == BOTOCORE_ATTEMPTS  # one retry layer, not 3 x 6
    assert table_snapshot() == before


@pytest.mark.parametrize("path", READ_ROUTES)
def test_a_read_dynamodb_keeps_throttling_is_a_503(faulty, path):
    api, faults = faulty
    faults.on("*", lambda _request: _error(400, "ThrottlingException"))

    response = api.get(path)

    assert_store_unavailable(response)
    assert sum(faults.attempts.values()) == BOTOCORE_ATTEMPTS  # the first call fails, nothing more is tried


def test_an_error_dynamodb_never_documented_is_a_503_not_a_500(faulty):
    api, faults = faulty
    faults.on("*", lambda _request: _error(400, "SomethingNewException"))

    assert_store_unavailable(api.get("/accounts/alice"))
    assert_store_unavailable(api.post("/accounts/alice/credits", {"amount": 5, "currency": "EUR"}))


def test_a_write_whose_answer_was_lost_is_recorded_once_and_its_retry_replays(faulty, settings, dynamodb):
    """The commit lands, the connection drops before the answer: botocore retries, the key replays."""
    api, faults = faulty
    lost: list[str] = []

    def land_then_drop(request: Any) -> AWSResponse | None:
        if lost:
            return None
        botocore_stubber(event_name="before-send.dynamodb.TransactWriteItems", request=request)  # moto applies it
        lost.append("dropped")
        return _error(500, "InternalServerError")

    faults.on("TransactWriteItems", land_then_drop)

    first = api.post("/accounts/bob/credits", {"amount": 7, "currency": "EUR"}, key="lost-answer")
    again = api.post("/accounts/bob/credits", {"amount": 7, "currency": "EUR"}, key="lost-answer")

    assert first.status == 201 and again.status == 201
    assert first.json == again.json
    assert again.headers["idempotent-replayed"] == "true"
    events = dynamodb.query(
        TableName=settings.tables.events,
        KeyConditionExpression="entity_id = :a",
        ExpressionAttributeValues={":a": {"S": "bob"}},
    )["Items"]
    assert [e["amount"]["N"] for e in events if "amount" in e] == ["7"]


@pytest.fixture
def unreachable(settings: Settings) -> Iterator[tuple[Api, Faults]]:
    """The app over an endpoint where nothing listens (DynamoDB Local killed, say)."""
    dead = replace(settings, endpoint_url=f"http://127.0.0.1:{pick_free_port()}")
    client = dynamodb_client(dead)
    faults = Faults(client)
    with Client(create_app(Root(dead, client=client))) as http:
        yield Api(http), faults


@pytest.mark.parametrize("path", READ_ROUTES)
def test_every_read_of_an_unreachable_store_is_a_503(unreachable, path):
    api, faults = unreachable

    assert_store_unavailable(api.get(path))
    assert sum(faults.attempts.values()) <= BOTOCORE_ATTEMPTS


@pytest.mark.parametrize(("path", "body"), WRITE_ROUTES)
def test_every_write_to_an_unreachable_store_is_a_503(unreachable, path, body):
    api, faults = unreachable

    assert_store_unavailable(api.post(path, body))
    assert sum(faults.attempts.values()) <= BOTOCORE_ATTEMPTS


def _keeps_every_key(request: Any) -> AWSResponse:
    """BatchGetItem's answer when the table throttles it: nothing read, every key unprocessed (a 200, no error)."""
    asked = json.loads(request.body)["RequestItems"]
    body = json.dumps({"Responses": {table: [] for table in asked}, "UnprocessedKeys": asked}).encode()
    return AWSResponse("https://dynamodb.us-east-1.amazonaws.com/", 200, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body))


def test_a_replay_whose_events_dynamodb_keeps_unprocessed_is_a_503_after_bounded_attempts(faulty, table_snapshot):
    """A replay reads the write's events with BatchGetItem; a table that never processes them is a fast 503, not a hang."""
    api, faults = faulty
    first = api.post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 5, "currency": "EUR"}, key="throttled-replay")
    before = table_snapshot()
    faults.on("BatchGetItem", _keeps_every_key)

    assert_store_unavailable(api.post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 5, "currency": "EUR"}, key="throttled-replay"))
    assert_store_unavailable(api.get(first.headers["location"]))
    assert faults.attempts["BatchGetItem"] == 2 * BATCH_GET_ATTEMPTS
    assert table_snapshot() == before


def test_keys_dynamodb_leaves_unprocessed_once_are_read_again_and_the_replay_is_whole(faulty):
    api, faults = faulty
    body = {"from_account": "alice", "to_account": "bob", "amount": 5, "currency": "EUR"}
    first = api.post("/transfers", body, key="once-throttled")
    stalled: list[int] = []

    def once(request: Any) -> AWSResponse | None:
        if stalled:
            return None
        stalled.append(1)
        return _keeps_every_key(request)

    faults.on("BatchGetItem", once)
    again = api.post("/transfers", body, key="once-throttled")

    assert again.status == 201 and again.json == first.json
    assert faults.attempts["BatchGetItem"] == 2
