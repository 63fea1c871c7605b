"""Fresh stages of every table on moto, and their stream records as Lambda delivers them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import boto3

from composition.root import Root
from api_client import TEST_TOKEN_KEY
from ledger.config import Settings
from projection_faults import sequence_of, stream_records  # noqa: F401 - the stream's records, as Lambda delivers them
from runtime.tables import all_definitions, ensure_tables

REGION = "us-east-1"


class Stage:
    """Every table of one fresh stage (balances included), dropped again on exit."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.settings = Settings(stage=f"proj{uuid.uuid4().hex[:10]}", region=REGION, token_key=TEST_TOKEN_KEY)

    def __enter__(self) -> Stage:
        ensure_tables(self.client, self.settings)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for definition in all_definitions(self.settings)[0]:
            self.client.delete_table(TableName=definition["TableName"])


def project_everything(stage: Stage, client: Any) -> None:
    """Hand the whole stream, from the trim horizon, to the projector once; every record must apply."""
    records = stream_records(client, boto3.client("dynamodbstreams", region_name=REGION), stage.settings)
    assert Root(stage.settings, client=client).stream_handler({"Records": records}, None) == {"batchItemFailures": []}
