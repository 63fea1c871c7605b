"""The composition root: everything one region's process needs, built lazily from its settings.

Nothing else in the project builds a boto3 client or wires a store to a service.
The Chalice app (`api.app.create_app(root)`), the stream handler Lambda runs, the
local runtime and every `ledger` command take a `Root`; a test or `ledger serve
--regions` builds one root per region, and nothing is shared between them but the
process. Each part is built on first use (`cached_property`), so importing the app
opens no connection and a Lambda that only projects never builds the API's parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

from access.keys import SigningKeys
from audit.checkpoints import Checkpoints
from audit.store import CheckpointStore
from audit.timeline import Timeline
from failover.lease import Lease
from failover.store import HeartbeatStore
from ledger.config import REQUEST_PATH, Settings, dynamodb_client, secrets_client
from ledger.cursors import CursorCodec
from ledger.service import Ledger
from ledger.store import EventStore
from projections.handler import make_handler
from projections.projector import Projector
from projections.queries import BalanceQueries
from projections.schema import ProjectionTables
from projections.store import BalanceStore, Writes
from observability.telemetry import API_SERVICE, PROJECTOR_SERVICE, Telemetry


@dataclass
class Root:
    """One region's parts. `client` overrides the DynamoDB client (tests, a journaled local client)."""

    settings: Settings
    client: Any = None
    client_config: Any = REQUEST_PATH
    # Where the other regions' APIs answer, when this process knows (serve --regions): region -> base URL.
    region_urls: dict[str, str] = field(default_factory=dict)
    # This region's write lease, when it runs among peers (serve --regions); writes check it.
    lease: Lease | None = None
    # Refuses writes while this region may not take them for another reason (a region still joining).
    admission: Callable[[], None] | None = None
    # How many recent event ids a balance item keeps for dedupe (None: as many as fit in 1 KB). Tests
    # make it small so that late and replayed events fall below the floor and are decided by the log.
    projection_window: int | None = None
    # How many requests of a projected batch are in flight at once.
    projection_workers: int = 4
    # How the projector's writes of several accounts travel (`projections.store.Writes`): one
    # conditional PutItem each on AWS (one write unit each); `ledger serve` sends them to its
    # DynamoDB Local as transactions (one commit to disk for many), and to its moto fallback one by one.
    projection_writes: Writes = "items"

    @classmethod
    def from_environment(cls) -> Root:
        return cls(Settings.from_env())

    @cached_property
    def dynamodb(self) -> Any:
        return self.client if self.client is not None else dynamodb_client(self.settings, self.client_config)

    @cached_property
    def event_store(self) -> EventStore:
        return EventStore(self.dynamodb, self.settings.tables, self.settings.region)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(
            self.event_store,
            self.settings.region,
            idempotency_ttl=timedelta(seconds=self.settings.idempotency_ttl_seconds),
            cursors=self.cursors,
            regions=self.settings.regions,
            write_gate=self._write_gate,
            observe=self.api_telemetry.count,
        )

    @cached_property
    def api_telemetry(self) -> Telemetry:
        return Telemetry(API_SERVICE, self.settings.region)

    @cached_property
    def projector_telemetry(self) -> Telemetry:
        return Telemetry(PROJECTOR_SERVICE, self.settings.region)

    def _write_gate(self) -> None:
        if self.admission is not None:
            self.admission()
        if self.lease is not None:
            self.lease.check()

    @cached_property
    def cursors(self) -> CursorCodec:
        return CursorCodec(self.settings.cursor_key)

    @cached_property
    def balance_store(self) -> BalanceStore:
        return BalanceStore(
            self.dynamodb,
            ProjectionTables.for_stage(self.settings.stage),
            accounts_table=self.settings.tables.accounts,
            region=self.settings.region,
            window=self.projection_window,
            writes=self.projection_writes,
            # A fenced home may have been failed over from: it settles nothing until its lease is back.
            may_settle=(lambda: not self.lease.fenced()) if self.lease is not None else None,
        )

    @cached_property
    def balances(self) -> BalanceQueries:
        return BalanceQueries(self.balance_store, self.ledger, self.settings.region)

    @cached_property
    def projector(self) -> Projector:
        return Projector(self.balance_store, workers=self.projection_workers)

    @cached_property
    def stream_handler(self) -> Any:
        """The `(event, context)` function Lambda and the local poller both call."""
        return make_handler(lambda: self.projector, self.projector_telemetry)

    @cached_property
    def checkpoints(self) -> Checkpoints:
        return Checkpoints(CheckpointStore(self.dynamodb, self.settings.tables.checkpoints), self.event_store)

    @cached_property
    def heartbeats(self) -> HeartbeatStore:
        return HeartbeatStore(self.dynamodb, self.settings.tables.regions)

    @cached_property
    def signing_keys(self) -> SigningKeys:
        """Verifies (and, for `ledger tokens issue`, signs) bearer tokens."""
        settings = self.settings
        return SigningKeys(settings.token_key, settings.token_secret_arn, lambda: secrets_client(settings))

    @cached_property
    def timeline(self) -> Timeline:
        return Timeline(self.event_store, self.cursors)
