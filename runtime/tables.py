"""Create whatever tables are missing, from the packages' own table definitions.

Used by `ledger serve` and `ledger tables create` against any endpoint. On AWS
the deploy template owns the tables; this is for local endpoints and quick trials.
"""

from __future__ import annotations

from typing import Any

from ledger import schema as ledger_schema
from ledger.config import Settings
from projections import schema as projection_schema


def all_definitions(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every table the service needs, with the TTL attribute of those that have one."""
    views = projection_schema.ProjectionTables.for_stage(settings.stage)
    definitions = ledger_schema.table_definitions(settings.tables) + projection_schema.table_definitions(views)
    ttl = {**ledger_schema.time_to_live(settings.tables), **projection_schema.time_to_live(views)}
    return definitions, ttl


def ensure_tables(client: Any, settings: Settings) -> list[str]:
    """Create the missing tables, wait until they are active, enable TTL; return those created."""
    definitions, ttl = all_definitions(settings)
    existing: set[str] = set()
    for page in client.get_paginator("list_tables").paginate():
        existing.update(page["TableNames"])
    created = []
    for definition in definitions:
        name = definition["TableName"]
        if name in existing:
            continue
        try:
            client.create_table(**definition)
        except client.exceptions.ResourceInUseException:
            # Created after all: a slow answer under load, retried by botocore, finds its own table.
            pass
        created.append(name)
    for name in created:
        client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        if name in ttl:
            client.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl[name]}
            )
    return created
