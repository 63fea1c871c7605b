"""Point-in-time balance cost on one account, with and without checkpoints, on DynamoDB Local.

Seeds one account with N events spread evenly over `--days` past days (written
straight in the event store's item format with BatchWriteItem: a bench-only
shortcut; the service appends one transaction per write). One copy of the account
gets a checkpoint per closed day (`ledger audit close`), the other none. Then the
balance at random instants is computed both ways (`Checkpoints.fold_at`, what
`GET /accounts/{id}/balance?at=` runs), counting DynamoDB requests, read units
(ReturnConsumedCapacity, as DynamoDB Local reports them) and events folded.

    .venv/bin/python bench/point_in_time.py                    # 10,000 and 100,000 events, about 3 minutes
    .venv/bin/python bench/point_in_time.py --events 2000 --queries 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ulid  # noqa: E402

from audit.checkpoints import Checkpoints  # noqa: E402
from ledger.config import Settings, dynamodb_client  # noqa: E402
from ledger.events import AccountOpened, Credited, Debited  # noqa: E402
from ledger.ids import format_rfc3339  # noqa: E402
from ledger.store import EventStore, event_item  # noqa: E402
from runtime.dynamodb_local import DynamoDBLocal, ensure_installed  # noqa: E402
from runtime.tables import ensure_tables  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


class CountingClient:
    """Counts requests and the read units DynamoDB Local reports for queries."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.requests = 0
        self.read_units = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def query(self, **request: Any) -> Any:
        self.requests += 1
        response = self._real.query(**request, ReturnConsumedCapacity="TOTAL")
        self.read_units += response.get("ConsumedCapacity", {}).get("CapacityUnits", 0.0)
        return response


def seed(client: Any, table: str, account: str, count: int, days: int, rng: random.Random) -> datetime:
    """`count` events of `account` spread over `days` days from START; return the instant after the last."""
    step = timedelta(days=days) / count
    batch: list[dict[str, Any]] = []
    for n in range(count):
        when = START + step * n
        event_id = ulid.from_timestamp(when.timestamp()).str
        common = dict(
            entity_id=account, event_id=event_id, transaction_id=event_id, currency="EUR",
            recorded_at=format_rfc3339(when), region="us-east-1", idempotency_key=f"seed-{n}",
        )  # fmt: skip
        if n == 0:
            event = AccountOpened(**common, transaction_type="open", allow_overdraft=True)
        elif rng.random() < 0.6:
            event = Credited(**common, transaction_type="credit", amount=rng.randint(1, 10_000))
        else:
            event = Debited(**common, transaction_type="debit", amount=rng.randint(1, 10_000))
        batch.append({"PutRequest": {"Item": event_item(event)}})
        if len(batch) == 25 or n == count - 1:
            pending = {table: batch}
            while pending:
                pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            batch = []
    return START + timedelta(days=days)


def measure(store_client: Any, settings: Settings, account: str, instants: list[datetime]) -> dict[str, Any]:
    counting = CountingClient(store_client)
    checkpoints = Checkpoints(EventStore(counting, settings.tables, settings.region))
    requests, units, folded, seconds = [], [], [], []
    for moment in instants:
        counting.requests, counting.read_units = 0, 0.0
        started = time.perf_counter()
        before = checkpoints.before(account, moment)
        fold = checkpoints.fold_at(account, moment)
        seconds.append(time.perf_counter() - started)
        requests.append(counting.requests - 1)  # `before` was asked twice: once here, once inside
        units.append(counting.read_units)
        folded.append(fold.event_count - (before.event_count if before else 0))
    return {
        "requests": statistics.mean(requests),
        "units": statistics.mean(units),
        "folded": statistics.mean(folded),
        "ms": statistics.median(seconds) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="10000,100000", help="account sizes to compare, comma-separated")
    parser.add_argument("--days", type=int, default=100, help="days the events are spread over")
    parser.add_argument("--queries", type=int, default=5, help="random instants per size")
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    ensure_installed()
    rows = []
    with DynamoDBLocal() as database:
        settings = Settings(stage="pit", endpoint_url=database.endpoint_url)
        client = dynamodb_client(settings)
        ensure_tables(client, settings)
        rng = random.Random(5)
        for size in (int(s) for s in args.events.split(",")):
            with_name, without_name = f"with-{size}", f"without-{size}"
            started = time.perf_counter()
            end = seed(client, settings.tables.events, with_name, size, args.days, rng)
            seed(client, settings.tables.events, without_name, size, args.days, random.Random(5))
            seeded = time.perf_counter() - started
            started = time.perf_counter()
            closer = Checkpoints(EventStore(client, settings.tables, settings.region))
            written = closer.close(with_name, end)
            closing = time.perf_counter() - started
            print(f"{size} events: seeded both copies in {seeded:.0f} s; {written} checkpoints written in {closing:.1f} s", flush=True)
            instants = [START + (end - START) * rng.uniform(0.5, 1.0) for _ in range(args.queries)]
            rows.append((size, measure(client, settings, with_name, instants), measure(client, settings, without_name, instants)))
    print(f"\nBalance at a random instant in the second half of {args.days} days (mean over {args.queries} instants)")
    print(f"   {'events':>8} | {'with checkpoints: req':>22} {'RCU':>7} {'folded':>7} {'ms':>6} | {'without: req':>13} {'RCU':>7} {'folded':>7} {'ms':>7}")
    for size, with_, without in rows:
        print(
            f"   {size:>8} | {with_['requests']:>22.1f} {with_['units']:>7.1f} {with_['folded']:>7.0f} {with_['ms']:>6.1f} | "
            f"{without['requests']:>13.1f} {without['units']:>7.1f} {without['folded']:>7.0f} {without['ms']:>7.1f}"
        )
    print(
        "   req = DynamoDB requests (one checkpoint Query + event Query pages); RCU as DynamoDB Local reports\n"
        "   consistent queries (1 per 4 KB read); folded = events read and folded after the checkpoint.\n"
        "   With checkpoints the cost is bounded by one day's events, whatever the account's age."
    )


if __name__ == "__main__":
    main()
