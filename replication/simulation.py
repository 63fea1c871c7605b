"""A seeded simulation of several regions: the real ledger, projector and replicator on moto, one backend per region.

moto keeps one backend per region, so a client per region name is a separate
replica with its own tables and streams, in one process. Each region has the same
parts `ledger serve --regions` gives it (a composition root whose client stamps
writes, a projector polling its own events stream) and one replicator links them.
Nothing runs on its own: the schedule decides every step (which region takes
which write, when the replicator captures and delivers, which direction is cut,
when the replicator crashes and comes back, when each projector polls), all drawn
from one `random.Random(seed)`, so a seed replays a run. Time is simulated: lags
are due times on the simulation's clock, not sleeps.

It needs an active moto mock (`moto.mock_aws`) and
AWS_ACCOUNT_ID_ENDPOINT_MODE=disabled for in-process streams.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from composition.root import Root
from failover.lease import Lease
from failover.store import HeartbeatStore
from ledger.config import Settings
from ledger.events import Event
from ledger.fold import Totals
from ledger.schema import STORAGE_ATTRIBUTES
from ledger.store import deserialize, event_from_item
from runtime.poller import PollerConfig, StreamPoller, stream_arn_of
from runtime.tables import all_definitions, ensure_tables

from .queue import ShipmentQueue
from .replicator import Lag, Region, Replicator
from .stamps import HybridClock, Stamper


# Lambda's mapping, stepped by hand: no batching wait, never give a record up, and a fresh
# iterator every time (moto rolls cancelled transactions back by swapping shard objects).
_MOTO_POLLER = PollerConfig(batching_window_seconds=0.0, max_attempts=10**9, backoff_cap_seconds=0.0, reuse_iterators=False)


@dataclass
class SimRegion:
    name: str
    root: Root
    plain: Any  # unstamped client: the replicator's, and the checks'
    projector: StreamPoller
    clock: HybridClock


@dataclass
class World:
    """Regions, their projectors and a replicator, all on moto, stepped by hand."""

    names: list[str]
    stage: str
    state_dir: Path
    seed: int
    lag: Lag = field(default_factory=Lag)
    lease_seconds: float | None = None  # each region holds a write lease (failover.lease) on the simulated clock
    projection_window: int | None = None  # recent ids per balance item (small: late events go below the floor)
    regions: dict[str, SimRegion] = field(default_factory=dict)
    now: float = 1_000_000.0  # the simulation's clock, in seconds

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.queue = ShipmentQueue(":memory:", durable=False)
        for name in self.names:
            self.regions[name] = self._region(name)
        self.replicator = self._replicator()

    def _settings(self, name: str) -> Settings:
        return Settings(stage=self.stage, region=name, regions=tuple(self.names))

    def _region(self, name: str) -> SimRegion:
        settings = self._settings(name)
        plain = _client("dynamodb", name)
        ensure_tables(plain, settings)
        clock = HybridClock()
        stamped = Stamper(name, settings.tables.replicated, clock).attach(_client("dynamodb", name))
        lease = None
        if self.lease_seconds is not None:
            beats = HeartbeatStore(stamped, settings.tables.regions)
            lease = Lease(name, self.names, beats, self.lease_seconds, clock=lambda: self.now)
        # One account at a time: moto rolls a cancelled transaction back by restoring a copy of each
        # table it touched, which would also undo another account's write made meanwhile.
        root = Root(settings, client=stamped, lease=lease, projection_window=self.projection_window, projection_workers=1)
        return SimRegion(name, root, plain, self._projector(root), clock)

    def _projector(self, root: Root) -> StreamPoller:
        name = root.settings.region
        return StreamPoller(
            _client("dynamodbstreams", name),
            stream_arn_of(root.dynamodb, root.settings.tables.events),
            root.stream_handler,
            checkpoint_path=self.state_dir / f"projector-{name}.json",
            dead_letter_path=self.state_dir / f"projector-{name}-dead-letters.jsonl",
            config=_MOTO_POLLER,
            log=lambda message: None,
        )

    def _replicator(self) -> Replicator:
        links = [Region(r.name, r.plain, _client("dynamodbstreams", r.name), r.clock) for r in self.regions.values()]
        return Replicator(
            links, self._settings(self.names[0]).tables, self.queue, self.state_dir / "replicator",
            lag=self.lag, clock=lambda: self.now, rng=self.rng, poller_config=_MOTO_POLLER,
        )  # fmt: skip

    # -- steps ------------------------------------------------------------------------------

    def crash_replicator(self) -> None:
        """Lose everything the replicator held in memory; its queue and stream checkpoints remain."""
        partitions = self.replicator.partitions
        self.replicator = self._replicator()
        self.replicator.partitions = partitions  # a network property, not the replicator's

    def crash_projector(self, name: str) -> None:
        """The region's projector dies wherever it was: it comes back from its checkpoint, redelivering."""
        region = self.regions[name]
        region.projector = self._projector(region.root)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def tick(self, name: str | None = None) -> None:
        """The regions' heartbeats (with leases): read the peers', beat."""
        for region in [self.regions[name]] if name else self.regions.values():
            if region.root.lease is not None:
                region.root.lease.tick()
                region.root.balance_store.settle_deferred()  # as serve's lease thread does while the lease is held

    def hold_leases(self, max_rounds: int = 20) -> None:
        """Beat and replicate until every region holds its lease (as `serve --regions` does before it is ready)."""
        def waiting() -> list[str]:  # a region failed over from by force waits for its readmission, not this
            return [n for n, r in self.regions.items() if r.root.lease is not None and r.root.lease.fenced() and not r.root.lease.excluded_by]

        for _ in range(max_rounds):
            if not waiting():
                return
            self.tick()
            self.advance(self.lag.fixed_ms / 1000 + self.lag.jitter_ms / 1000 + 0.001)
            self.replicator.step()
        raise AssertionError(f"seed {self.seed}: {waiting()} did not hold their leases after {max_rounds} rounds")

    def project(self, name: str | None = None) -> None:
        for region in [self.regions[name]] if name else self.regions.values():
            region.projector.poll_once()

    def settle(self, max_rounds: int = 500) -> None:
        """Heal every partition and run replication and projection until nothing is left in flight."""
        self.replicator.heal()
        for _ in range(max_rounds):
            self.advance(3600.0)  # every lag has passed
            moved = self.replicator.step()
            for region in self.regions.values():
                region.projector.drain(timeout=30)
            if not moved and self.replicator.drained():
                for region in self.regions.values():
                    region.projector.drain(timeout=30)
                if self.replicator.drained():
                    return
        raise AssertionError(f"seed {self.seed}: replication did not settle in {max_rounds} rounds")

    # -- what each region holds ----------------------------------------------------------------

    def events(self, name: str) -> dict[str, list[Event]]:
        """Every event of the region, per account, in id order."""
        region = self.regions[name]
        found: dict[str, list[Event]] = {}
        for item in _scan(region.plain, region.root.settings.tables.events):
            event = event_from_item(item)
            found.setdefault(event.entity_id, []).append(event)
        for events in found.values():
            events.sort(key=lambda e: e.event_id)
        return found

    def items(self, name: str, table: str) -> dict[str, dict[str, Any]]:
        """Every item of a replicated table (stamps included), by key."""
        region = self.regions[name]
        physical = getattr(region.root.settings.tables, table)
        key = {"accounts": "account_id", "idempotency": "idempotency_id"}[table]
        return {item[key]["S"]: item for item in _scan(region.plain, physical)}

    def balances(self, name: str) -> dict[str, Any]:
        return {b.account_id: b for b in self.regions[name].root.balance_store.all_balances()}

    def folds(self, name: str) -> dict[str, Totals]:
        return {account: Totals.of(events) for account, events in self.events(name).items()}

    def table_names(self) -> list[tuple[Any, str]]:
        """(client, table) for every table of every region: what a test drops when it is done."""
        return [
            (region.plain, definition["TableName"])
            for region in self.regions.values()
            for definition in all_definitions(region.root.settings)[0]
        ]


def _client(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)


def _scan(client: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(page["Items"])
    return items


def without_stamps(item: dict[str, Any]) -> dict[str, Any]:
    data = deserialize(item)
    return {k: v for k, v in data.items() if k not in STORAGE_ATTRIBUTES}


Step = Callable[[World], None]
