"""Chalice's entry point: the HTTP API and the stream projector, in one app.

The projector runs on the events table's stream. Chalice needs the stream ARN when
it packages the app (LEDGER_EVENTS_STREAM_ARN); the deploy template must also set
`FunctionResponseTypes: [ReportBatchItemFailures]` on the event source mapping,
which Chalice cannot, or a failed record re-runs its whole batch (still correct,
since the projector deduplicates, but slower).
"""

import os

from api.app import app
from ledger.config import Settings
from projections.bootstrap import build_stream_handler

_project = build_stream_handler(Settings.from_env())


@app.on_dynamodb_record(
    stream_arn=os.environ.get("LEDGER_EVENTS_STREAM_ARN", "arn:aws:dynamodb:us-east-1:000000000000:table/dev-ledger-events/stream/unset"),
    batch_size=100,
    starting_position="TRIM_HORIZON",
    maximum_batching_window_in_seconds=1,
)
def project_events(event):
    return _project(event.to_dict(), event.context)
