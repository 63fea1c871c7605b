"""The balances table: region-local, never global, one definition for bootstrap and deploy.

It holds two kinds of item under one string key `pk`:
- `balance#<account>`: the account's view (balance, credits, debits, event count,
  as-of) and its own dedupe record, kept under 1 KB (see `projections.store`).
- `replication#watermark`: up to when this region holds every other region's writes.

Earlier versions kept dedupe markers in `seen#<account>#<window>` items with a TTL
(`expires_at`); nothing reads them any more, and the TTL stays on so they expire.

Why not global: one region's write of a view would be clobbered by another's (last-writer-wins), so each
region folds its own replica's stream into its own table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.schema import LedgerTables

# This region holds every other region's writes up to this instant (written by the replicator).
WATERMARK_KEY = "replication#watermark"
TTL_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class ProjectionTables:
    balances: str
    events: str  # the log, read (never written) to decide events below a view's floor

    @classmethod
    def for_stage(cls, stage: str) -> ProjectionTables:
        return cls(balances=f"{stage}-ledger-balances", events=LedgerTables.for_stage(stage).events)


def balance_key(account_id: str) -> str:
    return f"balance#{account_id}"


def table_definitions(tables: ProjectionTables) -> list[dict[str, Any]]:
    return [
        {
            "TableName": tables.balances,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        }
    ]


def time_to_live(tables: ProjectionTables) -> dict[str, str]:
    return {tables.balances: TTL_ATTRIBUTE}
