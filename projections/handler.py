"""The stream handler Lambda runs (and the local poller calls): records in, partial batch response out.

Powertools' `BatchProcessor` reports failures per record, so Lambda (with
`ReportBatchItemFailures`) retries from the first failed record instead of the
whole batch. Before the per-record pass, every INSERT of the batch is parsed and
handed to the `Projector` at once, so one account's events share one write;
the record handler then only reports each record's outcome.

Only INSERTs are applied. The event table is append-only, so a MODIFY or REMOVE
there is an integrity alarm: logged as an error with both images, counted in a
metric, never applied. Record kinds it does not know (DynamoDB Local's TTL records,
say) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from ledger.events import Event, parse_event
from ledger.ids import parse_rfc3339
from ledger.schema import STORAGE_ATTRIBUTES
from observability import telemetry as figures
from observability.telemetry import Telemetry

from .projector import Projector, key_of

logger = Logger(service="ledger-projector")


def event_from_image(image: dict[str, Any]) -> Event:
    """The domain event in a stream record's NewImage (already deserialised by Powertools)."""
    data = {k: _plain(v) for k, v in image.items() if k not in STORAGE_ATTRIBUTES}
    return parse_event(data)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def handle_stream_event(event: dict[str, Any], context: Any, projector: Projector, telemetry: Telemetry) -> PartialItemFailureResponse:
    """Project one batch of stream records; return the failed records' sequence numbers."""
    records = event.get("Records", [])
    # The batch's log lines carry its first record's id; each failure names its transaction too.
    logger.set_correlation_id(records[0].get("eventID") if records else None)
    parsed: dict[str, Event] = {}
    for raw in event.get("Records", []):
        if raw.get("eventName") == "INSERT":
            try:
                parsed[raw["dynamodb"]["SequenceNumber"]] = event_from_image(DynamoDBRecord(raw).dynamodb.new_image)
            except Exception:  # noqa: BLE001 - the record handler reports the parse error for this record
                logger.exception("unparseable event record", extra={"record": raw.get("eventID"), "region": telemetry.region})
    report = projector.project(list(parsed.values()))
    if parsed:
        oldest = min(e.recorded_at for e in parsed.values())
        lag = (datetime.now(timezone.utc) - parse_rfc3339(oldest)).total_seconds() * 1000
        telemetry.lag(max(lag, 0))
    telemetry.count(figures.DUPLICATES, len(report.duplicates))
    telemetry.count(figures.PROJECTED, len(report.applied))

    def record_handler(record: DynamoDBRecord) -> None:
        kind = record.get("eventName")
        sequence = record.dynamodb.sequence_number
        if kind == "INSERT":
            projected = parsed.get(sequence)
            if projected is None:
                raise ValueError(f"record {record.event_id} does not hold a ledger event")
            failure = report.failed.get(key_of(projected))
            if failure is not None:
                logger.warning("event not projected; retried", extra={"transaction_id": projected.transaction_id,
                                                                      "event_id": projected.event_id, "error": str(failure)})
                raise failure
        elif kind in ("MODIFY", "REMOVE"):
            _integrity_alarm(record, telemetry)
        else:
            logger.debug("skipped a stream record of unknown kind", extra={"eventName": kind})

    try:
        return process_partial_response(event=event, record_handler=record_handler, processor=BatchProcessor(EventType.DynamoDBStreams), context=context)
    finally:
        telemetry.flush()


def _integrity_alarm(record: DynamoDBRecord, telemetry: Telemetry) -> None:
    logger.error(
        "integrity alarm: an event was modified or removed; the projection ignores the change",
        extra={
            "eventName": record.get("eventName"),
            "keys": _plain(record.dynamodb.keys),
            "old_image": _plain(record.dynamodb.old_image),
            "new_image": _plain(record.dynamodb.new_image),
            "region": telemetry.region,
        },
    )
    telemetry.count(figures.INTEGRITY_ALARMS)


def make_handler(
    projector_factory: Callable[[], Projector], telemetry: Telemetry
) -> Callable[[dict[str, Any], Any], PartialItemFailureResponse]:
    """A `(event, context)` handler that builds its projector on first use."""
    built: list[Projector] = []

    def handler(event: dict[str, Any], context: Any = None) -> PartialItemFailureResponse:
        if not built:
            built.append(projector_factory())
        return handle_stream_event(event, context, built[0], telemetry)

    return handler
