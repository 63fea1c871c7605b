"""The regions table: one item per region, written only by that region, replicated to all.

A region's item is its heartbeat: when it last beat (by its clock), its lease
time, each peer's beat it last heard (echoed back, so a peer learns that it was
heard), and the regions it failed over from by force. The operator's fail-over
command writes a second item per region, in that region, naming the regions to
exclude; the region's next beat carries them. The table is replicated like the ledger's
items, so a region hears a peer exactly as far as replication reaches: a partition
that stops the ledger's items stops the heartbeats too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Heartbeat:
    region: str
    beat_at: float  # seconds since the epoch, by the region's clock
    lease_seconds: float
    # peer -> the peer's own beat_at last heard from it (its clock, echoed back: a round trip)
    heard: dict[str, float] = field(default_factory=dict)
    excluded: frozenset[str] = frozenset()  # regions this one failed over from by force
    fenced: bool = False  # whether it took writes when it beat


EXCLUSIONS = "excluded-by#"  # the key prefix of a region's exclusions item


class HeartbeatStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def beat(self, heartbeat: Heartbeat) -> None:
        self._client.put_item(
            TableName=self._table,
            Item={
                "region": {"S": heartbeat.region},
                "beat_at": {"N": repr(heartbeat.beat_at)},
                "lease_seconds": {"N": repr(heartbeat.lease_seconds)},
                "heard": {"M": {peer: {"N": repr(at)} for peer, at in heartbeat.heard.items()}},
                **({"excluded": {"SS": sorted(heartbeat.excluded)}} if heartbeat.excluded else {}),
                "fenced": {"BOOL": heartbeat.fenced},
            },
        )

    def set_exclusions(self, region: str, excluded: set[str]) -> None:
        """Which regions `region` failed over from by force (its next beat says so); written in `region`'s replica."""
        item: dict[str, Any] = {"region": {"S": EXCLUSIONS + region}}
        if excluded:
            item["excluded"] = {"SS": sorted(excluded)}
        self._client.put_item(TableName=self._table, Item=item)

    def read(self) -> tuple[dict[str, Heartbeat], dict[str, set[str]]]:
        """Every region's heartbeat, and every region's exclusions, as this replica holds them."""
        beats: dict[str, Heartbeat] = {}
        exclusions: dict[str, set[str]] = {}
        request: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True}
        while True:
            page = self._client.scan(**request)
            for item in page.get("Items", []):
                key = item["region"]["S"]
                if key.startswith(EXCLUSIONS):
                    exclusions[key[len(EXCLUSIONS) :]] = set(item.get("excluded", {}).get("SS", []))
                    continue
                heard = item.get("heard", {}).get("M", {})
                beats[item["region"]["S"]] = Heartbeat(
                    region=item["region"]["S"],
                    beat_at=float(item["beat_at"]["N"]),
                    lease_seconds=float(item["lease_seconds"]["N"]),
                    heard={peer: float(value["N"]) for peer, value in heard.items()},
                    excluded=frozenset(item.get("excluded", {}).get("SS", [])),
                    fenced=item.get("fenced", {}).get("BOOL", False),
                )
            if "LastEvaluatedKey" not in page:
                return beats, exclusions
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
