"""The checkpoint store: the only module of `audit` that talks to DynamoDB.

Checkpoints are put-if-absent (a checkpoint is a pure function of the log, so two
builders racing write the same item) and read newest-first by account and day.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from ledger.store import deserialize, serialize

from .checkpoints import Checkpoint


class CheckpointStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def newest_before(self, account_id: str, day: str) -> Checkpoint | None:
        """The newest checkpoint of a day before `day` (YYYY-MM-DD)."""
        response = self._client.query(
            TableName=self._table,
            KeyConditionExpression="account_id = :account AND period < :day",
            ExpressionAttributeValues={":account": {"S": account_id}, ":day": {"S": day}},
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )
        items = response.get("Items", [])
        return _from_item(items[0]) if items else None

    def all(self, account_id: str) -> Iterator[Checkpoint]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "account_id = :account",
            "ExpressionAttributeValues": {":account": {"S": account_id}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**request)
            yield from (_from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put_new(self, checkpoint: Checkpoint, built_at: str) -> bool:
        """Write the checkpoint unless one of its account and day exists; whether it was written."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item=_to_item(checkpoint, built_at),
                ConditionExpression="attribute_not_exists(period)",
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise


def _to_item(checkpoint: Checkpoint, built_at: str) -> dict[str, Any]:
    data = {
        "account_id": checkpoint.account_id,
        "period": checkpoint.period,
        "currency": checkpoint.currency,
        "balance": checkpoint.balance,
        "credits": checkpoint.credits,
        "debits": checkpoint.debits,
        "event_count": checkpoint.event_count,
        "digest": checkpoint.digest,
        "last_event_id": checkpoint.last_event_id,
        "built_at": built_at,
    }
    if checkpoint.fingerprints is not None:
        data["fingerprints"] = checkpoint.fingerprints
    return serialize(data)


def _from_item(item: dict[str, Any]) -> Checkpoint:
    data = deserialize(item)
    prints = data.get("fingerprints")
    return Checkpoint(
        account_id=data["account_id"],
        period=data["period"],
        currency=data["currency"],
        balance=int(data["balance"]),
        credits=int(data["credits"]),
        debits=int(data["debits"]),
        event_count=int(data["event_count"]),
        digest=data["digest"],
        last_event_id=data["last_event_id"],
        fingerprints=None if prints is None else bytes(getattr(prints, "value", prints)),  # boto3's Binary
    )


