"""Chalice's entry point: the HTTP API and the stream projector, in one app over this region's root.

The projector runs on the events table's stream. Chalice needs a stream ARN when it
packages the app (LEDGER_EVENTS_STREAM_ARN); `ledger package` (deploy/) replaces it in
the template with the region's real stream, a parameter of the service stack, and sets
what Chalice cannot: `FunctionResponseTypes: [ReportBatchItemFailures]` (else a failed
record re-runs its whole batch: still correct, since the projector deduplicates, but
slower), bisect on error, bounded retries and record age, and a failure queue.
"""

import os

from api.app import create_app
from composition.root import Root

root = Root.from_environment()  # builds nothing yet: every part is made on first use
app = create_app(root)
# API Gateway runs the built-in authorizer as a function of its own, whose handler Chalice
# names after the decorated function: `app.token_authorizer` (with Cognito, API Gateway
# checks tokens itself and this is unused).
token_authorizer = app.ledger_authorizer


@app.on_dynamodb_record(
    stream_arn=os.environ.get("LEDGER_EVENTS_STREAM_ARN", "arn:aws:dynamodb:us-east-1:000000000000:table/dev-ledger-events/stream/unset"),
    batch_size=100,
    starting_position="TRIM_HORIZON",
    maximum_batching_window_in_seconds=1,
)
def project_events(event):
    return root.stream_handler(event.to_dict(), event.context)
