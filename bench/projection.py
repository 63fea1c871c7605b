"""Projection benchmark against a real DynamoDB Local: write units per event, throughput, and lag under load.

1. Write units per projected event. Events are recorded through the real `Ledger`
   (8 threads, back to back; credits, debits and transfers, no description or
   metadata; account ids `acct-0001`...) over an account mix: uniform over 1,000
   accounts, and Zipf s=1.2 over 50, 200 and 1,000. They are then projected in id
   order (the stream's order per account) in batches of 100 by the real `Projector`
   and `BalanceStore`. The figure that matters is computed from AWS's rules on the
   exact items: 1 WCU per started KB of the larger of an item's size before and
   after a write, 2 per KB in a transaction, refused writes included (sizes probed
   with an unmetered client around every write). DynamoDB Local's own report (it
   reports single-item writes by size and undercounts transactions) is printed too.
2. Throughput with no writers. The events of a mix (uniform and Zipf over 1,000
   accounts) are recorded into a `ledger serve --no-projector`; then `ledger serve`
   starts on the same data with its projector, which reads the stream from its trim
   horizon: events per second from its ready line until the newest event is
   projected (DynamoDB Local on disk, the write journal, serve's poller settings).
3. Lag at the highest write rate the local API sustains. `ledger serve` runs as a
   user starts it (DynamoDB Local, write journal, API and projector in one process);
   16 HTTP clients (keep-alive) POST credits as fast as they are answered over 1,000
   accounts, uniformly, for 60 s. Every tenth write of a client goes to a probe
   account only that client writes; a watcher reads the probes' balance items
   (consistent BatchGetItem, every 20 ms) and times each probe write from its 201
   until the balance counts it. Printed: the write rate, lag p50/p99/max over the
   run and per third of it (flat means the projector keeps up).

Everything shares the machine's cores: this process, `ledger serve` and DynamoDB Local. Parts 2 and 3
also print how many cores other processes used meanwhile (from /proc): on a shared machine their times
mean little without it.

    .venv/bin/python bench/projection.py                      # about 10 minutes
    .venv/bin/python bench/projection.py --events 300 --drain-events 600 --lag-seconds 10   # a smoke run
    .venv/bin/python bench/projection.py --parts 3            # only the lag under load
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from write_path import item_size, kb_units  # noqa: E402

from composition.root import Root  # noqa: E402
from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest  # noqa: E402
from ledger.config import Settings, dynamodb_client  # noqa: E402
from ledger.service import Caller, Ledger  # noqa: E402
from projections.projector import Projector  # noqa: E402
from runtime.dynamodb_local import DynamoDBLocal, ensure_installed  # noqa: E402
from runtime.tables import ensure_tables  # noqa: E402

CURRENCY = "EUR"
BATCH = 100
RECORDING_THREADS = 8
WRITE_PATH_WCU = 8  # a credit's own write: idempotency record, event and guard in a transaction, index entries (bench/write_path.py)


# -- what else the machine does ----------------------------------------------------------------


class OtherCpu:
    """CPU the machine spends outside this script and its children, from now on (Linux's /proc; None elsewhere)."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._start = self._sample()

    @staticmethod
    def _processes() -> dict[int, tuple[int, float]]:
        """pid -> (parent pid, CPU seconds so far)."""
        found: dict[int, tuple[int, float]] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                found[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        return found

    def _sample(self) -> tuple[float, dict[int, float]] | None:
        try:
            jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            processes = self._processes()
        except (OSError, ValueError, AttributeError):
            return None
        busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        ours, grew = {os.getpid()}, True
        while grew:
            children = {pid for pid, (parent, _) in processes.items() if parent in ours} - ours
            grew = bool(children)
            ours |= children
        return busy, {pid: processes[pid][1] for pid in ours if pid in processes}

    def cores(self) -> float | None:
        """How many cores' worth of CPU others used on average since this was made."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        (busy0, ours0), (busy1, ours1) = self._start, end
        mine = sum(cpu - ours0.get(pid, 0.0) for pid, cpu in ours1.items())
        return max(0.0, (busy1 - busy0 - mine) / max(time.monotonic() - self._wall, 1e-9))


def other_load(cores: float | None) -> str:
    return "other processes: not measured" if cores is None else f"other processes used {cores:.2f} of {os.cpu_count()} cores"


# -- 1. write units ---------------------------------------------------------------------------


class SizedClient:
    """Passes calls through; around each write, adds up AWS's write units from the items' sizes before and after."""

    def __init__(self, real: Any, probe: Any) -> None:
        self._real, self._probe = real, probe
        self.writes: Counter[str] = Counter()  # items written by operation (a transaction of two is two)
        self.requests = 0  # write requests (a transaction is one)
        self.refused = 0
        self.units = 0.0
        self.local_units = 0.0  # what DynamoDB Local reports for single-item writes
        self.largest_item = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _size(self, table: str, key: dict[str, Any]) -> int:
        found = self._probe.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        return item_size(found) if found else 0

    def _measured(self, operation: str, bodies: list[tuple[str, dict[str, Any]]], call: Any, per_kb: int) -> Any:
        keys = [(table, key) for table, key in bodies]
        before = [self._size(table, key) for table, key in keys]
        try:
            response = call()
        except Exception:
            with self._lock:
                self.writes[operation] += len(bodies)
                self.requests += 1
                self.refused += 1
                self.units += sum(per_kb * kb_units(b) for b in before)  # a refused write is paid too
            raise
        after = [self._size(table, key) for table, key in keys]
        with self._lock:
            self.writes[operation] += len(bodies)
            self.requests += 1
            self.units += sum(per_kb * kb_units(max(b, a)) for b, a in zip(before, after))
            self.largest_item = max([self.largest_item, *after])
            capacity = response.get("ConsumedCapacity")
            if isinstance(capacity, dict):
                self.local_units += capacity.get("CapacityUnits", 0.0)
        return response

    @staticmethod
    def _key(body: dict[str, Any]) -> dict[str, Any]:
        if "Key" in body:
            return body["Key"]
        item = body["Item"]
        return {"pk": item["pk"]} if "pk" in item else {"account_id": item["account_id"]}

    def transact_write_items(self, **request: Any) -> Any:
        bodies = [next(iter(item.values())) for item in request["TransactItems"]]
        keys = [(body["TableName"], self._key(body)) for body in bodies]
        return self._measured("TransactWriteItems", keys, lambda: self._real.transact_write_items(**request), 2)

    def put_item(self, **request: Any) -> Any:
        call = lambda: self._real.put_item(**request, ReturnConsumedCapacity="TOTAL")  # noqa: E731
        return self._measured("PutItem", [(request["TableName"], self._key(request))], call, 1)

    def update_item(self, **request: Any) -> Any:
        call = lambda: self._real.update_item(**request, ReturnConsumedCapacity="TOTAL")  # noqa: E731
        return self._measured("UpdateItem", [(request["TableName"], request["Key"])], call, 1)


def account_names(count: int) -> list[str]:
    return [f"acct-{k:04d}" for k in range(1, count + 1)]


def picks_of(mix: tuple[str, int], rng: random.Random, draws: int) -> list[str]:
    kind, count = mix
    names = account_names(count)
    if kind == "uniform":
        return rng.choices(names, k=draws)
    weights = [1 / (k**1.2) for k in range(1, count + 1)]
    return rng.choices(names, weights=weights, k=draws)


def record(ledger: Ledger, mix: tuple[str, int], writes: int, rng: random.Random) -> float:
    """Open the mix's accounts and record `writes` credits, debits and transfers; return the events per second."""
    keys = iter(range(10**9))
    lock = threading.Lock()

    def caller() -> Caller:
        with lock:
            return Caller("bench", f"k{next(keys)}")

    def open_one(name: str) -> None:
        ledger.open_account(caller(), OpenAccountRequest(account_id=name, currency=CURRENCY, allow_overdraft=True))

    picks = picks_of(mix, rng, 2 * writes)
    plan = [(picks[2 * n], picks[2 * n + 1], rng.randint(1, 10_000), n) for n in range(writes)]

    def write(step: tuple[str, str, int, int]) -> int:
        source, target, amount, n = step
        if n % 5 == 0 and source != target:
            ledger.transfer(caller(), TransferRequest(from_account=source, to_account=target, amount=amount, currency=CURRENCY))
            return 2
        if n % 2:
            ledger.credit(caller(), source, MovementRequest(amount=amount, currency=CURRENCY))
        else:
            ledger.debit(caller(), source, MovementRequest(amount=amount, currency=CURRENCY))
        return 1

    with ThreadPoolExecutor(RECORDING_THREADS) as pool:
        list(pool.map(open_one, account_names(mix[1])))
        started = time.perf_counter()
        events = sum(pool.map(write, plan))
    return events / (time.perf_counter() - started)


def all_events(ledger: Ledger) -> list:
    events = [e for account in ledger.account_ids() for e in ledger.full_history(account)]
    return sorted(events, key=lambda e: e.event_id)  # each account's events in stream order


def project_units(settings: Settings, client: Any, probe: Any, events: list) -> dict[str, Any]:
    """Project `events` (openings first, unmeasured: accounts open long before their traffic) into a fresh view."""
    openings = [e for e in events if e.type == "account.opened"]
    events = [e for e in events if e.type != "account.opened"]
    warm = Projector(Root(settings, client=client).balance_store)
    for start in range(0, len(openings), BATCH):
        warm.project(openings[start : start + BATCH])
    sized = SizedClient(client, probe)
    projector = Projector(Root(settings, client=sized).balance_store)  # a new process: it knows no balance item yet
    groups: list[int] = []
    for start in range(0, len(events), BATCH):
        batch = events[start : start + BATCH]
        groups.extend(Counter(e.entity_id for e in batch).values())
        report = projector.project(batch)
        assert not report.failed, report.failed
    return {"events": len(events), "sized": sized, "groups": groups}


def print_units(results: list[tuple[str, float, dict[str, Any]]]) -> None:
    print(f"\n1. Write units per projected event: batches of {BATCH} in stream order, account openings excluded")
    print(
        f"   {'mix':>15} {'recorded/s':>10} {'events':>6} | {'events/group':>12} {'requests/ev':>11} {'item writes/ev':>14} "
        f"{'in tx':>5} {'refused':>7} | {'WCU/ev':>6} {'Local':>5} | {'largest item':>12} | {'a credit, end to end':>20}"
    )
    for label, rate, result in results:
        n, sized = result["events"], result["sized"]
        writes = sum(sized.writes.values())
        print(
            f"   {label:>15} {rate:>10.0f} {n:>6} | {statistics.mean(result['groups']):>12.2f} {sized.requests / n:>11.3f} "
            f"{writes / n:>14.3f} {sized.writes['TransactWriteItems'] / n:>5.2f} {sized.refused:>7} | {sized.units / n:>6.2f} "
            f"{(f'{sized.local_units / n:.2f}' if sized.local_units else '-'):>5} | {sized.largest_item:>10} B | "
            f"{WRITE_PATH_WCU + sized.units / n:>14.2f} WCU"
        )
    print(
        "   WCU/ev: AWS's rules on the exact items (1 per started KB of the larger of before and after, 2 per KB in a\n"
        "   transaction, refused writes included). Local: what DynamoDB Local reports (it undercounts transactions).\n"
        "   requests/ev: write requests (a transaction is one); item writes/ev: items written (each item of a transaction).\n"
        f"   A credit end to end: its own write ({WRITE_PATH_WCU} WCU, bench/write_path.py) plus its projection. Account ids\n"
        "   of 9 characters, events without description or metadata (neither is in the balance item: the item's size\n"
        "   depends on the account id's length and the figures, at most 1 KB with a 64-character id)."
    )


# -- 2. throughput with no writers ---------------------------------------------------------------


SENTINEL = "zz-last"


def drain_rate(mix: tuple[str, int], writes: int, rng: random.Random) -> dict[str, Any]:
    """Record a mix into a `ledger serve` that does not project, then start it with its projector: events per second
    from its ready line until the newest event is projected (the projector reads the stream from its trim horizon)."""
    from runtime.dynamodb_local import pick_free_port

    with tempfile.TemporaryDirectory() as scratch:
        data, port = Path(scratch) / "data", pick_free_port()
        served = Served(data, port, "--no-projector")
        try:
            settings = Settings(endpoint_url=served.dynamodb)  # serve's stage and region
            client = dynamodb_client(settings)
            ledger = Root(settings, client=client).ledger
            record(ledger, mix, writes, rng)
            ledger.open_account(Caller("bench", "sentinel"), OpenAccountRequest(account_id=SENTINEL, currency=CURRENCY))
            records = sum(1 for _ in _scan_keys(client, settings.tables.events))
        finally:
            served.stop()
        served = Served(data, port)
        started = time.perf_counter()
        other = OtherCpu()
        try:
            reader = dynamodb_client(Settings(endpoint_url=served.dynamodb))
            balances = "dev-ledger-balances"
            deadline = started + 900
            while "Item" not in reader.get_item(TableName=balances, Key={"pk": {"S": f"balance#{SENTINEL}"}}, ConsistentRead=True):
                if time.perf_counter() > deadline:
                    raise RuntimeError("the projector did not catch up within 900 s")
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            load = other.cores()
        finally:
            served.stop()
    return {"records": records, "seconds": elapsed, "others": load}


def _scan_keys(client: Any, table: str) -> Any:
    request: dict[str, Any] = {"TableName": table, "ProjectionExpression": "entity_id", "ConsistentRead": True}
    while True:
        page = client.scan(**request)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def print_drain(results: list[tuple[str, dict[str, Any]]]) -> None:
    print("\n2. Throughput with no writers: `ledger serve` (DynamoDB Local on disk, journal) started on a stream it has")
    print("   not projected, from its ready line until the newest event is projected")
    for label, result in results:
        print(
            f"   {label:>15}: {result['records']} events in {result['seconds']:.1f} s = {result['records'] / result['seconds']:.0f} events/s"
            f" ({other_load(result['others'])})"
        )


# -- 3. lag under load -------------------------------------------------------------------------


READY = re.compile(r"ledger ready: API (http://\S+) \(DynamoDB Local at (http://[\d.]+:\d+).*?TOKEN=(\S+)")


class Served:
    """`ledger serve` from this source tree, as a subprocess, on a fresh data directory."""

    def __init__(self, data_dir: Path, port: int, *options: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        env["PYTHONPATH"] = str(ROOT)
        env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "serve", "--port", str(port), "--data-dir", str(data_dir), *options],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.output: list[str] = []
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            if match := READY.search(line):
                self.api, self.dynamodb, self.token = match.group(1), match.group(2), match.group(3)
                break
        else:
            raise RuntimeError("ledger serve stopped before it was ready:\n" + "".join(self.output))
        threading.Thread(target=lambda: [self.output.append(line) for line in self.process.stdout], daemon=True).start()  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if os.environ.get("BENCH_SERVE_OUTPUT"):  # what `ledger serve` said, less the API's line per write
            print("".join(line for line in self.output if '"recorded"' not in line), file=sys.stderr)


class HttpClient:
    """One keep-alive connection to the API (for setting up)."""

    def __init__(self, api: str, token: str) -> None:
        url = urlparse(api)
        self._token = token
        self._connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)

    def post(self, path: str, body: dict[str, Any], key: str) -> int:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, "Authorization": f"Bearer {self._token}"}
        for attempt in range(2):
            try:
                self._connection.request("POST", path, body=data, headers=headers)
                response = self._connection.getresponse()
                response.read()
                return response.status
            except (http.client.HTTPException, OSError):
                self._connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


def measure_lag(seconds: float, clients: int, accounts: int, rate: float, drain_timeout: float) -> dict[str, Any]:
    from runtime.dynamodb_local import pick_free_port

    with tempfile.TemporaryDirectory() as scratch:
        served = Served(Path(scratch) / "data", pick_free_port())
        try:
            return _drive(served, seconds, clients, accounts, rate, drain_timeout)
        finally:
            served.stop()


def _writers(api: str, token: str, names: list[str], probes: list[str], seconds: float, rate: float, notices: Any) -> None:
    """The HTTP clients, in a process of their own: one thread, one event loop, a connection per client.

    One thread, so that a response is timed when it arrives, not when a thread gets the GIL back.
    Each probe write that was answered 201 is sent to `notices` as (probe, its count, answered at).
    """
    import asyncio

    url = urlparse(api)

    async def client(index: int, until: float) -> Counter[int]:
        rng = random.Random(index)
        statuses: Counter[int] = Counter()
        probe, written, n = probes[index], 1, 0
        interval = len(probes) / rate if rate else 0.0
        next_at = time.perf_counter()
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        while time.perf_counter() < until:
            to_probe = n % 10 == 9
            account = probe if to_probe else rng.choice(names)
            body = json.dumps({"amount": 1, "currency": CURRENCY}).encode()
            head = (
                f"POST /accounts/{account}/credits HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nIdempotency-Key: w{index}-{n}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            await reader.readexactly(length)
            answered = time.perf_counter()
            statuses[status] += 1
            if status == 201 and to_probe:
                written += 1
                notices.put((probe, written, answered))
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(url.hostname, url.port)
            n += 1
            if interval:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        writer.close()
        return statuses

    async def everyone() -> Counter[int]:
        until = time.perf_counter() + seconds
        total: Counter[int] = Counter()
        for statuses in await asyncio.gather(*(client(i, until) for i in range(len(probes)))):
            total.update(statuses)
        return total

    notices.put(("done", dict(asyncio.run(everyone())), time.perf_counter()))


def _drive(served: Served, seconds: float, clients: int, accounts: int, rate: float, drain_timeout: float) -> dict[str, Any]:
    import multiprocessing

    names = account_names(accounts)
    probes = [f"probe-{c:02d}" for c in range(clients)]
    balances = "dev-ledger-balances"  # serve's stage
    reader = dynamodb_client(Settings(endpoint_url=served.dynamodb))
    local = threading.local()

    def open_one(name: str) -> None:
        if not hasattr(local, "client"):
            local.client = HttpClient(served.api, served.token)
        status = local.client.post("/accounts", {"account_id": name, "currency": CURRENCY, "allow_overdraft": True}, f"open-{name}")
        assert status == 201, status

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(open_one, [*names, *probes]))

    def counts(accounts: list[str]) -> dict[str, int]:
        keys = [{"pk": {"S": f"balance#{a}"}} for a in accounts]
        request: dict[str, Any] = {balances: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "account_id, event_count"}}
        found: dict[str, int] = {}
        while request:
            response = reader.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(balances, []):
                found[item["account_id"]["S"]] = int(item["event_count"]["N"])
            request = response.get("UnprocessedKeys") or {}
        return found

    deadline = time.monotonic() + 120
    while len(counts(probes)) < len(probes):  # the openings are projected: the projector is running
        if time.monotonic() > deadline:
            raise RuntimeError("the projector did not project the openings within 120 s")
        time.sleep(0.2)

    notices = multiprocessing.get_context("spawn").Queue()
    writers = multiprocessing.get_context("spawn").Process(
        target=_writers, args=(served.api, served.token, names, probes, seconds, rate, notices), daemon=True
    )
    started = time.perf_counter()
    other = OtherCpu()
    writers.start()
    pending: dict[str, list[tuple[int, float]]] = {p: [] for p in probes}  # probe -> (its count then, answered at)
    lags: list[tuple[float, float]] = []  # (answered at, from the start; lag)
    statuses: dict[int, int] | None = None
    load: float | None = None
    stopped_at = float("inf")
    while True:  # the watcher: nothing else runs in this process meanwhile
        while not notices.empty():
            notice = notices.get()
            if notice[0] == "done":
                statuses, stopped_at = notice[1], notice[2]
                load = other.cores()
            else:
                probe, count, answered = notice
                pending[probe].append((count, answered))
        waiting = [p for p, items in pending.items() if items]
        if waiting:
            seen = counts(waiting)
            now = time.perf_counter()
            for probe in waiting:
                while pending[probe] and seen.get(probe, 0) >= pending[probe][0][0]:
                    _, answered = pending[probe].pop(0)
                    lags.append((answered - started, now - answered))
        elif statuses is not None:
            break
        if statuses is not None and time.perf_counter() - stopped_at > drain_timeout:
            break
        time.sleep(0.02)
    writers.join(timeout=30)
    left = sum(len(items) for items in pending.values())
    return {"statuses": Counter(statuses), "seconds": stopped_at - started, "lags": lags, "left": left, "run": seconds, "others": load}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_lag(result: dict[str, Any], clients: int, accounts: int, rate: float) -> None:
    ok = result["statuses"][201]
    others = {s: n for s, n in result["statuses"].items() if s != 201}
    print(
        f"\n3. Lag, a write's 201 -> its balance counts it: `ledger serve` (journal, API, projector), {clients} HTTP clients, "
        f"{'as fast as answered' if not rate else f'{rate:.0f} writes/s'}, credits over {accounts} accounts, uniformly"
    )
    print(f"   writes answered 201: {ok} in {result['seconds']:.1f} s = {ok / result['seconds']:.0f} writes/s" + (f"; other answers {others}" if others else ""))
    print("   (the clients: one process, one event loop, a keep-alive connection each; the watcher: this process, alone)")
    print(f"   while writing, {other_load(result['others'])}")
    lags = [lag for _, lag in result["lags"]]
    if not lags:
        print("   no probe write was seen projected")
        return
    ms = lambda v: f"{v * 1000:,.0f} ms"  # noqa: E731
    print(f"   lag over {len(lags)} probe writes: p50 {ms(percentile(lags, 0.5))}, p99 {ms(percentile(lags, 0.99))}, max {ms(max(lags))}")
    thirds = []
    for k in range(3):
        low, high = k * result["run"] / 3, (k + 1) * result["run"] / 3
        part = [lag for at, lag in result["lags"] if low <= at < high]
        if part:
            thirds.append(f"{ms(percentile(part, 0.5))} / {ms(percentile(part, 0.99))}")
    print(f"   p50 / p99 by third of the run (by write time): {'; '.join(thirds)}")
    if result["left"]:
        print(f"   {result['left']} probe writes still not projected when the watcher gave up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1500, help="writes per account mix in part 1 (transfers add a second event)")
    parser.add_argument("--mixes", default="uniform:1000,zipf:50,zipf:200,zipf:1000", help="account mixes for part 1")
    parser.add_argument("--drain-events", type=int, default=3000, help="writes recorded before part 2")
    parser.add_argument("--drain-mixes", default="uniform:1000,zipf:1000")
    parser.add_argument("--lag-seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--lag-accounts", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="writes per second in part 3 (0: as fast as answered)")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="part 3: how long to wait for the projector after writing")
    parser.add_argument("--parts", default="1,2,3")
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    parts = set(args.parts.split(","))
    mixes = lambda text: [(kind, int(count)) for kind, count in (m.split(":") for m in text.split(","))]  # noqa: E731
    label = lambda mix: f"{mix[0]} {mix[1]}"  # noqa: E731
    ensure_installed()
    if "1" in parts:
        with DynamoDBLocal() as database:  # in memory: write units do not depend on the disk
            def settings(stage: str) -> Settings:
                return Settings(stage=stage, endpoint_url=database.endpoint_url)

            client = dynamodb_client(settings("bench"))
            probe = dynamodb_client(settings("bench"))
            results = []
            for n, mix in enumerate(mixes(args.mixes)):
                source = settings(f"units{n}")
                ensure_tables(client, source)
                ledger = Root(source, client=client).ledger
                rate = record(ledger, mix, args.events, random.Random(42))
                results.append((label(mix), rate, project_units(source, client, probe, all_events(ledger))))
                print(f"part 1: {label(mix)} done", file=sys.stderr, flush=True)
            print_units(results)
    if "2" in parts:
        drained = []
        for mix in mixes(args.drain_mixes):
            drained.append((label(mix), drain_rate(mix, args.drain_events, random.Random(7))))
            print(f"part 2: {label(mix)} done", file=sys.stderr, flush=True)
        print_drain(drained)
    if "3" in parts:
        result = measure_lag(args.lag_seconds, args.clients, args.lag_accounts, args.rate, args.drain_timeout)
        print_lag(result, args.clients, args.lag_accounts, args.rate)


if __name__ == "__main__":
    main()
