"""Fresh stages of every table on moto, and their stream records as Lambda delivers them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import boto3

from composition.root import Root
from api_client import TEST_TOKEN_KEY
from ledger.config import Settings
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


def stream_records(client: Any, streams: Any, settings: Settings) -> list[dict[str, Any]]:
    """Every record of the events table's stream, from the trim horizon, shaped as Lambda delivers them."""
    arn = client.describe_table(TableName=settings.tables.events)["Table"]["LatestStreamArn"]
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    for record in records:
        record["eventSourceARN"] = arn
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        if isinstance(created, datetime):  # boto3 parses it; Lambda hands over epoch seconds
            record["dynamodb"]["ApproximateCreationDateTime"] = created.timestamp()
    return records


def sequence_of(record: dict[str, Any]) -> str:
    return record["dynamodb"]["SequenceNumber"]


def project_everything(stage: Stage, client: Any) -> None:
    """Hand the whole stream, from the trim horizon, to the projector once; every record must apply."""
    records = stream_records(client, boto3.client("dynamodbstreams", region_name=REGION), stage.settings)
    assert Root(stage.settings, client=client).stream_handler({"Records": records}, None) == {"batchItemFailures": []}
