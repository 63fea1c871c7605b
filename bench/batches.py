"""Batch benchmark: writes per second to ONE hot account, one operation per request versus batches.

Against a DynamoDB Local this script starts (in memory), through the real `Ledger`
(the code `POST /batches` calls): `--threads` writers credit one no-overdraft
account as fast as they are answered for `--seconds`, sending each request as

- one credit (`POST /accounts/{id}/credits`),
- an atomic batch of 10 credits, and of 25 (`POST /batches`, mode atomic).

Printed per size: credits recorded per second, requests per second, DynamoDB requests
per credit, write units per credit by AWS's rules on the exact items (2 per KB per
item in a transaction, 1 per index entry), how many transactions were cancelled by a
concurrent one and retried, and the ratio of credits per second to the single-credit
run, measured side by side in this run. Then the ceiling on AWS, where one item takes
about 1,000 write units a second: every request writes the account item once (2
units in a transaction), so one account takes at most about 500 requests a second,
whatever their size. The figures of one run are compared with each other, not with
another machine's.

Conditions: account id of 3 characters, Idempotency-Keys of 12 to 16, no description
or metadata, DynamoDB Local sharing the machine's cores with this process.

    .venv/bin/python bench/batches.py                 # about 1 minute
    .venv/bin/python bench/batches.py --seconds 3     # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # the API's metric lines are not figures
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from write_path import index_layouts, theory  # noqa: E402

from composition.root import Root  # noqa: E402
from ledger.commands import BatchRequest, MovementRequest, OpenAccountRequest  # noqa: E402
from ledger.config import Settings, dynamodb_client  # noqa: E402
from ledger.service import Caller, Ledger  # noqa: E402
from runtime.dynamodb_local import DynamoDBLocal, ensure_installed  # noqa: E402
from runtime.tables import ensure_tables  # noqa: E402

HOT = "hot"
CURRENCY = "EUR"
SIZES = (1, 10, 25)
PER_ITEM_WCU_PER_SECOND = 1000  # DynamoDB's per-partition (so per-item) write throughput


class Counting:
    """Counts the client's requests and transaction cancellations; keeps the last TransactWriteItems."""

    def __init__(self, client: Any) -> None:
        self.requests: Counter[str] = Counter()
        self.cancelled = 0
        self.last: dict[str, Any] | None = None
        self._lock = threading.Lock()
        client.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", self._keep)
        client.meta.events.register("after-call.dynamodb", self._count)

    def _keep(self, params: dict[str, Any], **_: Any) -> None:
        self.last = params

    def _count(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        with self._lock:
            self.requests[model.name] += 1
            if parsed.get("Error", {}).get("Code") == "TransactionCanceledException":
                self.cancelled += 1

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.cancelled = 0


def run(ledger: Ledger, counting: Counting, size: int, threads: int, seconds: float) -> dict[str, Any]:
    keys = itertools.count()
    lock = threading.Lock()
    credits = [0] * threads
    refused: Counter[str] = Counter()
    until = time.perf_counter() + seconds

    def key() -> str:
        with lock:
            return f"b{size}-{next(keys):09d}"

    def writer(index: int) -> None:
        while time.perf_counter() < until:
            caller = Caller("bench", key())
            try:
                if size == 1:
                    ledger.credit(caller, HOT, MovementRequest(amount=1, currency=CURRENCY))
                else:
                    operations = [{"type": "credit", "account_id": HOT, "amount": 1, "currency": CURRENCY}] * size
                    ledger.batch(caller, BatchRequest.model_validate({"mode": "atomic", "operations": operations}))
                credits[index] += size
            except Exception as exc:  # noqa: BLE001 - counted: a benchmark reports, it does not stop
                with lock:
                    refused[type(exc).__name__] += 1

    counting.reset()
    started = time.perf_counter()
    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    total = sum(credits)
    return {
        "size": size,
        "credits": total,
        "seconds": elapsed,
        "requests": dict(counting.requests),
        "cancelled": counting.cancelled,
        "refused": dict(refused),
        "last": counting.last,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per batch size")
    parser.add_argument("--threads", type=int, default=8, help="concurrent writers of the hot account")
    args = parser.parse_args()

    ensure_installed()
    with DynamoDBLocal() as ddb:
        settings = Settings(stage="bench", endpoint_url=ddb.endpoint_url)
        client = dynamodb_client(settings)
        ensure_tables(client, settings)
        counting = Counting(client)
        ledger = Root(settings, client=client).ledger
        ledger.open_account(Caller("bench", "open-hot"), OpenAccountRequest(account_id=HOT, currency=CURRENCY))
        account = client.get_item(TableName=settings.tables.accounts, Key={"account_id": {"S": HOT}}, ConsistentRead=True)["Item"]
        layouts = index_layouts(settings)
        print(f"DynamoDB Local at {ddb.endpoint_url}; {os.cpu_count()} CPUs shared by this process and DynamoDB Local")
        print(f"{args.threads} writers crediting one account ({HOT!r}, no overdraft) for {args.seconds:g} s per size;")
        print("keys of 12 to 16 characters, no description or metadata\n")
        results = [run(ledger, counting, size, args.threads, args.seconds) for size in SIZES]
        base = results[0]["credits"] / results[0]["seconds"]
        print(f"   {'credits/request':>15} | {'credits/s':>9} {'requests/s':>10} {'vs 1':>5} | {'DynamoDB req/credit':>19} "
              f"{'cancelled, retried':>18} | {'WCU/credit':>10} | {'AWS ceiling, one account':>24}")
        for r in results:
            rate = r["credits"] / r["seconds"]
            calls = sum(r["requests"].values())
            wcu = sum(row["wcu"] for row in theory(r["last"], {HOT: account}, layouts)) if r["last"] else 0
            ceiling = PER_ITEM_WCU_PER_SECOND // 2 * r["size"]
            print(f"   {r['size']:>15} | {rate:>9.0f} {rate / r['size']:>10.0f} {rate / base:>5.2f} | "
                  f"{calls / max(1, r['credits']):>19.3f} {r['cancelled']:>18} | {wcu / r['size']:>10.2f} | "
                  f"{ceiling:>15,} credits/s")
            if r["refused"]:
                print(f"   {'':>15}   refused: {r['refused']}")
        print("\n   AWS ceiling: the account item takes about 1,000 WCU/s; each request writes it once in a transaction")
        print("   (2 WCU), so about 500 requests/s reach one account, each carrying `credits/request` credits. Concurrent")
        print("   transactions on one item cancel each other (TransactionConflict, retried with backoff: `cancelled`), and")
        print("   a write overtaken by another is drafted again with ids above it: fewer, larger requests collide less.")


if __name__ == "__main__":
    main()
