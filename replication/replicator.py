"""A replicator that behaves like DynamoDB Global Tables, for regions that are not on AWS.

What it does, and why each part matches Global Tables (multi-region eventual consistency):
- **Capture**: it reads the stream of every replicated table (events, accounts,
  idempotency records) in every region, as Global Tables reads its replicas'
  streams, and ships each local write alone: the legs of one transaction leave as
  separate items, in no particular order across items.
- **No echo**: a write is shipped only from the region that made it, known by its
  write stamp (`replication.stamps`); a replicated write shows up in the receiving
  region's stream like any write (so that region's projector folds it) but is not
  shipped again.
- **Last writer wins, per whole item**: a shipment is applied under a condition on
  the stamp it carries, so an older version never replaces a newer one and every
  region ends with the same item whatever the order of arrival; ties go to the
  greater region name. Events are immutable: put if absent.
- **Per-item order, configurable lag**: an item never reaches a region as an older
  version after a newer one from the same region (only each source's newest due
  version leaves; its older ones are dropped; versions from different sources all
  leave and last-writer-wins picks); each shipment waits a fixed lag plus a random jitter.
- **Partitions**: a direction can be cut (`partition`); its shipments wait in the
  durable queue (`replication.queue`) and leave once it heals. Stream checkpoints
  move only after the shipments are queued, so a restart loses nothing.
- **TTL deletes** (idempotency records expiring) are shipped as deletes of that same
  version, never of a newer one; deletes the replicator itself applies are not.

The same class drives the local multi-region runtime (`ledger serve --regions`, a
thread calling `step`) and the seeded simulation (which calls `capture` and
`deliver` itself, with its own clock and random source, crashing and recreating
the replicator at will).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ledger.schema import REPLICATION_REGION, REPLICATION_TIME, LedgerTables
from runtime.poller import PollerConfig, StreamPoller, stream_arn_of

from .queue import Shipment, ShipmentQueue
from .stamps import HybridClock, stamp_of

LEDGER_TABLES = ("events", "accounts", "idempotency")
LOGICAL_TABLES = (*LEDGER_TABLES, "regions")  # and the regions' heartbeats (failover.lease)
_LWW = "attribute_not_exists(#t) OR #t < :t OR (#t = :t AND #r < :r)"
_SAME_VERSION = "#t = :t AND #r = :r"
_NAMES = {"#t": REPLICATION_TIME, "#r": REPLICATION_REGION}
_LAG_SAMPLES = 2000


@dataclass
class Region:
    """One replica: a client that writes without stamping, its streams client, and its write clock."""

    name: str
    client: Any
    streams: Any
    clock: HybridClock


@dataclass(frozen=True)
class Lag:
    fixed_ms: float = 0.0
    jitter_ms: float = 0.0

    def draw(self, rng: random.Random) -> float:
        return (self.fixed_ms + rng.uniform(0.0, self.jitter_ms)) / 1000.0


@dataclass
class DirectionStats:
    delivered: int = 0
    lags: deque = field(default_factory=lambda: deque(maxlen=_LAG_SAMPLES))  # seconds from write to apply


def is_ttl_delete(record: dict[str, Any]) -> bool:
    """A deletion by TTL (service-initiated; DynamoDB Local names its TTL records otherwise)."""
    kind = record.get("eventName")
    if kind not in ("INSERT", "MODIFY", "REMOVE"):
        return True
    return kind == "REMOVE" and (record.get("userIdentity") or {}).get("type") == "Service"


class Replicator:
    def __init__(
        self,
        regions: Iterable[Region],
        tables: LedgerTables,
        queue: ShipmentQueue,
        state_dir: Path,
        *,
        lag: Lag = Lag(),
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        log: Callable[[str], None] = lambda message: None,
        poller_config: PollerConfig = PollerConfig(batching_window_seconds=0.05, max_attempts=10**9, shard_refresh_seconds=1.0),
    ) -> None:
        self.regions = {region.name: region for region in regions}
        self._tables = {logical: getattr(tables, logical) for logical in LOGICAL_TABLES}
        self._logical = {physical: logical for logical, physical in self._tables.items()}
        self.queue = queue
        self._state_dir = Path(state_dir)
        self.lag = lag
        self._clock = clock
        self._rng = rng or random.Random()
        self._log = log
        self.partitions: set[tuple[str, str]] = set()
        self.stats: dict[tuple[str, str], DirectionStats] = {}
        self._pollers: dict[tuple[str, str], StreamPoller] = {}
        self._poller_config = poller_config
        self._captured_at = 0.0  # when every stream was last read to its end

    # -- control ------------------------------------------------------------------------

    def partition(self, source: str, dest: str) -> None:
        self.partitions.add((source, dest))

    def heal(self, source: str | None = None, dest: str | None = None) -> None:
        self.partitions = {(s, d) for s, d in self.partitions if not ((source in (None, s)) and (dest in (None, d)))}

    def add_region(self, region: Region) -> None:
        """From the next capture on, every region's writes are shipped to `region` too (call from the stepping thread)."""
        self.regions[region.name] = region

    def backfill(self, dest: str, source: str, logical: str, start: dict[str, Any] | None, limit: int = 100) -> tuple[int, dict[str, Any] | None]:
        """Copy one page of `source`'s replica of a ledger table to `dest`, as shipments: last-writer-wins by
        the original write time, so a newer version already delivered is never overwritten (and an event is
        written once). Returns how many items, and where the next page starts (None: done)."""
        request: dict[str, Any] = {"TableName": self._tables[logical], "Limit": limit, "ConsistentRead": True}
        if start:
            request["ExclusiveStartKey"] = start
        page = self.regions[source].client.scan(**request)
        keys = {"events": ("entity_id", "event_id"), "accounts": ("account_id",), "idempotency": ("idempotency_id",)}[logical]
        for item in page.get("Items", []):
            time_us, origin = stamp_of(item) or (0, source)
            key = {name: item[name] for name in keys}
            self._apply(Shipment(0, source, dest, logical, key, "put", item, time_us, origin, 0.0))
        return len(page.get("Items", [])), page.get("LastEvaluatedKey")

    # -- capture --------------------------------------------------------------------------

    def capture(self, region: str | None = None) -> int:
        """One pass over the streams (of `region`, or of all); the records delivered to the queue."""
        names = [region] if region else list(self.regions)
        return sum(self._poller(name, logical).poll_once() for name in names for logical in LOGICAL_TABLES)

    def captured_everything(self) -> bool:
        """Every ledger stream of every region read to its end (heartbeats never end, so they are left out)."""
        for name in self.regions:
            for logical in LEDGER_TABLES:
                poller = self._poller(name, logical)
                try:
                    poller.drain(timeout=0)
                except TimeoutError:
                    return False
        return True

    def _poller(self, region: str, logical: str) -> StreamPoller:
        poller = self._pollers.get((region, logical))
        if poller is None:
            link = self.regions[region]
            table = self._tables[logical]
            poller = StreamPoller(
                link.streams,
                stream_arn_of(link.client, table),
                self._capture_handler(region, logical),
                checkpoint_path=self._state_dir / f"capture-{region}.json",
                dead_letter_path=self._state_dir / f"capture-{region}-dead-letters.jsonl",
                config=self._poller_config,
                log=self._log,
            )
            self._pollers[(region, logical)] = poller
        return poller

    def _capture_handler(self, region: str, logical: str) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
            rows = []
            now = self._clock()
            for record in event.get("Records", []):
                for kind, image in self._local_writes(region, record):
                    time_us, origin = stamp_of(image) or (0, region)
                    key = record["dynamodb"]["Keys"]
                    for dest in self.regions:
                        if dest != region:
                            rows.append((region, dest, logical, key, kind, image, time_us, origin, now + self.lag.draw(self._rng)))
            self.queue.put(rows)  # before the checkpoint moves on: a crash re-captures, never loses
            return {"batchItemFailures": []}

        return handler

    @staticmethod
    def _local_writes(region: str, record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        change = record.get("dynamodb", {})
        if is_ttl_delete(record):
            return [("delete", _typed(change.get("OldImage") or change.get("Keys", {})))]
        if record.get("eventName") in ("INSERT", "MODIFY"):
            image = _typed(change.get("NewImage", {}))
            stamp = stamp_of(image)
            if stamp is not None and stamp[1] == region:  # written here: ours to ship; else replicated here
                return [("put", image)]
        return []

    # -- delivery -------------------------------------------------------------------------

    def deliver(self, now: float | None = None, limit: int | None = None) -> int:
        """Apply due shipments (per-item order, any order across items); partitioned directions wait."""
        now = self._clock() if now is None else now
        ready = [s for s in self.queue.ready(now) if (s.source, s.dest) not in self.partitions]
        self._rng.shuffle(ready)
        if limit is not None:
            ready = ready[:limit]
        applied: list[Shipment] = []
        try:
            for shipment in ready:
                self._apply(shipment)
                applied.append(shipment)
                stats = self.stats.setdefault((shipment.source, shipment.dest), DirectionStats())
                stats.delivered += 1
                stats.lags.append(max(0.0, self._clock() - shipment.stamp_time / 1_000_000))
        finally:
            self.queue.done(applied)  # one commit for the round; a crash before it re-applies, harmlessly
        return len(ready)

    def _apply(self, shipment: Shipment) -> None:
        region = self.regions[shipment.dest]
        table = self._tables[shipment.table]
        values = {":t": {"N": str(shipment.stamp_time)}, ":r": {"S": shipment.stamp_region}}
        try:
            if shipment.kind == "delete":
                region.client.delete_item(
                    TableName=table, Key=shipment.key, ConditionExpression=_SAME_VERSION,
                    ExpressionAttributeNames=_NAMES, ExpressionAttributeValues=values,
                )  # fmt: skip
            elif shipment.table == "events":  # immutable: the first copy to arrive is the only one
                region.client.put_item(
                    TableName=table, Item=_typed(shipment.image), ConditionExpression="attribute_not_exists(event_id)"
                )
            else:
                region.client.put_item(
                    TableName=table, Item=_typed(shipment.image), ConditionExpression=_LWW,
                    ExpressionAttributeNames=_NAMES, ExpressionAttributeValues=values,
                )  # fmt: skip
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # A newer version is there already (or this one was applied before): last writer wins.
        region.clock.observe(shipment.stamp_time)

    # -- the whole loop ------------------------------------------------------------------------

    def step(self) -> int:
        """Capture what is new everywhere, deliver what is due; how much happened."""
        return self.capture() + self.deliver()

    def drained(self) -> bool:
        """Nothing left to capture or to deliver, partitions included."""
        captured = self.captured_everything()
        if captured:
            self._captured_at = self._clock()
        return captured and not self.queue.pending()

    def watermarks(self) -> dict[str, float]:
        """Per region: the instant up to which it holds every other region's writes.

        The oldest write still queued for it bounds it; with nothing queued, the last
        time every stream was seen read to its end (`drained`).
        """
        oldest = self.queue.oldest_pending()
        marks = {}
        for dest in self.regions:
            waiting = [stamp / 1_000_000 for (source, d), stamp in oldest.items() if d == dest]
            marks[dest] = min([*waiting, self._captured_at]) if waiting else self._captured_at
        return marks

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = self._clock() if now is None else now
        pending = self.queue.pending()
        directions = {}
        for source in self.regions:
            for dest in self.regions:
                if source == dest:
                    continue
                stats = self.stats.get((source, dest), DirectionStats())
                lags = sorted(stats.lags)
                directions[f"{source}->{dest}"] = {
                    "queued": pending.get((source, dest), 0),
                    "delivered": stats.delivered,
                    "partitioned": (source, dest) in self.partitions,
                    "lag_ms": {
                        "p50": _ms(statistics.median(lags)) if lags else None,
                        "p99": _ms(lags[min(len(lags) - 1, int(len(lags) * 0.99))]) if lags else None,
                        "max": _ms(lags[-1]) if lags else None,
                    },
                }
        return {"at": now, "lag": {"fixed_ms": self.lag.fixed_ms, "jitter_ms": self.lag.jitter_ms}, "directions": directions}


def _typed(image: dict[str, Any]) -> dict[str, Any]:
    """The image with every value typed: DynamoDB Local writes an empty map in stream images as a bare `{}`."""
    return {name: _typed_value(value) for name, value in image.items()}


def _typed_value(value: Any) -> Any:
    if value == {}:
        return {"M": {}}
    if isinstance(value, dict) and "M" in value:
        return {"M": _typed(value["M"])}
    if isinstance(value, dict) and "L" in value:
        return {"L": [_typed_value(item) for item in value["L"]]}
    return value


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
