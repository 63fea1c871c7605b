"""`ledger status`: what a running `serve` counted (the same figures it sends to CloudWatch), and the tables.

`serve` publishes its telemetry totals (`observability.telemetry`) and its stream
poller's counts to `status.json` in its data directory once a second; `ledger
status` reads that file (it finds the serve as every operator command does) and
adds what can be read from the tables themselves. Given an endpoint (or --aws)
instead, it reports the tables alone: on AWS, DescribeTable's item counts, which
DynamoDB refreshes about every six hours, so they are marked approximate.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from observability import telemetry as figures

STATUS_FILE = "status.json"
PUBLISH_SECONDS = 1.0

Figures = Callable[[], list[dict[str, Any]]]


def region_figures(root, poller=None) -> dict[str, Any]:
    """One region's figures: the API's and the projector's totals, and the local poller's counts."""
    projector = root.projector_telemetry.snapshot()
    if poller is not None:
        projector["totals"][figures.DEAD_LETTERS] = poller.stats.get("dead_lettered", 0)
        projector["poller"] = dict(poller.stats)
    return {"region": root.settings.region, "api": root.api_telemetry.snapshot(), "projector": projector}


def publish(stack: ExitStack, data_dir: Path, regions: Figures) -> None:
    """Write `status.json` every second until the stack unwinds (and once more then)."""
    path = Path(data_dir) / STATUS_FILE
    stop = threading.Event()

    def write() -> None:
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(json.dumps({"updated_at": time.time(), "regions": regions()}, indent=1) + "\n")
        os.replace(temp, path)

    def loop() -> None:
        while not stop.wait(PUBLISH_SECONDS):
            try:
                write()
            except Exception:  # noqa: BLE001 - a status file is not worth stopping the ledger for
                pass

    thread = threading.Thread(target=loop, name="status-publisher", daemon=True)
    thread.start()
    stack.callback(path.unlink, missing_ok=True)
    stack.callback(stop.set)


def add_parser(commands, endpoint_options: Callable[[argparse.ArgumentParser], None]) -> None:
    status = commands.add_parser("status", help="what the running serve counted (writes, replays, lag, alarms...) and the tables")
    endpoint_options(status)
    status.add_argument("--json", action="store_true", help="print the figures as JSON")
    status.set_defaults(handler=_status)


_API = [
    (figures.RECORDED, "writes recorded"), (figures.REPLAYED, "replayed"), (figures.KEY_MISMATCHES, "key mismatches"),
    (figures.CONFLICTS_RETRIED, "conflicts retried"), (figures.REDRAFTS, "redrafts"),
    (figures.STORE_UNAVAILABLE, "store unavailable"), (figures.REFUSALS, "refusals"),
]  # fmt: skip
_PROJECTOR = [
    (figures.PROJECTED, "events projected"), (figures.DUPLICATES, "duplicates skipped"),
    (figures.INTEGRITY_ALARMS, "integrity alarms"), (figures.DEAD_LETTERS, "dead letters"),
]  # fmt: skip


def _status(args: argparse.Namespace) -> int:
    from .cli import connect, settings_from
    from .discovery import ServeState

    local = not (args.endpoint_url or args.aws or os.environ.get("LEDGER_ENDPOINT_URL"))
    report: dict[str, Any] = {}
    if local:
        ServeState.read(args.data_dir)  # NoRunningServe: says how to start one
        try:
            report = json.loads((args.data_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            report = {"regions": []}  # just started: nothing published yet
    settings = settings_from(args)
    root = connect(args)
    report["tables"] = _tables(root.dynamodb, settings, exact=local or settings.is_local_endpoint)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    if "updated_at" in report:
        print(f"serve figures, updated {max(0.0, time.time() - report['updated_at']):.1f} s ago (totals since it started)")
    for region in report.get("regions", []):
        api, projector = region["api"]["totals"], region["projector"]
        print(f"{region['region']}")
        print("  api        " + ", ".join(f"{label} {api.get(name, 0)}" for name, label in _API))
        line = ", ".join(f"{label} {projector['totals'].get(name, 0)}" for name, label in _PROJECTOR)
        lag = projector.get("lag_ms")
        if lag:
            line += f", lag p50 {lag['p50']:g} ms p99 {lag['p99']:g} ms max {lag['max']:g} ms (last {lag['samples']} batches)"
        print("  projector  " + line)
    tables = report["tables"]
    print(f"tables ({'exact counts' if tables['exact'] else 'approximate counts, refreshed by DynamoDB about every 6 h'}, region {settings.region})")
    for name, count in tables["items"].items():
        print(f"  {name:<40} {count if count is not None else 'missing'}")
    return 0


def _tables(client: Any, settings, *, exact: bool) -> dict[str, Any]:
    from .tables import all_definitions

    definitions, _ = all_definitions(settings)
    items: dict[str, int | None] = {}
    for definition in definitions:
        name = definition["TableName"]
        try:
            if exact:  # a local table: count it
                total = 0
                for page in client.get_paginator("scan").paginate(TableName=name, Select="COUNT"):
                    total += page["Count"]
                items[name] = total
            else:
                items[name] = int(client.describe_table(TableName=name)["Table"].get("ItemCount", 0))
        except client.exceptions.ResourceNotFoundException:
            items[name] = None
    return {"exact": exact, "items": items}
