"""Projection benchmark against a real DynamoDB Local: write units per event, and lag.

1. Write units per applied event. Events are recorded through the real `Ledger` over
   a mix of accounts (uniform over the first count, Zipf s=1.2 over the others), then
   projected in ULID order in batches of 100 by the real `Projector` and
   `BalanceStore`: one conditional write of the balance item per account and batch
   (a transaction only for a credit recorded in another home, none here). The figure
   that matters is computed from AWS's rules on the exact items: 1 WCU per started KB
   of the larger of an item's size before and after a single-item write, 2 per KB in
   a transaction, refused writes included (sizes probed with an unmetered client
   around every write). DynamoDB Local's own report is printed next to it. The
   marker-plus-`ADD` projector this replaced cost 3.83 WCU per event uniformly over
   1,000 accounts (one transaction of two items per event).
2. Lag. A `StreamPoller` (the one `ledger serve` runs, same settings) feeds the real
   stream handler while credits are recorded at a steady rate; for each, the time
   from the write's return until `GET balance` (consistent) shows it.

Assumption: events are recorded back to back (a few hundred per second), so a batch
of 100 spans well under a second, as a busy stream's batches do. A slow trickle
spreads an account's events over more ~1 s dedupe windows, which costs more per event.

    .venv/bin/python bench/projection.py                       # about three minutes
    .venv/bin/python bench/projection.py --events 300 --accounts 200 --lag-seconds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from write_path import Meter, item_size, kb_units  # noqa: E402

from composition.root import Root  # noqa: E402
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest  # noqa: E402
from ledger.config import Settings, dynamodb_client, streams_client  # noqa: E402
from ledger.service import Caller, Ledger  # noqa: E402
from projections.projector import Projector  # noqa: E402
from runtime.dynamodb_local import DynamoDBLocal, ensure_installed  # noqa: E402
from runtime.poller import StreamPoller, stream_arn_of  # noqa: E402
from runtime.serve import _LOCAL_POLLER  # noqa: E402
from runtime.tables import ensure_tables  # noqa: E402

CURRENCY = "EUR"
BATCH = 100


class SizedClient:
    """Passes calls through; around each write, adds up AWS's write units per item (refused writes too)."""

    def __init__(self, real: Any, probe: Any) -> None:
        self._real, self._probe = real, probe
        self.transactions = 0
        self.refused = 0
        self.items = 0
        self.theory_wcu = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _sizes(self, items: list[dict[str, Any]]) -> list[int]:
        sizes = []
        for item in items:
            (body,) = item.values()
            found = self._probe.get_item(TableName=body["TableName"], Key=body["Key"], ConsistentRead=True).get("Item")
            sizes.append(item_size(found) if found else 0)
        return sizes

    def _single(self, method: Any, request: dict[str, Any], key: dict[str, Any]) -> Any:
        """A single-item write: 1 WCU per started KB of the larger size, charged refused or not (as AWS does)."""
        probe = {"TableName": request["TableName"], "Key": key}
        before = self._sizes([{"Get": probe}])[0]
        self.transactions += 1
        try:
            return method(**request)
        except Exception:
            self.refused += 1
            raise
        finally:
            after = self._sizes([{"Get": probe}])[0]
            self.items += 1
            self.theory_wcu += kb_units(max(before, after, 1))

    def update_item(self, **request: Any) -> Any:
        return self._single(self._real.update_item, request, request["Key"])

    def put_item(self, **request: Any) -> Any:
        key = {name: request["Item"][name] for name in ("pk",) if name in request["Item"]}
        return self._single(self._real.put_item, request, key)

    def transact_write_items(self, **request: Any) -> Any:
        items = request["TransactItems"]
        before = self._sizes(items)
        self.transactions += 1
        try:
            response = self._real.transact_write_items(**request)
        except Exception:
            self.refused += 1
            raise
        after = self._sizes(items)
        self.items += len(items)
        self.theory_wcu += sum(2 * kb_units(max(b, a)) for b, a in zip(before, after))
        return response


def zipf_accounts(count: int, s: float, rng: random.Random, draws: int) -> list[str]:
    weights = [1 / (k**s) for k in range(1, count + 1)]
    return rng.choices([f"acct-{k:03d}" for k in range(1, count + 1)], weights=weights, k=draws)


def record(ledger: Ledger, accounts: int, writes: int, rng: random.Random, uniform: bool = False) -> None:
    keys = iter(range(10**9))

    def caller() -> Caller:
        return Caller("bench", f"k{next(keys)}")

    for k in range(1, accounts + 1):
        ledger.open_account(caller(), OpenAccountRequest(account_id=f"acct-{k:03d}", currency=CURRENCY, allow_overdraft=True))
    names = [f"acct-{k:03d}" for k in range(1, accounts + 1)]
    picks = rng.choices(names, k=2 * writes) if uniform else zipf_accounts(accounts, 1.2, rng, 2 * writes)
    for n in range(writes):
        source, target = picks[2 * n], picks[2 * n + 1]
        amount = rng.randint(1, 10_000)
        if n % 5 == 0 and source != target:
            ledger.transfer(caller(), TransferRequest(from_account=source, to_account=target, amount=amount, currency=CURRENCY))
        elif n % 2:
            ledger.credit(caller(), source, MovementRequest(amount=amount, currency=CURRENCY))
        else:
            ledger.debit(caller(), source, MovementRequest(amount=amount, currency=CURRENCY))


def all_events(ledger: Ledger) -> list:
    events = [e for account in ledger.account_ids() for e in ledger.full_history(account)]
    return sorted(events, key=lambda e: e.event_id)  # the stream's order, near enough


def project(settings: Settings, client: Any, probe: Any, events: list) -> dict[str, Any]:
    """Project `events` into the (fresh) balances table of `settings`; openings first, unmeasured.

    Accounts are normally opened long before their traffic, so the burst of
    openings at the start is projected as a warm-up and left out of the figures.
    """
    ensure_tables(client, settings)
    openings = [e for e in events if e.type == "account.opened"]
    events = [e for e in events if e.type != "account.opened"]
    for start in range(0, len(openings), BATCH):
        Projector(Root(settings, client=client).balance_store, workers=1).project(openings[start : start + BATCH])
    sized = SizedClient(client, probe)
    meter = Meter(client, capacity=True)
    store = Root(settings, client=sized).balance_store
    projector = Projector(store, workers=1)  # one at a time: the probes around each write then see only it
    groups: list[int] = []
    windows: list[int] = []
    started = time.perf_counter()
    for start in range(0, len(events), BATCH):
        batch = events[start : start + BATCH]
        by_account = Counter(e.entity_id for e in batch)
        groups.extend(by_account.values())
        report = projector.project(batch)
        assert not report.failed, report.failed
    elapsed = time.perf_counter() - started
    reported = sum(units for table, units in meter.units.items() if table.endswith("-ledger-balances"))
    return {
        "events": len(events),
        "transactions": sized.transactions,
        "refused": sized.refused,
        "items": sized.items,
        "theory": sized.theory_wcu,
        "reported": reported,
        "requests": sum(meter.sends.get(op, 0) for op in ("TransactWriteItems", "UpdateItem", "PutItem")),
        "groups": groups,
        "windows": windows,
        "seconds": elapsed,
    }


def print_units(results: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\n1. Write units per applied event: batches of {BATCH}, account openings excluded, no metadata")
    print(f"   {'mix':>22} {'events':>7} | {'writes/ev':>9} {'WCU/ev':>7} {'Local':>6} {'events/group':>12} {'singletons':>10}")
    for mix, grouped in results:
        n, groups = grouped["events"], grouped["groups"]
        print(
            f"   {mix:>22} {n:>7} | {grouped['transactions'] / n:>9.3f} {grouped['theory'] / n:>7.2f} "
            f"{grouped['reported'] / n:>6.2f} {statistics.mean(groups):>12.2f} {sum(1 for g in groups if g == 1) / len(groups):>9.0%}"
        )
    print(
        "   writes/ev: write requests to the balances table per event (one per account and batch). WCU/ev: AWS's\n"
        "   rules on the exact items (1 per started KB of a single-item write, 2 in a transaction). Local: what\n"
        "   DynamoDB Local reports (here for transactions only: 0 when there are none). Before (marker item + ADD in one transaction): 3.83 WCU/ev uniform over 1,000."
    )


def measure_lag(settings: Settings, client: Any, seconds: float, rate: float, accounts: int) -> dict[str, Any]:
    ensure_tables(client, settings)
    ledger = Root(settings, client=client).ledger
    store = Root(settings, client=client).balance_store
    names = [f"lag-{k}" for k in range(accounts)]
    for name in names:
        ledger.open_account(Caller("lag", f"open-{name}"), OpenAccountRequest(account_id=name, currency=CURRENCY))
    with tempfile.TemporaryDirectory() as scratch:
        poller = StreamPoller(
            streams_client(settings),
            stream_arn_of(client, settings.tables.events),
            Root(settings, client=client).stream_handler,
            checkpoint_path=Path(scratch) / "checkpoint.json",
            dead_letter_path=Path(scratch) / "dead.jsonl",
            config=_LOCAL_POLLER,
            log=lambda _line: None,
        )
        thread, stop = poller.start_thread()
        pending: list[tuple[str, int, float]] = []
        lags: list[float] = []
        lock = threading.Lock()
        expected = Counter({name: 1 for name in names})  # the opening
        done = threading.Event()

        def watch() -> None:
            while not (done.is_set() and not pending):
                with lock:
                    waiting = list(pending)
                for account, count, returned in waiting:
                    view = store.get(account, consistent=True)
                    if view and view.event_count >= count:
                        lags.append(time.perf_counter() - returned)
                        with lock:
                            pending.remove((account, count, returned))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        rng = random.Random(3)
        interval, n = 1 / rate, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            account = rng.choice(names)
            ledger.credit(Caller("lag", f"c{n}"), account, MovementRequest(amount=1, currency=CURRENCY))
            expected[account] += 1
            with lock:
                pending.append((account, expected[account], time.perf_counter()))
            n += 1
            time.sleep(interval)
        done.set()
        watcher.join(timeout=60)
        stop.set()
        thread.join(timeout=15)
    lags.sort()
    return {"writes": n, "lags": lags}


def print_lag(result: dict[str, Any], rate: float) -> None:
    lags = result["lags"]
    p = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000  # noqa: E731
    config = _LOCAL_POLLER
    print(f"\n2. Local lag, write returned -> balance shows it ({result['writes']} credits at {rate:.0f}/s)")
    print(
        f"   poller: batch {config.batch_size}, batching window {config.batching_window_seconds} s, "
        f"idle sleep {config.idle_sleep_seconds} s"
    )
    print(f"   p50 {p(0.50):.0f} ms   p99 {p(0.99):.0f} ms   max {lags[-1] * 1000:.0f} ms   (seen {len(lags)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1500, help="writes per account mix (transfers add a second event)")
    parser.add_argument("--accounts", default="50,200,1000", help="Zipf mixes: account counts, comma-separated")
    parser.add_argument("--uniform", type=int, default=1000, help="the uniform mix's account count")
    parser.add_argument("--lag-seconds", type=float, default=8.0)
    parser.add_argument("--lag-rate", type=float, default=20.0, help="credits per second during the lag run")
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    ensure_installed()
    with DynamoDBLocal() as database:
        def settings(stage: str) -> Settings:
            return Settings(stage=stage, endpoint_url=database.endpoint_url)

        client = dynamodb_client(settings("bench"))
        probe = dynamodb_client(settings("bench"))
        results = []
        mixes = [(args.uniform, True)] + [(int(a), False) for a in args.accounts.split(",")]
        for accounts, uniform in mixes:
            source = settings(f"{'u' if uniform else 'z'}{accounts}")
            ensure_tables(client, source)
            ledger = Root(source, client=client).ledger
            started = time.perf_counter()
            record(ledger, accounts, args.events, random.Random(42), uniform=uniform)
            events = all_events(ledger)
            print(f"recorded {len(events)} events on {accounts} accounts in {time.perf_counter() - started:.1f} s", flush=True)
            mix = f"{'uniform' if uniform else 'Zipf 1.2'} over {accounts:,}"
            results.append((mix, project(source, client, probe, events)))
        print_units(results)
        print_lag(measure_lag(settings("lag"), client, args.lag_seconds, args.lag_rate, 20), args.lag_rate)


if __name__ == "__main__":
    main()
