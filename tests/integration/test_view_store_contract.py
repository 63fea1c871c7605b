"""The view store's contract, on every backend: moto in-process and DynamoDB Local with one PutItem
per account (as on AWS), and DynamoDB Local with many accounts to a transaction (as `ledger serve`
writes there).

Whatever the backend, every view is the fold of its log after any hostile delivery
and any crash around the writes, and a balance item stays within one write unit.
On DynamoDB Local: a batch's accounts are written one PutItem each or 100 to a
transaction; a write refused (its item moved meanwhile, or throttled) is planned
again or reported, never lost nor counted twice.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from profiles import examples
from projection_faults import CrashingClient, hostile_delivery, ledgers

from composition.root import Root
from ledger.commands import MovementRequest, OpenAccountRequest
from ledger.config import Settings, dynamodb_client
from ledger.service import Caller
from projections.balances import BalanceChange
from projections.projector import Projector, key_of
from runtime.tables import all_definitions, ensure_tables

REGION = "us-east-1"
CURRENCY = "EUR"


@pytest.fixture(scope="module", autouse=True)
def metrics_off() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        yield


@pytest.fixture(scope="module", params=["moto", "dynamodb-local-items", "dynamodb-local-transactions"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, Any, str | None]]:
    """(name, DynamoDB client, streams client, endpoint) of one backend, for the whole module.

    `dynamodb-local-items`: DynamoDB Local with the projector's writes one PutItem per account, as on
    AWS; `dynamodb-local-transactions`: as `ledger serve` sends them there, many accounts to a transaction.
    """
    if request.param == "moto":
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                                "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"}.items():  # fmt: skip
                patch.setenv(name, value)
            with mock_aws():
                yield "moto", dynamodb_client(Settings(region=REGION)), boto3.client("dynamodbstreams", region_name=REGION), None
    else:
        local = request.getfixturevalue("dynamodb_local")
        settings = Settings(region=REGION, endpoint_url=local.endpoint_url)
        streams = boto3.client(
            "dynamodbstreams", endpoint_url=local.endpoint_url, region_name=REGION, aws_access_key_id="local", aws_secret_access_key="local"
        )
        yield request.param, dynamodb_client(settings), streams, local.endpoint_url


def writes_of(backend: tuple[str, Any, Any, str | None]) -> str:
    return "transactions" if backend[0].endswith("-transactions") else "items"


class Stage:
    """Fresh tables of a stage of their own on the backend, dropped on exit."""

    def __init__(self, client: Any, endpoint: str | None) -> None:
        self.client = client
        self.settings = Settings(stage=f"v{uuid.uuid4().hex[:10]}", region=REGION, endpoint_url=endpoint)

    def __enter__(self) -> Stage:
        ensure_tables(self.client, self.settings)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for definition in all_definitions(self.settings)[0]:
            self.client.delete_table(TableName=definition["TableName"])


@settings(max_examples=examples(12), deadline=None, suppress_health_check=list(HealthCheck))
@given(scenario=ledgers(), data=st.data())
def test_every_balance_is_the_fold_of_its_log_whatever_the_delivery_and_the_crashes(backend, scenario, data):
    _, client, streams, endpoint = backend
    with Stage(client, endpoint) as stage:
        hostile_delivery(client, streams, stage.settings, scenario, data, writes=writes_of(backend))


# -- DynamoDB Local: how the writes of a batch travel ----------------------------------------------------


local_only = pytest.mark.parametrize("backend", ["dynamodb-local-items"], indirect=True)


@pytest.fixture
def local(backend) -> tuple[Any, str]:
    _, client, _, endpoint = backend
    return client, endpoint


class Counting:
    """Passes calls through, counting them by operation; `refuse` answers the puts of some balance items as throttled."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls: Counter[str] = Counter()
        self.refuse: set[str] = set()  # balance keys whose puts are throttled (not run)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if not callable(attribute):
            return attribute

        def counted(**request: Any) -> Any:
            self.calls[name] += 1
            if name == "put_item" and request["Item"]["pk"]["S"] in self.refuse:
                raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "PutItem")
            return attribute(**request)

        return counted


def _open_and_credit(ledger: Any, accounts: list[str], credits: int) -> None:
    for n, account in enumerate(accounts):
        ledger.open_account(Caller("t", f"o-{account}"), OpenAccountRequest(account_id=account, currency=CURRENCY, allow_overdraft=True))
        for k in range(credits):
            ledger.credit(Caller("t", f"c-{account}-{k}"), account, MovementRequest(amount=n + k + 1, currency=CURRENCY))


@pytest.mark.parametrize(
    ("backend", "requests", "reads"),
    [("dynamodb-local-items", {"put_item": 60}, 3), ("dynamodb-local-transactions", {"transact_write_items": 1}, 1)],
    indirect=["backend"],
)
def test_the_accounts_of_a_batch_are_written_one_put_each_or_100_to_a_transaction(backend, requests, reads):
    _, client, _, endpoint = backend
    with Stage(client, endpoint) as stage:
        ledger = Root(stage.settings, client=client).ledger
        accounts = [f"a{n:03d}" for n in range(60)]
        _open_and_credit(ledger, accounts, 1)
        events = [e for a in accounts for e in ledger.full_history(a)]
        counting = Counting(client)
        store = Root(stage.settings, client=counting, projection_writes=writes_of(backend)).balance_store

        report = Projector(store, workers=1).project(events)

        assert report.failed == {} and report.applied == {key_of(e) for e in events}
        writes = {name: n for name, n in counting.calls.items() if name in ("transact_write_items", "put_item")}
        assert writes == requests
        assert counting.calls["batch_get_item"] == reads  # the items this process did not know, once per worker's share
        views = Root(stage.settings, client=client).balance_store
        for account in accounts:
            assert views.get(account, consistent=True).matches(BalanceChange.of(ledger.full_history(account)))


@pytest.mark.parametrize("backend", ["dynamodb-local-items", "dynamodb-local-transactions"], indirect=True)
def test_a_write_refused_because_its_item_moved_is_planned_again_from_the_item_it_hands_back(backend):
    """One put each: only that put is refused; in a transaction all are, and the others go again."""
    _, client, _, endpoint = backend
    with Stage(client, endpoint) as stage:
        ledger = Root(stage.settings, client=client).ledger
        accounts = ["p", "q", "r"]
        _open_and_credit(ledger, accounts, 3)
        logs = {a: list(ledger.full_history(a)) for a in accounts}
        first = Projector(Root(stage.settings, client=client, projection_writes=writes_of(backend)).balance_store, workers=1)
        first.project([e for a in accounts for e in logs[a][:2]])  # knows every item
        Projector(Root(stage.settings, client=client).balance_store).project([logs["q"][2]])  # another process, meanwhile

        report = first.project([e for a in accounts for e in logs[a][2:]])

        assert report.failed == {} and report.duplicates == {key_of(logs["q"][2])}
        views = Root(stage.settings, client=client).balance_store
        for account in accounts:
            assert views.get(account, consistent=True).matches(BalanceChange.of(logs[account]))


@local_only
def test_puts_throttled_in_a_batch_are_reported_and_their_redelivery_counts_once(local):
    client, endpoint = local
    with Stage(client, endpoint) as stage:
        ledger = Root(stage.settings, client=client).ledger
        accounts = ["s", "t", "u", "v"]
        _open_and_credit(ledger, accounts, 2)
        events = [e for a in accounts for e in ledger.full_history(a)]
        counting = Counting(client)
        counting.refuse = {"balance#t", "balance#v"}
        projector = Projector(Root(stage.settings, client=counting).balance_store, workers=1)

        report = projector.project(events)

        assert {account for account, _ in report.failed} == {"t", "v"}
        counting.refuse = set()
        again = projector.project(events)  # the event source delivers them again
        assert again.failed == {} and {a for a, _ in again.applied} == {"t", "v"}
        views = Root(stage.settings, client=client).balance_store
        for account in accounts:
            assert views.get(account, consistent=True).matches(BalanceChange.of(ledger.full_history(account)))


@local_only
def test_a_full_balance_item_of_a_64_character_account_costs_one_write_unit(local):
    client, endpoint = local
    with Stage(client, endpoint) as stage:
        account = "y" * 64
        ledger = Root(stage.settings, client=client).ledger
        _open_and_credit(ledger, [account], 30)
        events = list(ledger.full_history(account))
        store = Root(stage.settings, client=client).balance_store
        Projector(store).project(events)
        item = client.get_item(TableName=f"{stage.settings.stage}-ledger-balances", Key={"pk": {"S": "balance#" + account}})["Item"]
        assert len(item["recent"]["SS"]) == store.window(account)
        for name in ("balance", "credits", "debits", "event_count", "version"):
            item[name] = {"N": "9" * 38}
        item["elsewhere"] = {"N": "-" + "9" * 38}

        put = client.put_item(TableName=f"{stage.settings.stage}-ledger-balances", Item=item, ReturnConsumedCapacity="TOTAL")

        assert put["ConsumedCapacity"]["CapacityUnits"] == 1.0


@pytest.mark.parametrize("backend", ["moto", "dynamodb-local-items"], indirect=True)
def test_the_event_source_may_run_the_handler_with_the_default_root_on_either_backend(backend):
    """The composition root's default way of writing (one PutItem per account, as on AWS) runs on either backend."""
    _, client, streams, endpoint = backend
    with Stage(client, endpoint) as stage:
        ledger = Root(stage.settings, client=client).ledger
        _open_and_credit(ledger, ["m", "n"], 2)
        events = [e for a in ("m", "n") for e in ledger.full_history(a)]
        crashing = CrashingClient(client, [])
        report = Root(stage.settings, client=crashing).projector.project(events)
        assert report.failed == {} and len(report.applied) == len(events)
