"""The write stamp Global Tables keeps on every replicated item, emulated for local regions.

Global Tables resolves a conflict on one item by last-writer-wins on the time of the
write, per whole item, and must never echo a replicated write back to where it came
from. To do both it stamps every write with when and where it happened (in its
2017 version as the visible attributes `aws:rep:updatetime` and
`aws:rep:updateregion`, hidden since). On AWS the service stamps; locally,
`Stamper.attach` adds the same two attributes to every Put and Update a region's
clients send to a replicated table, so the replicator can compare versions
atomically inside a condition expression and tell local writes from replicated ones.
The ledger's readers ignore the attributes (`ledger.schema.REPLICATION_ATTRIBUTES`).

The time is a hybrid logical clock in microseconds: the wall clock, never going
back, and always past every stamp the region has received, so a region's write
made after it saw another region's write is stamped later even if its own clock
runs behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ledger.schema import REPLICATION_REGION, REPLICATION_TIME

_NAMES = {"#rep_t": REPLICATION_TIME, "#rep_r": REPLICATION_REGION}


class HybridClock:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A time in microseconds greater than every one this clock gave or observed before."""
        with self._lock:
            self._last = max(int(self._wall() * 1_000_000), self._last + 1)
            return self._last

    def observe(self, stamp: int) -> None:
        """A stamp received from another region: later local writes sort after it."""
        with self._lock:
            self._last = max(self._last, stamp)


class Stamper:
    """Stamps one region's writes to the replicated tables."""

    def __init__(self, region: str, tables: tuple[str, ...], clock: HybridClock | None = None) -> None:
        self.region = region
        self.tables = frozenset(tables)
        self.clock = clock or HybridClock()

    def attach(self, client: Any) -> Any:
        """Stamp every write `client` sends to a replicated table from now on; returns the client."""
        for operation in ("PutItem", "UpdateItem", "TransactWriteItems"):
            client.meta.events.register(f"before-parameter-build.dynamodb.{operation}", self._stamp)
        return client

    def _stamp(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        """Stamp the request's writes to replicated tables, on copies: the caller may send its dicts again."""
        stamp: tuple[int, str] | None = None

        def stamped(kind: str, body: dict[str, Any]) -> dict[str, Any]:
            nonlocal stamp
            if kind not in ("Put", "Update") or body.get("TableName") not in self.tables:
                return body
            stamp = stamp or (self.clock.now(), self.region)
            if kind == "Put":
                return {**body, "Item": {**body["Item"], REPLICATION_TIME: {"N": str(stamp[0])}, REPLICATION_REGION: {"S": stamp[1]}}}
            return _stamped_update(body, stamp)

        if model.name == "TransactWriteItems":
            params["TransactItems"] = [
                {kind: stamped(kind, body) for kind, body in item.items()} for item in params.get("TransactItems", [])
            ]
        else:
            params.update(stamped("Put" if model.name == "PutItem" else "Update", dict(params)))


def _stamped_update(body: dict[str, Any], stamp: tuple[int, str]) -> dict[str, Any]:
    expression = body.get("UpdateExpression", "")
    assignment = "#rep_t = :rep_t, #rep_r = :rep_r"
    if "#rep_t" not in expression:
        if "SET " in expression:
            expression = expression.replace("SET ", f"SET {assignment}, ", 1)
        else:
            expression = f"{expression} SET {assignment}".strip()
    return {
        **body,
        "UpdateExpression": expression,
        "ExpressionAttributeNames": {**body.get("ExpressionAttributeNames", {}), **_NAMES},
        "ExpressionAttributeValues": {
            **body.get("ExpressionAttributeValues", {}),
            ":rep_t": {"N": str(stamp[0])},
            ":rep_r": {"S": stamp[1]},
        },
    }


def stamp_of(image: dict[str, Any]) -> tuple[int, str] | None:
    """The (time, region) stamp of an item in DynamoDB's typed form, if it has one."""
    time_value, region_value = image.get(REPLICATION_TIME), image.get(REPLICATION_REGION)
    if not time_value or not region_value:
        return None
    return int(time_value["N"]), region_value["S"]
