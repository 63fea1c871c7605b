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
from typing import Any

import pytest
from chalice.test import Client
from moto import mock_aws

from composition.root import Root
from api.app import create_app
from ledger.config import Settings, dynamodb_client
from ledger.schema import table_definitions
from ledger.service import Ledger

from api_client import TEST_TOKEN_KEY, Api
from stream_support import Stage

REGION = "us-east-1"
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
    return Settings(stage=f"functest{next(_stages)}", region=REGION, token_key=TEST_TOKEN_KEY)


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
def root(settings: Settings, dynamodb: Any) -> Root:
    """The composition root of the test's region, over moto."""
    return Root(settings, client=dynamodb)


@pytest.fixture
def ledger(root: Root) -> Ledger:
    return root.ledger


@pytest.fixture
def api(root: Root) -> Iterator[Api]:
    with Client(create_app(root)) as client:
        yield Api(client)


@pytest.fixture
def stage(moto_dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    """A fresh stage with every table, balances and the events stream included; metrics not printed."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    with Stage(moto_dynamodb) as created:
        yield created


@pytest.fixture
def projected_api(stage: Stage, moto_dynamodb: Any) -> Iterator[Api]:
    """The app over `stage`, its balance route reading the stage's projected view."""
    with Client(create_app(Root(stage.settings, client=moto_dynamodb))) as client:
        yield Api(client)


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

