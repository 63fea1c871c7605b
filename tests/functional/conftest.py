"""Fixtures for functional tests: the real app and ledger over moto's in-process DynamoDB.

Every test gets fresh, empty tables of its own (creating them in moto takes
milliseconds; one moto backend and client serve each module), a `Ledger`
built by the composition root, and the Chalice app served through `chalice.test.Client`.
`table_snapshot()` reads every ledger table into a plain, comparable value, so a test
can say "this refusal wrote nothing" with one equality.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from chalice.test import Client
from moto import mock_aws

from api.app import app, use_ledger
from ledger.bootstrap import build_ledger
from ledger.config import Settings, dynamodb_client
from ledger.schema import table_definitions
from ledger.service import Ledger

REGION = "us-east-1"
_AUTO = object()
_keys = itertools.count(1)


def fresh_key() -> str:
    """An Idempotency-Key no other request of this session uses."""
    return f"test-key-{next(_keys):06d}"


@dataclass(frozen=True)
class ApiResponse:
    """What the client saw: status, headers (names lower-cased), raw body, parsed JSON."""

    status: int
    headers: dict[str, str]
    body: bytes
    json: Any

    @property
    def code(self) -> str | None:
        """The problem document's `code`, if the body is one."""
        return self.json.get("code") if isinstance(self.json, dict) else None


class Api:
    """A thin helper over Chalice's test client that speaks JSON and Idempotency-Keys."""

    def __init__(self, client: Client) -> None:
        self._http = client.http

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        key: Any = _AUTO,
        raw: bytes | str | None = None,
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> ApiResponse:
        """POST `body` as JSON (or `raw` bytes as given); `key=None` sends no Idempotency-Key."""
        sent: dict[str, str] = {}
        if content_type is not None:
            sent["Content-Type"] = content_type
        if key is _AUTO:
            key = fresh_key()
        if key is not None:
            sent["Idempotency-Key"] = key
        sent.update(headers or {})
        if raw is not None:
            payload = raw.encode() if isinstance(raw, str) else raw
        elif body is None:
            payload = b""
        else:
            payload = json.dumps(body).encode()
        return self._wrap(self._http.post(path, headers=sent, body=payload))

    def request(self, method: str, path: str, body: Any = None) -> ApiResponse:
        """Any method, JSON body, a fresh Idempotency-Key: for routes and methods that do not exist."""
        headers = {"Content-Type": "application/json", "Idempotency-Key": fresh_key()}
        payload = b"" if body is None else json.dumps(body).encode()
        return self._wrap(self._http.request(method, path, headers=headers, body=payload))

    def get(self, path: str, params: dict[str, Any] | None = None) -> ApiResponse:
        if params:
            path = f"{path}?{urlencode(params)}"
        return self._wrap(self._http.get(path))

    @staticmethod
    def _wrap(response: Any) -> ApiResponse:
        try:
            parsed = json.loads(response.body) if response.body else None
        except ValueError:
            parsed = None
        return ApiResponse(
            status=response.status_code,
            headers={name.lower(): value for name, value in response.headers.items()},
            body=response.body,
            json=parsed,
        )


_stages = itertools.count(1)


@pytest.fixture(scope="module")
def moto_dynamodb() -> Iterator[Any]:
    """An in-process moto backend and one client per test module (building a client costs ~0.1 s).

    Module scope, not session: the mock and its AWS_* variables end with the module, so
    they never leak into other test folders (the integration tests talk to real servers).
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        }.items():
            patch.setenv(name, value)
        with mock_aws():
            yield dynamodb_client(Settings(region=REGION))


@pytest.fixture
def settings() -> Settings:
    """Settings whose stage, and so whose table names, no other test uses."""
    return Settings(stage=f"functest{next(_stages)}", region=REGION)


@pytest.fixture
def dynamodb(settings: Settings, moto_dynamodb: Any) -> Iterator[Any]:
    """The moto DynamoDB client, with every ledger table of `settings` freshly created and empty."""
    definitions = table_definitions(settings.tables)
    for definition in definitions:
        moto_dynamodb.create_table(**definition)
    yield moto_dynamodb
    for definition in definitions:
        moto_dynamodb.delete_table(TableName=definition["TableName"])


@pytest.fixture
def ledger(settings: Settings, dynamodb: Any) -> Ledger:
    return build_ledger(settings, dynamodb)


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    use_ledger(ledger)
    try:
        with Client(app) as client:
            yield Api(client)
    finally:
        use_ledger(None)


@pytest.fixture
def open_account(api: Api) -> Callable[..., dict[str, Any]]:
    """Factory: open an account through the API and return its JSON; fails the test on refusal."""

    def _open(account_id: str, currency: str = "EUR", allow_overdraft: bool = False) -> dict[str, Any]:
        response = api.post(
            "/accounts", {"account_id": account_id, "currency": currency, "allow_overdraft": allow_overdraft}
        )
        assert response.status == 201, response.json
        return response.json

    return _open


@pytest.fixture
def table_snapshot(settings: Settings, dynamodb: Any) -> Callable[[], dict[str, list[str]]]:
    """A function reading every ledger table into {table: sorted canonical items}."""
    tables = settings.tables

    def _snapshot() -> dict[str, list[str]]:
        snapshot: dict[str, list[str]] = {}
        for table in (tables.events, tables.accounts, tables.idempotency):
            items: list[str] = []
            for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                items.extend(json.dumps(item, sort_keys=True) for item in page["Items"])
            snapshot[table] = sorted(items)
        return snapshot

    return _snapshot

