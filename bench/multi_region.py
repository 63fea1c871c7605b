"""Multi-region figures: replication lag, convergence after a partition, write units with replication, lost increments.

Starts `ledger serve --regions us-east-1,eu-west-1` (DynamoDB Local per region,
replication lag 0 + 0 ms, so what is measured is the replicator's own delay) and:

1. writes credits at `--rate` writes/s for `--seconds` to accounts homed in both
   regions (two HTTP clients), then reads the replication lag p50/p99 from
   `ledger regions status` (from each write's stamp to its application);
2. partitions both directions for `--partition-seconds` while writing at the same
   rate, heals, and times how long until `ledger regions compare` finds the
   regions equal;
3. times from the heal until `ledger regions reconcile` is clean, then a planned
   `ledger regions failover` of a busy account at the same rate (its phases, and
   what the writer was answered meanwhile);
4. works out write units per write with replication counted, from the exact items
   a credit and a transfer store (every replica pays a replicated write unit per KB
   of each item; transactions cost two per KB in the home region only);
5. runs the lost-increment scenario on the simulation's replicator (moto): a
   counter kept with ADD on a replicated item in both regions, beside the ledger's
   balances, under the same schedule.

    .venv/bin/python bench/multi_region.py                       # about 2 minutes
    .venv/bin/python bench/multi_region.py --rate 40 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import re
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

REGIONS = ("us-east-1", "eu-west-1")
LEDGER = str(Path(sys.executable).with_name("ledger"))


TOKEN = [""]  # serve's operator token, from its ready line


def headers(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Idempotency-Key": key, "Authorization": f"Bearer {TOKEN[0]}"}


def post(url: str, body: dict, key: str) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), headers(key), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def regions(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGER, "regions", *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300)


def write_at(apis: dict[str, str], rate: float, seconds: float, tag: str) -> int:
    """Credits at `rate` per second, split over both regions' own accounts; how many were acknowledged."""
    done = [0]
    stop_at = time.monotonic() + seconds

    def client(region: str, share: float) -> None:
        n, start = 0, time.monotonic()
        while time.monotonic() < stop_at:
            if post(f"{apis[region]}/accounts/acct-{region}/credits", {"amount": 1, "currency": "EUR"}, f"{tag}-{region}-{n}") == 201:
                done[0] += 1
            n += 1
            time.sleep(max(0.0, start + n / share - time.monotonic()))

    threads = [threading.Thread(target=client, args=(region, rate / len(apis))) for region in apis]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0]


def live_figures(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp()) / "data"
    log = data_dir.with_name("serve.log")
    process = subprocess.Popen(
        [LEDGER, "serve", "--regions", ",".join(REGIONS), "--lag-ms", "0", "--jitter-ms", "0", "--port", str(args.port),
         "--data-dir", str(data_dir), "--lease-seconds", "300"],  # a lease longer than the partition: 2 measures convergence
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "ledger ready" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("ledger serve did not start:\n" + log.read_text())
            time.sleep(0.2)
        TOKEN[0] = re.search(r"TOKEN=(\S+)", log.read_text()).group(1)
        apis = {region: f"http://127.0.0.1:{args.port + i}" for i, region in enumerate(REGIONS)}
        for region in REGIONS:
            assert post(f"{apis[region]}/accounts", {"account_id": f"acct-{region}", "currency": "EUR"}, f"open-{region}") == 201
        acked = write_at(apis, args.rate, args.seconds, "steady")
        regions(data_dir, "compare", "--timeout", "60")
        status = json.loads(regions(data_dir, "status", "--json").stdout)
        print(f"1. replication lag at {args.rate:g} writes/s for {args.seconds:g} s ({acked} credits, 2 regions, lag setting 0 + 0 ms):")
        for direction, figures in status["directions"].items():
            lag = figures["lag_ms"]
            print(f"   {direction:<22} p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms ({figures['delivered']} items)")
        regions(data_dir, "partition", "--between", *REGIONS)
        acked = write_at(apis, args.rate, args.partition_seconds, "split")
        healed = time.monotonic()
        regions(data_dir, "heal")
        compared = regions(data_dir, "compare", "--timeout", "120")
        took = time.monotonic() - healed
        verdict = "equal" if compared.returncode == 0 else "NOT EQUAL: " + compared.stdout[-300:]
        print(f"2. a partition of {args.partition_seconds:g} s at {args.rate:g} writes/s ({acked} credits on both sides):"
              f" {took:.1f} s from heal to every region {verdict}")  # fmt: skip
        reconciled = regions(data_dir, "reconcile", "--timeout", "120")
        print(f"   {time.monotonic() - healed:.1f} s from heal to `regions reconcile` clean (exit {reconciled.returncode}: "
              f"{reconciled.stdout.strip().splitlines()[-1] if reconciled.stdout.strip() else reconciled.stderr.strip()})")  # fmt: skip
        failover_figures(apis, data_dir, args.rate)
        writing = threading.Thread(target=write_at, args=(apis, args.rate, 20.0, "joining"))
        writing.start()
        joined = regions(data_dir, "add", "ap-southeast-1")
        writing.join()
        print(f"3b. `regions add ap-southeast-1` while writing at {args.rate:g} writes/s: "
              f"{(joined.stdout.strip().splitlines() or [joined.stderr.strip()])[-1]}")
        write_units(data_dir)
    finally:
        process.send_signal(2)
        process.wait(timeout=60)


def failover_figures(apis: dict[str, str], data_dir: Path, rate: float) -> None:
    """A planned fail-over of us-east-1's account while a client writes to it at `rate`, routed as a router would."""
    answers: dict[str, int] = {}
    stop = threading.Event()
    home = ["us-east-1"]

    def client() -> None:
        n, start = 0, time.monotonic()
        while not stop.is_set():
            n += 1
            key = f"moving-{n}"
            while not stop.is_set():  # the same key until it is recorded
                request = urllib.request.Request(f"{apis[home[0]]}/accounts/acct-us-east-1/credits", json.dumps({"amount": 1, "currency": "EUR"}).encode(),
                                                 headers(key), method="POST")  # fmt: skip
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        answers["201"] = answers.get("201", 0) + 1
                        break
                except urllib.error.HTTPError as refused:
                    body = json.load(refused)
                    answers[f"{refused.code} {body['code']}"] = answers.get(f"{refused.code} {body['code']}", 0) + 1
                    if refused.code == 421:
                        home[0] = body["home_region"]
                    else:
                        time.sleep(0.05)
            time.sleep(max(0.0, start + n / rate - time.monotonic()))

    writer = threading.Thread(target=client)
    writer.start()
    time.sleep(2)
    began = time.monotonic()
    moved = regions(data_dir, "failover", "--from", "us-east-1", "--to", "eu-west-1", "--accounts", "acct-us-east-1")
    took = time.monotonic() - began
    time.sleep(2)
    stop.set()
    writer.join()
    phases = [line for line in moved.stdout.splitlines() if ": done in" in line]
    print(f"3. a planned fail-over of one account written at {rate:g} writes/s: {took:.2f} s for the command "
          f"({'; '.join(phases)}); answers to the writer meanwhile and 2 s either side: {answers}")


def write_units(data_dir: Path) -> None:
    """WCU of one credit's items in the home region (transactional) and in each other replica (replicated)."""
    import boto3

    from write_path import index_entry_size, index_layouts, item_size, kb_units

    from ledger.config import Settings
    from ledger.service import escape_scope

    state = json.loads((data_dir / "serve.json").read_text())
    home = state["regions"][REGIONS[0]]["endpoint_url"]
    client = boto3.client("dynamodb", endpoint_url=home, region_name=REGIONS[0], aws_access_key_id="x", aws_secret_access_key="x")
    account = client.get_item(TableName="dev-ledger-accounts", Key={"account_id": {"S": f"acct-{REGIONS[0]}"}})["Item"]
    event = client.query(
        TableName="dev-ledger-events", KeyConditionExpression="entity_id = :a", ScanIndexForward=False, Limit=1,
        ExpressionAttributeValues={":a": {"S": f"acct-{REGIONS[0]}"}},
    )["Items"][0]  # fmt: skip
    record = client.get_item(TableName="dev-ledger-idempotency", Key={"idempotency_id": {"S": f"key#{escape_scope(event['caller']['S'])}#{event['idempotency_key']['S']}"}})["Item"]
    items = {"event": event, "account": account, "idempotency record": record}
    layouts = index_layouts(Settings(stage="dev"))["dev-ledger-events"].values()
    indexes = sum(kb_units(index_entry_size(event, *layout)) for layout in layouts)  # written in every replica
    home_units = sum(2 * kb_units(item_size(item)) for item in items.values()) + indexes
    replica_units = sum(kb_units(item_size(item)) for item in items.values()) + indexes
    sizes = ", ".join(f"{name} {item_size(item)} B" for name, item in items.items())
    print(f"4. write units of one credit ({sizes}; stamps included):")
    for count in (1, 2, 3):
        print(f"   {count} region(s): {home_units + (count - 1) * replica_units} WCU "
              f"(home {home_units} transactional, each other replica {replica_units} replicated)")  # fmt: skip


def lost_increments() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1", AWS_ACCOUNT_ID_ENDPOINT_MODE="disabled", POWERTOOLS_METRICS_DISABLED="true")
    from moto import mock_aws

    from ledger.commands import MovementRequest, OpenAccountRequest
    from ledger.service import Caller
    from replication.replicator import Lag
    from replication.simulation import World

    with mock_aws():
        world = World(list(REGIONS), "naive", Path(tempfile.mkdtemp()), seed=7, lag=Lag(100, 0))
        east, west = (world.regions[name] for name in REGIONS)
        accounts = east.root.settings.tables.accounts
        east.root.ledger.open_account(Caller("t", "open"), OpenAccountRequest(account_id="shared", currency="EUR"))
        world.settle()
        increments = 100
        for n in range(increments):
            for region in (east, west):
                region.root.dynamodb.update_item(
                    TableName=accounts, Key={"account_id": {"S": "naive-counter"}},
                    UpdateExpression="ADD balance :n", ExpressionAttributeValues={":n": {"N": "1"}},
                )  # fmt: skip
            east.root.ledger.credit(Caller("t", f"c{n}"), "shared", MovementRequest(amount=1, currency="EUR"))
            if n % 5 == 4:
                world.advance(1.0)
                world.replicator.step()
        world.settle()
        counter = int(world.items(REGIONS[0], "accounts")["naive-counter"]["balance"]["N"])
        views = [world.balances(name)["shared"].balance for name in REGIONS]
        print(f"5. {2 * increments} increments, both regions at once (replication every 5): the naive ADD counter kept "
              f"{counter} ({2 * increments - counter} lost); the ledger's balance kept {views[0]} of {increments} "
              f"credits in each region ({increments - min(views)} lost)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second, over both regions")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--partition-seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args()
    live_figures(args)
    lost_increments()


if __name__ == "__main__":
    main()
