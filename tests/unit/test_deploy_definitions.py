"""The deploy's tables and policies are derived from the code's own definitions, not copied."""

from __future__ import annotations

import pytest

from deploy.policy import APPEND_ONLY_DENIED, AUTHORIZER, GRANTS, PROJECTOR, policy_documents, table_names
from deploy.template import logical_id, service_merge_template, tables_template
from iam_policy import allows, iam_requests, outside_policies, resolve
from ledger.config import Settings
from ledger.schema import LedgerTables
from runtime.tables import all_definitions

STAGE = "prod"
REGIONS = ["us-east-1", "eu-west-1"]
BINDINGS = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "EventsStreamArn": "arn:aws:dynamodb:eu-west-1:123456789012:table/prod-ledger-events/stream/2026-01-01T00:00:00.000",
    "TokenSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ledger-token-AbCdEf",
    "ProjectorFailureQueue.Arn": "arn:aws:sqs:eu-west-1:123456789012:failures",
}


def arn(resource: str, region: str = "eu-west-1") -> str:
    return f"arn:aws:dynamodb:{region}:123456789012:{resource}"


def definitions() -> dict[str, dict]:
    created, _ttl = all_definitions(Settings(stage=STAGE))
    return {d["TableName"]: d for d in created}


def test_the_table_stack_holds_every_replicated_table_as_a_global_table_with_the_bootstrap_definition():
    template = tables_template(STAGE, REGIONS)
    created = definitions()
    replicated = LedgerTables.for_stage(STAGE).replicated

    tables = {r["Properties"]["TableName"]: r for r in template["Resources"].values()}

    assert set(tables) == set(replicated)
    for name, resource in tables.items():
        assert resource["Type"] == "AWS::DynamoDB::GlobalTable"
        assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
        properties = resource["Properties"]
        for key in ("KeySchema", "AttributeDefinitions", "BillingMode"):
            assert properties[key] == created[name][key]
        indexes = created[name].get("GlobalSecondaryIndexes", [])
        assert [i["IndexName"] for i in properties.get("GlobalSecondaryIndexes", [])] == [i["IndexName"] for i in indexes]
        assert properties["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
        assert [r["Region"] for r in properties["Replicas"]] == REGIONS
        assert all(r["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] for r in properties["Replicas"])
    idempotency = tables[f"{STAGE}-ledger-idempotency"]["Properties"]
    assert idempotency["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    events = tables[f"{STAGE}-ledger-events"]["Properties"]
    assert {i["IndexName"] for i in events["GlobalSecondaryIndexes"]} == {"by_transaction", "by_time"}


def test_the_service_stack_creates_the_region_local_tables_from_the_same_definitions():
    resources = service_merge_template(STAGE, REGIONS)["Resources"]
    created = definitions()
    replicated = set(LedgerTables.for_stage(STAGE).replicated)

    local = {r["Properties"]["TableName"]: r for r in resources.values() if r.get("Type") == "AWS::DynamoDB::Table"}

    assert set(local) == set(created) - replicated == {f"{STAGE}-ledger-balances", f"{STAGE}-ledger-checkpoints"}
    for name, resource in local.items():
        assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
        assert resource["Properties"]["KeySchema"] == created[name]["KeySchema"]
    assert local[f"{STAGE}-ledger-balances"]["Properties"]["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
    assert logical_id("balances") in resources


def test_replication_alarms_watch_every_other_region_of_the_deployment():
    template = service_merge_template(STAGE, REGIONS)
    alarms = [r for r in template["Resources"].values() if r.get("Properties", {}).get("MetricName") == "ReplicationLatency"]

    receiving = {(d["Value"]) for a in alarms for d in a["Properties"]["Dimensions"] if d["Name"] == "ReceivingRegion"}
    assert receiving == set(REGIONS)
    for alarm in alarms:
        region = next(d["Value"] for d in alarm["Properties"]["Dimensions"] if d["Name"] == "ReceivingRegion")
        # Created only where the stack's region is not the receiving one.
        assert template["Conditions"][alarm["Condition"]] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AWS::Region"}, region]}]}


@pytest.mark.parametrize("regions", [[], ["us-east-1", "not a region"], ["US-EAST-1"]])
def test_region_lists_must_name_regions(regions):
    with pytest.raises(ValueError):
        tables_template(STAGE, regions)


def test_a_transaction_is_authorised_item_by_item():
    params = {
        "TransactItems": [
            {"Put": {"TableName": "t-events"}},
            {"Update": {"TableName": "t-accounts"}},
            {"ConditionCheck": {"TableName": "t-accounts"}},
        ]
    }

    assert iam_requests("TransactWriteItems", params) == [
        ("dynamodb:PutItem", "table/t-events"),
        ("dynamodb:UpdateItem", "table/t-accounts"),
        ("dynamodb:ConditionCheckItem", "table/t-accounts"),
    ]
    assert iam_requests("Query", {"TableName": "t", "IndexName": "by_time"}) == [("dynamodb:Query", "table/t/index/by_time")]
    assert iam_requests("BatchGetItem", {"RequestItems": {"a": {}, "b": {}}}) == [
        ("dynamodb:BatchGetItem", "table/a"),
        ("dynamodb:BatchGetItem", "table/b"),
    ]


def test_every_role_that_touches_tables_is_denied_rewriting_events_in_every_region():
    names = table_names(STAGE)
    for function, document in policy_documents(STAGE).items():
        resolved = resolve(document, BINDINGS)
        for region in ("eu-west-1", "us-east-1", "ap-southeast-2"):
            for action in APPEND_ONLY_DENIED:
                assert not allows(resolved, action, arn(f"table/{names['events']}", region)), (function, action)
        if function != AUTHORIZER:
            assert allows(resolved, "dynamodb:PutItem" if function != PROJECTOR else "dynamodb:UpdateItem",
                          arn(f"table/{names['accounts']}"))  # fmt: skip
    api = resolve(policy_documents(STAGE)["api_handler"], BINDINGS)
    assert allows(api, "dynamodb:PutItem", arn(f"table/{names['events']}"))
    assert not allows(api, "dynamodb:PutItem", arn(f"table/{names['events']}", "us-east-1"))  # another region's replica
    assert not allows(api, "dynamodb:Scan", arn(f"table/{names['events']}"))
    assert not allows(api, "dynamodb:Query", arn("table/prod-other-table"))


def test_the_authorizer_may_read_exactly_its_secret_and_no_table():
    document = resolve(policy_documents(STAGE)[AUTHORIZER], BINDINGS)

    assert allows(document, "secretsmanager:GetSecretValue", BINDINGS["TokenSecretArn"])
    assert not allows(document, "secretsmanager:GetSecretValue", BINDINGS["TokenSecretArn"] + "x")
    assert not any(allows(document, f"dynamodb:{a}", arn(f"table/{n}")) for a in ("GetItem", "Query") for n in table_names(STAGE).values())
    assert GRANTS[AUTHORIZER] == ()


def test_a_deny_wins_over_an_allow():
    document = {
        "Statement": [
            {"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"},
            {"Effect": "Deny", "Action": ["dynamodb:DeleteItem"], "Resource": "arn:aws:dynamodb:*:1:table/e"},
        ]
    }

    assert allows(document, "dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/e")
    assert not allows(document, "dynamodb:DeleteItem", "arn:aws:dynamodb:r:1:table/e")
    assert allows(document, "dynamodb:DeleteItem", "arn:aws:dynamodb:r:1:table/other")


def test_the_session_check_names_every_call_outside_the_functions_roles():
    accesses = {
        ("api", "dynamodb:PutItem", "table/s1-ledger-events"): 3,
        ("api", "dynamodb:Query", "table/s1-ledger-events/index/by_time"): 1,
        ("projector", "dynamodb:PutItem", "table/s2-ledger-balances"): 2,
        ("api", "dynamodb:Scan", "table/s1-ledger-accounts"): 1,
        ("projector", "dynamodb:PutItem", "table/s2-ledger-events"): 1,
        ("api", "dynamodb:GetItem", "table/somebody-elses-table"): 1,
    }

    assert outside_policies(accesses) == [
        "api: dynamodb:GetItem on table/somebody-elses-table (1 calls)",
        "api: dynamodb:Scan on table/s1-ledger-accounts (1 calls)",
        "projector: dynamodb:PutItem on table/s2-ledger-events (1 calls)",
    ]
