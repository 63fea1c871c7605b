"""The functions' IAM policies: exactly the DynamoDB calls the code makes, on exactly its tables.

Chalice can write a policy by reading the code (`autogen_policy`), but it grants by
service and cannot see table names built at run time. So `autogen_policy` is off
(`.chalice/config.json`) and each function's policy is generated here, per stage,
from the table names the code uses (`LedgerTables`, `ProjectionTables`) and the calls
its stores make, one statement per table or index:

- the API (`api_handler`) writes each request in one `TransactWriteItems`: a Put of
  the idempotency record, Puts of new events and of a new account, an Update of each
  account guard or, for a credit homed elsewhere, a ConditionCheck. IAM authorises
  each item of a transaction as its own action. It reads idempotency records and
  accounts, a balance with its account in one `BatchGetItem` (the freshness read),
  the log and its two indexes (which project keys only: the events they find, and those
  a replayed write names, are read from the log in one `BatchGetItem`), and checkpoints.
- the projector (`project_events`) reads the events stream, and per account and batch
  writes the balance item once (the batch's items it does not know read in one
  BatchGetItem, then a conditional Put of each; a Get when a condition fails; a Query
  of the account's log for events at or below the view's floor) with, at
  the account's home, the settlement of credits recorded elsewhere (an Update of the
  account item, which it reads when that condition fails without handing it back). It
  may send a failed batch's description to the stack's failure queue.
- the authorizer (`token_authorizer`) reads the one secret holding the signing key.

Operators' commands (verify, rebuild, moves, reconcile, checkpoints) run with the
operator's own credentials, not these roles.

The events table is append-only: the API's only write there is a Put guarded by
`attribute_not_exists`, and every role here is explicitly denied UpdateItem,
DeleteItem, BatchWriteItem (a batch put cannot carry a condition) and PartiQL's update
and delete on it, in every region, so that a later broadening of the grants cannot open
the log to rewriting. The deny is in the identity policy, never in a table resource
policy: Global Tables replicate with a service-linked role that a resource policy's
deny could block.

Resources are CloudFormation expressions (`Fn::Sub` over the stack's partition,
region and account; `Ref` of the stack's parameters and queue): each region's
functions touch that region's replicas only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.schema import TIME_INDEX, TRANSACTION_INDEX, LedgerTables
from projections.schema import ProjectionTables

API_HANDLER = "api_handler"
PROJECTOR = "project_events"
AUTHORIZER = "token_authorizer"

# The CloudFormation names the service template gives what the policies point at.
EVENTS_STREAM_PARAMETER = "EventsStreamArn"
TOKEN_SECRET_PARAMETER = "TokenSecretArn"
FAILURE_QUEUE = "ProjectorFailureQueue"

APPEND_ONLY_DENIED = (
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:PartiQLUpdate",
    "dynamodb:PartiQLDelete",
)


@dataclass(frozen=True)
class Grant:
    """Actions on one table (a field of `LedgerTables` or `ProjectionTables`), or on one of its indexes."""

    table: str
    actions: tuple[str, ...]
    index: str | None = None

    @property
    def sid(self) -> str:
        name = "".join(part.title() for part in self.table.split("_"))
        if self.index:
            name += "Index" + "".join(part.title() for part in self.index.split("_"))
        return name


GRANTS: dict[str, tuple[Grant, ...]] = {
    API_HANDLER: (
        # An independent batch reads its operations' records at once, before it writes.
        Grant("idempotency", ("dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem")),
        # The indexes project keys only: what a query of them finds is read from the table (BatchGetItem),
        # as is a replayed write's events.
        Grant("events", ("dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:Query")),
        Grant("events", ("dynamodb:Query",), index=TRANSACTION_INDEX),
        Grant("events", ("dynamodb:Query",), index=TIME_INDEX),
        Grant(
            "accounts",
            (
                "dynamodb:BatchGetItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ),
        ),
        Grant("balances", ("dynamodb:BatchGetItem",)),
        Grant("checkpoints", ("dynamodb:Query",)),
    ),
    PROJECTOR: (
        # The balance items: the batch's unknown ones read at once, a conditional put of each (absent, or
        # still the version planned from), a read when a condition fails without handing the item back.
        Grant("balances", ("dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem")),
        Grant("accounts", ("dynamodb:GetItem", "dynamodb:UpdateItem")),
        Grant("events", ("dynamodb:Query",)),  # an account's log, for events at or below its view's floor
    ),
    AUTHORIZER: (),
}


def table_names(stage: str) -> dict[str, str]:
    """Every table the service uses, by its field name in the code: {"events": "prod-ledger-events", ...}."""
    ledger = LedgerTables.for_stage(stage)
    views = ProjectionTables.for_stage(stage)
    return {**vars(ledger), **vars(views)}


def table_arn(name: str, region: str = "${AWS::Region}") -> dict[str, str]:
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:dynamodb:{region}:${{AWS::AccountId}}:table/{name}"}


def grant_resource(grant: Grant, stage: str) -> dict[str, str]:
    name = table_names(stage)[grant.table]
    return table_arn(f"{name}/index/{grant.index}" if grant.index else name)


def _logs() -> dict[str, Any]:
    # The function's log group is named after the function, which CloudFormation names;
    # the role cannot name it without a cycle, so: Lambda's log groups of this account and region.
    return {
        "Sid": "Logs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": {"Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/aws/lambda/*"},
    }


def _append_only(stage: str) -> dict[str, Any]:
    return {
        "Sid": "EventLogIsAppendOnly",
        "Effect": "Deny",
        "Action": list(APPEND_ONLY_DENIED),
        "Resource": [table_arn(table_names(stage)["events"], region="*")],
    }


def policy_document(function: str, stage: str) -> dict[str, Any]:
    """The identity policy of one function's role, for the stage's tables."""
    statements = [_logs()]
    for grant in GRANTS[function]:
        statements.append(
            {"Sid": grant.sid, "Effect": "Allow", "Action": sorted(grant.actions), "Resource": grant_resource(grant, stage)}
        )
    if function == PROJECTOR:
        statements.append(
            {
                "Sid": "EventsStream",
                "Effect": "Allow",
                "Action": ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
                "Resource": {"Ref": EVENTS_STREAM_PARAMETER},
            }
        )
        # ListStreams names no resource; Lambda's stream poller calls it.
        statements.append({"Sid": "ListStreams", "Effect": "Allow", "Action": ["dynamodb:ListStreams"], "Resource": "*"})
        statements.append(
            {
                "Sid": "FailureQueue",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": {"Fn::GetAtt": [FAILURE_QUEUE, "Arn"]},
            }
        )
    if function == AUTHORIZER:
        statements.append(
            {
                "Sid": "TokenSigningKey",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": {"Ref": TOKEN_SECRET_PARAMETER},
            }
        )
    if function in (API_HANDLER, PROJECTOR):
        statements.append(_append_only(stage))
    return {"Version": "2012-10-17", "Statement": statements}


def policy_documents(stage: str) -> dict[str, dict[str, Any]]:
    """Every function's policy: {chalice function name: document}."""
    return {function: policy_document(function, stage) for function in GRANTS}
