"""The composition root: settings in, a wired `Ledger` out. Nothing here runs at import."""

from __future__ import annotations

from datetime import timedelta

from .config import Settings, dynamodb_client
from .cursors import CursorCodec
from .service import Ledger
from .store import EventStore


def build_ledger(settings: Settings, client=None) -> Ledger:
    """A `Ledger` over the tables of `settings`, using `client` or a new DynamoDB client."""
    client = client or dynamodb_client(settings)
    store = EventStore(client, settings.tables, settings.region)
    return Ledger(
        store,
        settings.region,
        idempotency_ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        cursors=CursorCodec(settings.cursor_key),
    )
