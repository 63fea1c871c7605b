"""Wiring for the read side: settings in, a balance store and a stream handler out."""

from __future__ import annotations

from ledger.config import Settings, dynamodb_client

from .handler import make_handler
from .projector import Projector
from .schema import ProjectionTables
from .store import BalanceStore


def build_balance_store(settings: Settings, client=None) -> BalanceStore:
    return BalanceStore(client or dynamodb_client(settings), ProjectionTables.for_stage(settings.stage))


def build_stream_handler(settings: Settings, client=None):
    """The `(event, context)` function Lambda and the local poller both call."""
    return make_handler(lambda: Projector(build_balance_store(settings, client)))
