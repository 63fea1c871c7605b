"""What IAM authorises a DynamoDB call as, and whether a policy document allows it.

A call is authorised per item, as AWS documents: each item of a `TransactWriteItems`
as its own action (`Put` as PutItem, `Update` as UpdateItem, `ConditionCheck` as
ConditionCheckItem), a `BatchGetItem` once per table, a `Query` on an index as the
index's resource. The evaluator is the small part of IAM's logic the ledger's
policies use: Allow and Deny statements with `Action` and `Resource` (wildcards `*` and
`?`), an explicit Deny winning over any Allow, CloudFormation's `Fn::Sub`, `Ref` and
`Fn::GetAtt` resolved from given values. Anything else in a policy is an error, not
a guess.
"""

from __future__ import annotations

import re
from typing import Any

_ITEM_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
_PARTIQL = {"ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"}


def _resource(table: str, index: str | None = None) -> str:
    return f"table/{table}/index/{index}" if index else f"table/{table}"


def iam_requests(operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """[(IAM action, DynamoDB resource as `table/NAME[/index/INDEX]`)] one DynamoDB API call needs."""
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return [
            (f"dynamodb:{_ITEM_ACTIONS[kind]}", _resource(body["TableName"]))
            for item in params.get("TransactItems", [])
            for kind, body in item.items()
        ]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", _resource(table)) for table in params.get("RequestItems", {})]
    if operation in _PARTIQL:
        return [(f"dynamodb:PartiQL({operation})", "statement")]  # never allowed: the ledger does not use PartiQL
    if "TableName" in params:
        return [(f"dynamodb:{operation}", _resource(params["TableName"], params.get("IndexName")))]
    return [(f"dynamodb:{operation}", "*")]


def resolve(value: Any, bindings: dict[str, str]) -> Any:
    """A CloudFormation value with `Fn::Sub`, `Ref` and `Fn::GetAtt` replaced from `bindings` (`Name` or `Name.Attr`)."""
    if isinstance(value, list):
        return [resolve(v, bindings) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"}:
        return bindings[value["Ref"]]
    if set(value) == {"Fn::GetAtt"}:
        return bindings[".".join(value["Fn::GetAtt"])]
    if set(value) == {"Fn::Sub"}:
        return re.sub(r"\$\{([^}]+)\}", lambda m: bindings[m.group(1)], value["Fn::Sub"])
    return {k: resolve(v, bindings) for k, v in value.items()}


def _listed(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def _matches(patterns: list[str], value: str, *, case_sensitive: bool) -> bool:
    def one(pattern: str) -> bool:
        translated = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
        return re.fullmatch(translated, value, 0 if case_sensitive else re.IGNORECASE) is not None

    return any(one(p) for p in patterns)


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = _listed(document["Statement"])
    for statement in found:
        unknown = set(statement) - {"Sid", "Effect", "Action", "Resource"}
        if unknown:
            raise ValueError(f"statement {statement.get('Sid')} uses {sorted(unknown)}, which this evaluator does not know")
    return found


def allows(document: dict[str, Any], action: str, arn: str) -> bool:
    """Whether the (resolved) policy allows `action` on `arn`: some Allow matches and no Deny does."""
    allowed = False
    for statement in statements(document):
        if not _matches(_listed(statement["Action"]), action, case_sensitive=False):
            continue
        if not _matches(_listed(statement["Resource"]), arn, case_sensitive=True):
            continue
        if statement["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def dynamodb_arn(resource: str, region: str, account: str) -> str:
    return f"arn:aws:dynamodb:{region}:{account}:{resource}"


def outside_policies(accesses: dict[tuple[str, str, str], int], region: str = "us-east-1", account: str = "123456789012") -> list[str]:
    """The recorded calls (entry point, IAM action, resource) that the deployed function's generated policy refuses.

    Each table's stage is read from its name (the policy is generated per stage); a
    table the ledger does not name belongs to no stage, and every call to it is refused.
    """
    from deploy.policy import policy_document, table_names

    suffixes = {name[len("x"):]: field for field, name in table_names("x").items()}  # "-ledger-events" -> "events"
    entry_functions = {"api": "api_handler", "projector": "project_events"}
    bindings = {
        "AWS::Partition": "aws",
        "AWS::Region": region,
        "AWS::AccountId": account,
        "EventsStreamArn": f"arn:aws:dynamodb:{region}:{account}:table/x/stream/x",
        "TokenSecretArn": f"arn:aws:secretsmanager:{region}:{account}:secret:x",
        "ProjectorFailureQueue.Arn": f"arn:aws:sqs:{region}:{account}:x",
    }
    documents: dict[tuple[str, str], dict[str, Any]] = {}
    refused = []
    for (entry, action, resource), count in sorted(accesses.items()):
        table = resource.split("/")[1] if resource.startswith("table/") else ""
        stage = next((table[: -len(suffix)] for suffix in suffixes if table.endswith(suffix) and len(table) > len(suffix)), None)
        if stage is not None and (entry, stage) not in documents:
            documents[(entry, stage)] = resolve(policy_document(entry_functions[entry], stage), bindings)
        if stage is None or not allows(documents[(entry, stage)], action, dynamodb_arn(resource, region, account)):
            refused.append(f"{entry}: {action} on {resource} ({count} calls)")
    return refused


__all__ = ["allows", "dynamodb_arn", "iam_requests", "outside_policies", "resolve", "statements"]
