"""The functions' roles allow exactly what the code does: every call is allowed, and every grant is used.

The session's guard (tests/event_log_guard.py) counts each DynamoDB call made under
the API or the stream handler as the IAM actions and tables it needs. Here a workload
drives both through every route and every kind of write, in two regions' roots over one
set of tables (an account homed in each region, transfers between homes, a credit
recorded elsewhere whose account has not arrived yet), and the calls are held against
the policies read out of the service template `ledger package` wrote, statement by
statement: each call allowed, each granted action on each table used.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from chalice.test import Client

from api.app import create_app
from api_client import TEST_TOKEN_KEY, Api
from composition.root import Root
from deploy.policy import APPEND_ONLY_DENIED, policy_documents
from iam_policy import allows, dynamodb_arn, resolve, statements
from ledger.config import Settings
from ledger.ids import format_rfc3339
from ledger.store import event_item
from past_events import past_event
from stream_support import Stage, stream_records

EAST, WEST = "us-east-1", "eu-west-1"
ACCOUNT = "123456789012"
ROLES = {"api": "ApiHandlerRole", "projector": "ProjectEventsRole"}
# What no DynamoDB call can show: the projector's stream, its failure queue, logs, the deny.
NOT_TABLE_GRANTS = {"Logs", "EventsStream", "ListStreams", "FailureQueue", "EventLogIsAppendOnly"}


def _bindings(build) -> dict[str, str]:
    return {
        "AWS::Partition": "aws",
        "AWS::Region": EAST,
        "AWS::AccountId": ACCOUNT,
        "EventsStreamArn": f"arn:aws:dynamodb:{EAST}:{ACCOUNT}:table/{build.stage}-ledger-events/stream/2026-01-01T00:00:00.000",
        "TokenSecretArn": f"arn:aws:secretsmanager:{EAST}:{ACCOUNT}:secret:ledger-token-AbCdEf",
        "ProjectorFailureQueue.Arn": f"arn:aws:sqs:{EAST}:{ACCOUNT}:failures",
    }


def _role_policies(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for entry, role in ROLES.items():
        (policy,) = service["Resources"][role]["Properties"]["Policies"]
        found[entry] = policy["PolicyDocument"]
    return found


def _workload(stage, moto_dynamodb) -> None:
    """Every route and kind of write through the API in two regions, then the east projector over the stream."""
    roots = {
        # One account at a time: moto undoes a cancelled transaction (the settled credit leg's) by restoring whole
        # tables, which would also undo another account's write made meanwhile; DynamoDB does not.
        region: Root(Settings(stage=stage.settings.stage, region=region, regions=(EAST, WEST), token_key=TEST_TOKEN_KEY),
                     client=moto_dynamodb, projection_workers=1)
        for region in (EAST, WEST)
    }
    with Client(create_app(roots[EAST])) as east_client, Client(create_app(roots[WEST])) as west_client:
        east, west = Api(east_client), Api(west_client)
        assert east.post("/accounts", {"account_id": "alice", "currency": "EUR"}).status == 201
        assert east.post("/accounts", {"account_id": "bob", "currency": "EUR", "allow_overdraft": True}).status == 201
        assert west.post("/accounts", {"account_id": "carol", "currency": "EUR"}).status == 201
        assert east.post("/accounts/alice/credits", {"amount": 1250, "currency": "EUR"}).status == 201
        debit = east.post("/accounts/alice/debits", {"amount": 200, "currency": "EUR"}, key="least-privilege-debit")
        assert debit.status == 201
        replay = east.post("/accounts/alice/debits", {"amount": 200, "currency": "EUR"}, key="least-privilege-debit")
        assert replay.headers.get("idempotent-replayed") == "true"
        assert east.post("/accounts/alice/debits", {"amount": 10**9, "currency": "EUR"}).code == "insufficient_funds"
        transfer = east.post("/transfers", {"from_account": "alice", "to_account": "bob", "amount": 500, "currency": "EUR"})
        to_carol = {"from_account": "alice", "to_account": "carol", "amount": 100, "currency": "EUR"}
        assert east.post("/transfers", to_carol).status == 201  # a credit homed elsewhere: checked, not written
        to_alice = {"from_account": "carol", "to_account": "alice", "amount": 50, "currency": "EUR"}
        assert west.post("/accounts/carol/credits", {"amount": 100, "currency": "EUR"}).status == 201
        assert west.post("/transfers", to_alice).status == 201  # recorded in the west, settled at alice's home
        batch = [
            {"type": "credit", "account_id": "alice", "amount": 5, "currency": "EUR"},
            {"type": "transfer", "from_account": "alice", "to_account": "carol", "amount": 3, "currency": "EUR"},
        ]
        assert east.post("/batches", {"mode": "atomic", "operations": batch}).status == 201
        assert east.post("/batches", {"mode": "independent", "operations": batch}).status == 200
        transaction = transfer.json["transaction_id"]
        assert east.get("/accounts/alice").status == 200
        assert east.get(f"/transactions/{transaction}").status == 200
        assert east.post(f"/transactions/{transaction}/reversal", None).status == 201
        page = east.get("/accounts/alice/events", {"order": "desc", "limit": "2"})
        assert east.get("/accounts/alice/events", {"order": "desc", "limit": "2", "cursor": page.json["next_cursor"]}).status == 200
        yesterday = format_rfc3339(datetime.now(timezone.utc) - timedelta(days=1))
        assert east.get("/events", {"from": yesterday}).status == 200
        assert east.get("/accounts/alice/balance").status == 200
        assert east.get("/accounts/alice/balance", {"consistency": "strong"}).status == 200
        newest = page.json["events"][0]["event_id"]
        assert east.get("/accounts/alice/balance", {"min_as_of": newest}).status in (200, 503)
        now = format_rfc3339(datetime.now(timezone.utc))
        assert east.get("/accounts/alice/balance", {"at": now}).status == 200
        assert east.get("/accounts/alice/digest").status == 200

        # A credit recorded in the west for an account this region does not hold yet: the projector reads
        # the account item to find out, and retries the record later.
        ghost = past_event("ghost", datetime.now(timezone.utc), 5).model_copy(update={"region": WEST})
        moto_dynamodb.put_item(TableName=stage.settings.tables.events, Item=event_item(ghost))
        import boto3

        records = stream_records(moto_dynamodb, boto3.client("dynamodbstreams", region_name=EAST), stage.settings)
        answer = roots[EAST].stream_handler({"Records": records}, None)
        assert len(answer["batchItemFailures"]) == 1  # the ghost's record, and only it
        shown = east.get("/accounts/alice/balance")
        assert shown.json.get("balance") == 1250 - 200 - 100 + 50 + 2 * (5 - 3), shown.json  # the two batches: 5 in, 3 out


def _observed(guard, stage: str, template_stage: str, workload) -> Counter:
    before = Counter(guard.accesses)
    workload()
    mine = f"table/{stage}-"
    delta = Counter(guard.accesses)
    delta.subtract(before)
    return Counter(
        {
            (entry, action, "table/" + template_stage + "-" + resource[len(mine):]): count
            for (entry, action, resource), count in delta.items()
            if count > 0 and resource.startswith(mine)
        }
    )


@pytest.fixture(scope="module")
def observed(event_log_guard, moto_dynamodb, ledger_package) -> Counter:
    """The workload's calls, once for the module, named as the template's stage names its tables."""
    with pytest.MonkeyPatch.context() as patch, Stage(moto_dynamodb) as stage:
        patch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
        return _observed(event_log_guard, stage.settings.stage, ledger_package.stage, lambda: _workload(stage, moto_dynamodb))


def test_every_call_of_the_api_and_the_projector_is_allowed_by_its_role(observed, ledger_package):
    policies = {entry: resolve(p, _bindings(ledger_package)) for entry, p in _role_policies(ledger_package.template("service.json")).items()}

    refused = [key for key in observed if not allows(policies[key[0]], key[1], dynamodb_arn(key[2], EAST, ACCOUNT))]

    assert refused == []
    assert {entry for entry, _, _ in observed} == {"api", "projector"}


def test_every_grant_of_the_roles_is_used_by_the_workload(observed, ledger_package):
    """Statement by statement: each action on each table or index a role may touch, the code touched."""
    policies = {entry: resolve(p, _bindings(ledger_package)) for entry, p in _role_policies(ledger_package.template("service.json")).items()}
    used = {(entry, action, dynamodb_arn(resource, EAST, ACCOUNT)) for entry, action, resource in observed}

    unused = []
    for entry, document in policies.items():
        for statement in statements(document):
            if statement["Sid"] in NOT_TABLE_GRANTS:
                continue
            assert statement["Effect"] == "Allow"
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for action in statement["Action"]:
                for resource in resources:
                    assert "*" not in resource, statement  # exact tables and indexes, never a pattern
                    if (entry, action, resource) not in used:
                        unused.append(f"{entry} {statement['Sid']}: {action} on {resource}")

    # The projector's recovery paths (a replay below the view's floor reads the account's log; a failed condition
    # reads the item) are not reached by this workload; the whole suite reaches them, and the session's end
    # checks every call it saw against these roles.
    recovery = {"projector Balances: dynamodb:GetItem", "projector Events: dynamodb:Query"}
    assert [u for u in unused if u.split(" on ")[0] not in recovery] == []


def test_the_roles_in_the_template_are_the_generated_policies_and_nothing_else_grants(ledger_package):
    service = ledger_package.template("service.json")
    generated = policy_documents(ledger_package.stage)
    policies = _role_policies(service)

    assert policies == {"api": generated["api_handler"], "projector": generated["project_events"]}
    if "TokenAuthorizerRole" in service["Resources"]:  # once the app registers its authorizer
        (policy,) = service["Resources"]["TokenAuthorizerRole"]["Properties"]["Policies"]
        assert policy["PolicyDocument"] == generated["token_authorizer"]
    roles = {n: r for n, r in service["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    for role in roles.values():
        assert set(role["Properties"]) == {"AssumeRolePolicyDocument", "Policies"}  # no managed policies on top

    bindings = _bindings(ledger_package)
    projector = {s["Sid"]: s for s in statements(resolve(policies["projector"], bindings))}
    assert projector["EventsStream"]["Resource"] == bindings["EventsStreamArn"]
    assert projector["FailureQueue"] == {
        "Sid": "FailureQueue", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": bindings["ProjectorFailureQueue.Arn"],
    }  # fmt: skip
    for entry in ROLES:
        deny = {s["Sid"]: s for s in statements(resolve(policies[entry], bindings))}["EventLogIsAppendOnly"]
        assert deny["Effect"] == "Deny" and set(deny["Action"]) == set(APPEND_ONLY_DENIED)
        assert deny["Resource"] == [f"arn:aws:dynamodb:*:{ACCOUNT}:table/{ledger_package.stage}-ledger-events"]
