"""The CloudFormation the deploy needs, generated from the tables the code defines.

Two stacks, because DynamoDB's global tables and the service live at different scopes:

- **the table stack** (`tables_template`), deployed once, in the first region: one
  `AWS::DynamoDB::GlobalTable` per replicated table (events, accounts, idempotency
  records, the regions' heartbeats), with a replica in every region, streams of new and
  old images, TTL, the secondary indexes, point-in-time recovery and deletion
  protection on every replica, and `Retain` on delete and on replacement.
- **the service stack** (`service_merge_template`, merged by `chalice package
  --merge-template` into the template Chalice writes for `app.py`), deployed in every
  region: the region-local tables (the balances view, checkpoints), the projector's
  stream mapping and failure queue, the authorizer's parameters, problem documents for
  API Gateway's own refusals, and the alarms.

Both come from the definitions `ledger tables create` uses (`runtime.tables.all_definitions`,
over `ledger/schema.py` and `projections/schema.py`): no second copy of a key schema,
index or TTL attribute exists here.

**Why the service stack takes the stream's ARN as a parameter.** A global table's
`Fn::GetAtt ... StreamArn` is the stream of the replica in the table stack's own region;
every other region has its own stream with its own ARN (the label is a creation time),
which no template can compute. The table stack outputs its region's ARN; for the
others `describe-table` names it (README, "Deploy to AWS").

**Memory and timeouts** (`.chalice/config.json`, per function):
- the API, 1024 MB and 20 s: Lambda gives CPU in proportion to memory, and a cold start
  imports pydantic, Powertools and boto3, which at 128 MB takes seconds; a request's own
  worst case is bounded well under 20 s (botocore: 3 attempts of 1 s connect and 2 s
  read, plus a 5 s budget for retrying cancelled transactions), and 20 s stays under
  API Gateway's 29 s, so the function answers before the gateway gives up on it.
- the projector, 512 MB and 60 s: a batch of 100 records is a few dozen transactions
  (one per account and batch), well under a second normally; 60 s leaves room for
  throttling and retries. A timeout fails the whole batch, which is then bisected.
- the authorizer, 512 MB and 10 s: one secret read and one signature check.

**The stream mapping.** `ReportBatchItemFailures` (the handler answers which records
failed; Lambda retries from the first of them), bisect on error, at most
`MAX_RETRY_ATTEMPTS` retries and records at most `MAX_RECORD_AGE_SECONDS` old: a record
that keeps failing (unparseable, say) then stops holding up its shard and its
description goes to the failure queue, which alarms. The projector deduplicates, so
retries never count twice; a record given up on is still in the log, and `ledger
projections verify` / `rebuild` bring the view back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ledger.config import Settings
from ledger.schema import LedgerTables
from observability import telemetry
from runtime.tables import all_definitions

from .policy import EVENTS_STREAM_PARAMETER, FAILURE_QUEUE, TOKEN_SECRET_PARAMETER, table_names

API_FUNCTION = "APIHandler"
PROJECTOR_FUNCTION = "ProjectEvents"
PROJECTOR_EVENT = "ProjectEventsDynamodbEventSource"
REST_API = "RestAPI"

BATCH_SIZE = 100
MAX_RETRY_ATTEMPTS = 20
MAX_RECORD_AGE_SECONDS = 6 * 3600
FAILURE_QUEUE_RETENTION_SECONDS = 14 * 24 * 3600
ITERATOR_AGE_ALARM_MS = 60_000
REPLICATION_LATENCY_ALARM_MS = 30_000

REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")

PROBLEM_DETAILS = {
    "UNAUTHORIZED": (
        401,
        "Unauthorized",
        "unauthorized",
        "The request needs a valid bearer token in the Authorization header.",
    ),
    "ACCESS_DENIED": (403, "Forbidden", "forbidden", "The bearer token does not allow this request."),
}


def logical_id(field: str) -> str:
    """`events` -> `EventsTable`: the CloudFormation name of a table, from its field in the code."""
    return "".join(part.title() for part in field.split("_")) + "Table"


def _definitions(stage: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """{field: CreateTable arguments}, {table name: TTL attribute}: what `ledger tables create` creates."""
    definitions, ttl = all_definitions(Settings(stage=stage))
    field_of = {name: field for field, name in table_names(stage).items()}
    return {field_of[d["TableName"]]: d for d in definitions}, ttl


def _replicated_fields(stage: str) -> list[str]:
    tables = LedgerTables.for_stage(stage)
    field_of = {name: field for field, name in table_names(stage).items()}
    return [field_of[name] for name in tables.replicated]


def _common_properties(definition: dict[str, Any], ttl: dict[str, str]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "TableName": definition["TableName"],
        "BillingMode": definition["BillingMode"],
        "KeySchema": definition["KeySchema"],
        "AttributeDefinitions": definition["AttributeDefinitions"],
    }
    if definition.get("GlobalSecondaryIndexes"):
        properties["GlobalSecondaryIndexes"] = [
            {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
            for i in definition["GlobalSecondaryIndexes"]
        ]
    stream = definition.get("StreamSpecification")
    if stream and stream.get("StreamEnabled"):
        properties["StreamSpecification"] = {"StreamViewType": stream["StreamViewType"]}
    if definition["TableName"] in ttl:
        properties["TimeToLiveSpecification"] = {"AttributeName": ttl[definition["TableName"]], "Enabled": True}
    return properties


def _retained(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}


def check_regions(regions: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(regions))
    bad = [r for r in names if not REGION_PATTERN.fullmatch(r)]
    if not names or bad:
        raise ValueError(f"regions must be AWS region names such as us-east-1,eu-west-1 (got {','.join(regions)!r})")
    return names


def tables_template(stage: str, regions: Sequence[str]) -> dict[str, Any]:
    """The table stack: the replicated tables as global tables, a replica in every region."""
    regions = check_regions(regions)
    definitions, ttl = _definitions(stage)
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for field in _replicated_fields(stage):
        definition = definitions[field]
        properties = _common_properties(definition, ttl)
        # Global tables replicate through the stream: new and old images, on every replica.
        properties["StreamSpecification"] = {"StreamViewType": "NEW_AND_OLD_IMAGES"}
        properties["Replicas"] = [
            {
                "Region": region,
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "DeletionProtectionEnabled": True,
            }
            for region in regions
        ]
        resources[logical_id(field)] = _retained({"Type": "AWS::DynamoDB::GlobalTable", "Properties": properties})
        outputs[logical_id(field) + "Name"] = {"Value": {"Ref": logical_id(field)}}
    outputs["EventsStreamArn"] = {
        "Description": "The events table's stream in this stack's region (other regions: describe-table there)",
        "Value": {"Fn::GetAtt": [logical_id("events"), "StreamArn"]},
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"dynamo-ledger {stage}: the replicated tables (deploy once, in {regions[0]}; replicas in {', '.join(regions)})",
        "Rules": {
            "StackRegionHoldsAReplica": {
                "Assertions": [
                    {
                        "Assert": {"Fn::Contains": [regions, {"Ref": "AWS::Region"}]},
                        "AssertDescription": f"deploy the table stack in one of its replicas' regions: {', '.join(regions)}",
                    }
                ]
            }
        },
        "Resources": resources,
        "Outputs": outputs,
    }


def _local_tables(stage: str) -> dict[str, Any]:
    """The region-local tables (the balances view, checkpoints), one set per region's service stack."""
    definitions, ttl = _definitions(stage)
    replicated = set(_replicated_fields(stage))
    return {
        logical_id(field): _retained({"Type": "AWS::DynamoDB::Table", "Properties": _common_properties(definition, ttl)})
        for field, definition in definitions.items()
        if field not in replicated
    }


def _alarm(description: str, actions: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": description,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
            **actions,
            **properties,
        },
    }


def integrity_metric() -> dict[str, Any]:
    """Where the projector counts modified or removed events: namespace and dimensions of its EMF metrics
    (`observability.telemetry`: the service, and the region it runs in)."""
    return {
        "Namespace": telemetry.NAMESPACE,
        "MetricName": telemetry.INTEGRITY_ALARMS,
        "Dimensions": [
            {"Name": "region", "Value": {"Ref": "AWS::Region"}},
            {"Name": "service", "Value": telemetry.PROJECTOR_SERVICE},
        ],
    }


def _alarms(stage: str, regions: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alarms, and the conditions that pick the replication alarms of this stack's region."""
    actions = {
        "AlarmActions": {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]},
    }
    alarms = {
        "ProjectorIteratorAgeAlarm": _alarm(
            "The projector is behind its stream: balances are stale (records older than a minute for five minutes)",
            actions,
            Namespace="AWS/Lambda",
            MetricName="IteratorAge",
            Dimensions=[{"Name": "FunctionName", "Value": {"Ref": PROJECTOR_FUNCTION}}],
            Statistic="Maximum",
            Period=60,
            EvaluationPeriods=5,
            Threshold=ITERATOR_AGE_ALARM_MS,
        ),
        "IntegrityAlarm": _alarm(
            "An event was modified or removed: the log is append-only (see the projector's error log)",
            actions,
            **integrity_metric(),
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
        ),
        "ProjectorFailureQueueAlarm": _alarm(
            "The projector gave up on stream records: their descriptions are in the failure queue; "
            "run `ledger projections verify` and `rebuild` for the accounts concerned",
            actions,
            Namespace="AWS/SQS",
            MetricName="ApproximateNumberOfMessagesVisible",
            Dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": [FAILURE_QUEUE, "QueueName"]}}],
            Statistic="Maximum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
        ),
    }
    conditions: dict[str, Any] = {}
    names = table_names(stage)
    for region in regions:
        condition = "ReplicatesTo" + _camel(region)
        conditions[condition] = {"Fn::Not": [{"Fn::Equals": [{"Ref": "AWS::Region"}, region]}]}
        for field in _replicated_fields(stage):
            alarm = _alarm(
                f"Replication of {names[field]} from this region to {region} is slow (average over 30 s for five minutes)",
                actions,
                Namespace="AWS/DynamoDB",
                MetricName="ReplicationLatency",
                Dimensions=[
                    {"Name": "TableName", "Value": names[field]},
                    {"Name": "ReceivingRegion", "Value": region},
                ],
                Statistic="Average",
                Period=60,
                EvaluationPeriods=5,
                Threshold=REPLICATION_LATENCY_ALARM_MS,
            )
            alarm["Condition"] = condition
            alarms[f"{logical_id(field)}ReplicationTo{_camel(region)}Alarm"] = alarm
    return alarms, conditions


def _camel(region: str) -> str:
    return "".join(part.title() for part in region.split("-"))


def _gateway_responses() -> dict[str, Any]:
    """API Gateway's own refusals (the authorizer's 401 and 403) as problem documents, like every other answer."""
    responses = {}
    for kind, (status, title, code, detail) in PROBLEM_DETAILS.items():
        body = (
            f'{{"type":"about:blank","title":"{title}","status":{status},"code":"{code}","detail":"{detail}"}}'
        )
        headers = {"Content-Type": "'application/problem+json'"}
        if status == 401:
            headers["WWW-Authenticate"] = "'Bearer'"
        responses[kind] = {
            "StatusCode": status,
            "ResponseParameters": {"Headers": headers},
            "ResponseTemplates": {"application/json": body},
        }
    return responses


def service_merge_template(stage: str, regions: Sequence[str]) -> dict[str, Any]:
    """What `chalice package --merge-template` adds to (and changes in) the template Chalice writes."""
    regions = check_regions(regions)
    events = table_names(stage)["events"]
    alarms, replication_conditions = _alarms(stage, regions)
    local_tables = _local_tables(stage)
    return {
        "Description": f"dynamo-ledger {stage}: the service in one region (API, projector, region-local tables, alarms)",
        "Parameters": {
            EVENTS_STREAM_PARAMETER: {
                "Type": "String",
                "Description": f"The stream of {events} in this stack's region (aws dynamodb describe-table "
                f"--table-name {events} --query Table.LatestStreamArn)",
                "AllowedPattern": rf"arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:[0-9]{{12}}:table/{re.escape(events)}/stream/.+",
            },
            TOKEN_SECRET_PARAMETER: {
                "Type": "String",
                "Description": "The Secrets Manager secret (in this region) holding the HS256 key that signs bearer tokens",
                "AllowedPattern": r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+",
            },
            "CognitoUserPoolArn": {
                "Type": "String",
                "Default": "",
                "Description": "Optional: a Cognito user pool whose tokens the routes accept instead "
                "(package with LEDGER_COGNITO_USER_POOL_ARN set to the same ARN)",
            },
            "CursorSecret": {
                "Type": "String",
                "NoEcho": True,
                "MinLength": 32,
                "Description": "The key that signs pagination cursors: the same on every region's stack of this stage",
            },
            "AlarmTopicArn": {
                "Type": "String",
                "Default": "",
                "Description": "Optional: an SNS topic every alarm notifies",
            },
        },
        "Conditions": {
            "UseCognito": {"Fn::Not": [{"Fn::Equals": [{"Ref": "CognitoUserPoolArn"}, ""]}]},
            "HasAlarmTopic": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]},
            **replication_conditions,
        },
        # Every function of the app (the authorizer too, once the app registers one) gets these.
        "Globals": {
            "Function": {
                "Environment": {
                    "Variables": {
                        "LEDGER_TOKEN_SECRET_ARN": {"Ref": TOKEN_SECRET_PARAMETER},
                        "LEDGER_COGNITO_USER_POOL_ARN": {
                            "Fn::If": ["UseCognito", {"Ref": "CognitoUserPoolArn"}, {"Ref": "AWS::NoValue"}]
                        },
                        "LEDGER_CURSOR_SECRET": {"Ref": "CursorSecret"},
                    }
                }
            }
        },
        "Resources": {
            **local_tables,
            FAILURE_QUEUE: {
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "MessageRetentionPeriod": FAILURE_QUEUE_RETENTION_SECONDS,
                    "SqsManagedSseEnabled": True,
                },
            },
            PROJECTOR_FUNCTION: {
                # The balances table must exist before the first batch arrives.
                "DependsOn": sorted(local_tables),
                "Properties": {
                    "Events": {
                        PROJECTOR_EVENT: {
                            "Properties": {
                                "Stream": {"Ref": EVENTS_STREAM_PARAMETER},
                                "BatchSize": BATCH_SIZE,
                                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                                "BisectBatchOnFunctionError": True,
                                "MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
                                "MaximumRecordAgeInSeconds": MAX_RECORD_AGE_SECONDS,
                                "DestinationConfig": {
                                    "OnFailure": {"Type": "SQS", "Destination": {"Fn::GetAtt": [FAILURE_QUEUE, "Arn"]}}
                                },
                            }
                        }
                    }
                },
            },
            API_FUNCTION: {"DependsOn": sorted(local_tables)},
            REST_API: {"Properties": {"GatewayResponses": _gateway_responses()}},
            **alarms,
        },
        "Outputs": {
            "ProjectorFailureQueueUrl": {"Value": {"Ref": FAILURE_QUEUE}},
            **{f"{name}Name": {"Value": {"Ref": name}} for name in local_tables},
        },
    }
