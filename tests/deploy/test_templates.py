"""The templates `ledger package` writes: cfn-lint clean, and saying what the deploy needs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

from deploy import template
from ledger.config import Settings
from ledger.schema import LedgerTables
from observability.telemetry import PROJECTOR_SERVICE, Telemetry
from projections.handler import handle_stream_event
from projections.projector import Projector
from projections.schema import ProjectionTables
from projections.store import BalanceStore
from runtime.tables import all_definitions


@pytest.fixture(scope="module")
def service(ledger_package) -> dict[str, Any]:
    return ledger_package.template("service.json")


@pytest.fixture(scope="module")
def tables(ledger_package) -> dict[str, Any]:
    return ledger_package.template("tables.json")


def _lint(document: dict[str, Any], regions: tuple[str, ...]) -> list[str]:
    matches = lint(json.dumps(document), config=ManualArgs(regions=list(regions)))
    return [f"{m.rule.id} {m.message} ({'/'.join(str(p) for p in m.path)})" for m in matches]


def test_cfn_lint_finds_nothing_in_either_template(service, tables, ledger_package):
    assert _lint(tables, ledger_package.regions) == []
    assert _lint(service, ledger_package.regions) == []


def test_cfn_lint_would_notice_a_broken_template(service, ledger_package):
    broken = copy.deepcopy(service)
    broken["Resources"][template.FAILURE_QUEUE]["Properties"]["MessageRetentionPeriod"] = "a fortnight"

    assert _lint(broken, ledger_package.regions)


def _functions(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: r["Properties"] for n, r in service["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def test_every_function_gets_its_memory_timeout_role_and_the_authorizers_parameters(service):
    functions = _functions(service)

    assert {name: (f["MemorySize"], f["Timeout"]) for name, f in functions.items()} == {
        "APIHandler": (1024, 20),
        "ProjectEvents": (512, 60),
        "TokenAuthorizer": (512, 10),
    }
    for properties in functions.values():
        assert properties["Environment"]["Variables"]["LEDGER_STAGE"] == "ci"
        assert properties["Environment"]["Variables"]["LEDGER_REGIONS"] == "us-east-1,eu-west-1,ap-southeast-2"
    assert functions["APIHandler"]["Role"] == {"Fn::GetAtt": ["ApiHandlerRole", "Arn"]}
    assert functions["ProjectEvents"]["Role"] == {"Fn::GetAtt": ["ProjectEventsRole", "Arn"]}
    assert functions["TokenAuthorizer"]["Role"] == {"Fn::GetAtt": ["TokenAuthorizerRole", "Arn"]}
    # SAM's globals reach every function, the authorizer too once the app registers one.
    assert service["Globals"]["Function"]["Environment"]["Variables"] == {
        "LEDGER_TOKEN_SECRET_ARN": {"Ref": "TokenSecretArn"},
        "LEDGER_COGNITO_USER_POOL_ARN": {"Fn::If": ["UseCognito", {"Ref": "CognitoUserPoolArn"}, {"Ref": "AWS::NoValue"}]},
        "LEDGER_CURSOR_SECRET": {"Ref": "CursorSecret"},
    }
    assert "Default" not in service["Parameters"]["TokenSecretArn"]
    assert service["Parameters"]["CognitoUserPoolArn"]["Default"] == ""
    assert service["Parameters"]["CursorSecret"]["NoEcho"] is True


def test_the_stream_mapping_reports_partial_batches_bisects_and_gives_up_into_the_failure_queue(service):
    events = _functions(service)["ProjectEvents"]["Events"]
    (mapping,) = [e["Properties"] for e in events.values() if e["Type"] == "DynamoDB"]

    assert mapping["Stream"] == {"Ref": "EventsStreamArn"}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert 0 < mapping["MaximumRetryAttempts"] <= 100
    assert 60 <= mapping["MaximumRecordAgeInSeconds"] < 24 * 3600  # within the stream's retention
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["ProjectorFailureQueue", "Arn"]}
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert service["Resources"]["ProjectorFailureQueue"]["Type"] == "AWS::SQS::Queue"


def test_authorizer_refusals_are_problem_documents(service):
    responses = service["Resources"]["RestAPI"]["Properties"]["GatewayResponses"]

    for kind, status, code in (("UNAUTHORIZED", 401, "unauthorized"), ("ACCESS_DENIED", 403, "forbidden")):
        response = responses[kind]
        assert response["StatusCode"] == status
        assert response["ResponseParameters"]["Headers"]["Content-Type"] == "'application/problem+json'"
        document = json.loads(response["ResponseTemplates"]["application/json"])
        assert document["type"] == "about:blank" and document["status"] == status and document["code"] == code
        assert document["title"] and document["detail"]
    assert responses["UNAUTHORIZED"]["ResponseParameters"]["Headers"]["WWW-Authenticate"] == "'Bearer'"


def test_the_table_stack_is_the_bootstrap_definitions_as_global_tables_in_every_region(tables, ledger_package):
    created, ttl = all_definitions(Settings(stage=ledger_package.stage))
    by_name = {d["TableName"]: d for d in created}
    resources = tables["Resources"]

    assert {r["Properties"]["TableName"] for r in resources.values()} == set(LedgerTables.for_stage("ci").replicated)
    for resource in resources.values():
        properties = resource["Properties"]
        definition = by_name[properties["TableName"]]
        assert resource["Type"] == "AWS::DynamoDB::GlobalTable"
        assert (resource["DeletionPolicy"], resource["UpdateReplacePolicy"]) == ("Retain", "Retain")
        assert properties["KeySchema"] == definition["KeySchema"]
        assert properties["AttributeDefinitions"] == definition["AttributeDefinitions"]
        assert [i["IndexName"] for i in properties.get("GlobalSecondaryIndexes", [])] == [
            i["IndexName"] for i in definition.get("GlobalSecondaryIndexes", [])
        ]
        assert properties["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
        assert [r["Region"] for r in properties["Replicas"]] == list(ledger_package.regions)
        if properties["TableName"] in ttl:
            assert properties["TimeToLiveSpecification"] == {"AttributeName": ttl[properties["TableName"]], "Enabled": True}
    assert tables["Outputs"]["EventsStreamArn"]["Value"] == {"Fn::GetAtt": ["EventsTable", "StreamArn"]}


def test_the_service_stack_holds_the_region_local_tables(service):
    local = {r["Properties"]["TableName"] for r in service["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"}

    assert local == {ProjectionTables.for_stage("ci").balances, LedgerTables.for_stage("ci").checkpoints}


def _alarms(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: r["Properties"] for n, r in service["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}


def test_alarms_watch_iterator_age_integrity_the_failure_queue_and_replication(service):
    alarms = _alarms(service).values()
    metrics = {(a["Namespace"], a["MetricName"]) for a in alarms}

    assert {
        ("AWS/Lambda", "IteratorAge"),
        ("DynamoLedger", "IntegrityAlarms"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/DynamoDB", "ReplicationLatency"),
    } <= metrics
    (iterator_age,) = [a for a in alarms if a["MetricName"] == "IteratorAge"]
    assert iterator_age["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ProjectEvents"}}]


def test_the_integrity_alarm_watches_exactly_the_metric_the_projector_emits(service, capsys, monkeypatch):
    """A CloudWatch alarm matches one dimension set exactly: read the projector's own EMF output."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.setenv("POWERTOOLS_DEV", "false")
    modified = {
        "eventID": "1",
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"entity_id": {"S": "a"}, "event_id": {"S": "01J00000000000000000000000"}},
            "OldImage": {"entity_id": {"S": "a"}},
            "NewImage": {"entity_id": {"S": "a"}},
            "SequenceNumber": "100",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }
    capsys.readouterr()

    telemetry = Telemetry(PROJECTOR_SERVICE, "eu-west-1")  # as the root builds it in the Lambda of eu-west-1
    handle_stream_event({"Records": [modified]}, None, Projector(BalanceStore(None, ProjectionTables.for_stage("x"))), telemetry)

    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    (integrity,) = [a for a in _alarms(service).values() if a["MetricName"] == "IntegrityAlarms"]
    (metric_set,) = [m for e in emitted for m in e["_aws"]["CloudWatchMetrics"] if any(x["Name"] == "IntegrityAlarms" for x in m["Metrics"])]
    record = next(e for e in emitted if "IntegrityAlarms" in e)
    assert metric_set["Namespace"] == integrity["Namespace"]
    (dimension_names,) = metric_set["Dimensions"]
    assert sorted(dimension_names) == sorted(d["Name"] for d in integrity["Dimensions"])
    in_eu_west_1 = {d["Name"]: ("eu-west-1" if d["Value"] == {"Ref": "AWS::Region"} else d["Value"]) for d in integrity["Dimensions"]}
    assert {d["Name"]: record[d["Name"]] for d in integrity["Dimensions"]} == in_eu_west_1
