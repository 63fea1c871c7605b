"""The one definition of the ledger's tables: local bootstrap and the deploy template read it.

Events are append-only, keyed by account and ULID, with the stream on (new and old
images, so a forbidden MODIFY or REMOVE reaches the projector with its evidence).
The checkpoints table holds, per account and closed day, the fold and the digest
of the log up to that day's end (`audit/checkpoints.py`): built from the log, never
changed once written. Two indexes serve auditors: every leg of a transaction, and
every event in time order (`by_time`). The time index is keyed by one of
`TIME_SHARDS` shards drawn from the event id, sorted by event id: writes spread over
the shards (each index partition takes about 1,000 writes a second), and any time
window, a day or a year, empty or not, is `TIME_SHARDS` range queries merged in
order, so a page costs its own size, not the window's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRANSACTION_INDEX = "by_transaction"
TIME_INDEX = "by_time"
TIME_SHARDS = 8
TIME_SHARD_ATTRIBUTE = "time_shard"
INDEX_ATTRIBUTES = (TIME_SHARD_ATTRIBUTE,)  # stored with each event for its indexes; not part of the event
# Global Tables' per-item write stamp (visible as attributes in its 2017 version; the local
# replicator writes them too): when and where the item was last written. Never part of a record.
REPLICATION_TIME = "aws:rep:updatetime"
REPLICATION_REGION = "aws:rep:updateregion"
REPLICATION_ATTRIBUTES = (REPLICATION_TIME, REPLICATION_REGION)
STORAGE_ATTRIBUTES = INDEX_ATTRIBUTES + REPLICATION_ATTRIBUTES
IDEMPOTENCY_TTL_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class LedgerTables:
    """Table names; the stage prefix keeps dev, test and prod apart in one account."""

    events: str
    accounts: str
    idempotency: str
    checkpoints: str
    regions: str  # one item per region, written only by it: its heartbeat (failover.lease)

    @property
    def replicated(self) -> tuple[str, ...]:
        """The global tables: one item each, replicated to every region (checkpoints are built per region)."""
        return (self.events, self.accounts, self.idempotency, self.regions)

    @classmethod
    def for_stage(cls, stage: str) -> LedgerTables:
        return cls(
            events=f"{stage}-ledger-events",
            accounts=f"{stage}-ledger-accounts",
            idempotency=f"{stage}-ledger-idempotency",
            checkpoints=f"{stage}-ledger-checkpoints",
            regions=f"{stage}-ledger-regions",
        )


def _keys(*attributes: tuple[str, str]) -> list[dict[str, str]]:
    return [{"AttributeName": name, "KeyType": kind} for name, kind in attributes]


def _index(name: str, partition: str) -> dict[str, Any]:
    return {
        "IndexName": name,
        "KeySchema": _keys((partition, "HASH"), ("event_id", "RANGE")),
        # Keys only: an index entry costs one write unit whatever the event holds; its readers
        # (a transaction's legs, the auditors' timeline) read the events from the table.
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }


def table_definitions(tables: LedgerTables) -> list[dict[str, Any]]:
    """CreateTable arguments for every ledger table (on-demand capacity)."""
    events = {
        "TableName": tables.events,
        "KeySchema": _keys(("entity_id", "HASH"), ("event_id", "RANGE")),
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("entity_id", "event_id", "transaction_id", TIME_SHARD_ATTRIBUTE)
        ],
        "GlobalSecondaryIndexes": [
            _index(TRANSACTION_INDEX, "transaction_id"),
            _index(TIME_INDEX, TIME_SHARD_ATTRIBUTE),
        ],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "BillingMode": "PAY_PER_REQUEST",
    }
    # Global tables need a stream (new and old images) on every replica: replication reads it.
    accounts = {
        "TableName": tables.accounts,
        "KeySchema": _keys(("account_id", "HASH")),
        "AttributeDefinitions": [{"AttributeName": "account_id", "AttributeType": "S"}],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "BillingMode": "PAY_PER_REQUEST",
    }
    idempotency = {
        "TableName": tables.idempotency,
        "KeySchema": _keys(("idempotency_id", "HASH")),
        "AttributeDefinitions": [{"AttributeName": "idempotency_id", "AttributeType": "S"}],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "BillingMode": "PAY_PER_REQUEST",
    }
    regions = {
        "TableName": tables.regions,
        "KeySchema": _keys(("region", "HASH")),
        "AttributeDefinitions": [{"AttributeName": "region", "AttributeType": "S"}],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        "BillingMode": "PAY_PER_REQUEST",
    }
    checkpoints = {
        "TableName": tables.checkpoints,
        "KeySchema": _keys(("account_id", "HASH"), ("period", "RANGE")),
        "AttributeDefinitions": [
            {"AttributeName": "account_id", "AttributeType": "S"},
            {"AttributeName": "period", "AttributeType": "S"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    return [events, accounts, idempotency, regions, checkpoints]


def time_to_live(tables: LedgerTables) -> dict[str, str]:
    """Tables with a TTL attribute: table name -> attribute."""
    return {tables.idempotency: IDEMPOTENCY_TTL_ATTRIBUTE}
