"""`ledger regions ...`: watch and steer the replicator of a running `ledger serve --regions`.

The commands find the serve through its data directory (`serve.json`), steer the
replicator through `replication/control.json` (partitions, lag) and read what it
publishes in `replication/status.json`. `compare` waits for replication and every
projector to drain, then reads every region directly and names each difference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from audit.canonical import digest_of
from composition.root import Root
from ledger.config import OPERATOR, Settings, dynamodb_client
from ledger.fold import Totals
from ledger.store import event_from_item

from .discovery import ServeState
from .regions import CONTROL_FILE, REPLICATION_DIR, STATUS_FILE, read_control, write_json


class RegionsError(Exception):
    """The command cannot do what was asked (no multi-region serve, unknown region, a timeout)."""


def _served(args: argparse.Namespace) -> tuple[ServeState, Path]:
    state = ServeState.read(args.data_dir)
    if not state.regions:
        raise RegionsError(f"the `ledger serve` of {args.data_dir} runs one region; start it with --regions a,b[,c]")
    return state, Path(args.data_dir) / REPLICATION_DIR


def _check_regions(state: ServeState, *names: str) -> None:
    unknown = [name for name in names if name not in (state.regions or {})]
    if unknown:
        raise RegionsError(f"no region {', '.join(unknown)} here; the regions are {', '.join(state.regions or {})}")


def _update_control(directory: Path, change) -> dict[str, Any]:
    control = read_control(directory)
    change(control)
    write_json(directory / CONTROL_FILE, control)
    return control


def partition(args: argparse.Namespace) -> int:
    state, directory = _served(args)
    if bool(args.between) == bool(args.source or args.dest) or (not args.between and not (args.source and args.dest)):
        raise RegionsError("name one direction with --from A --to B, or both with --between A B")
    pairs = [(args.source, args.dest)] if not args.between else [tuple(args.between), tuple(reversed(args.between))]
    _check_regions(state, *{name for pair in pairs for name in pair})

    def cut(control: dict[str, Any]) -> None:
        current = {tuple(pair) for pair in control.get("partitions", [])}
        control["partitions"] = sorted(current | set(pairs))

    control = _update_control(directory, cut)
    print("partitioned: " + ", ".join(f"{a}->{b}" for a, b in control["partitions"]))
    return 0


def heal(args: argparse.Namespace) -> int:
    state, directory = _served(args)
    if args.between:
        _check_regions(state, *args.between)

    def mend(control: dict[str, Any]) -> None:
        current = {tuple(pair) for pair in control.get("partitions", [])}
        if args.between:
            a, b = args.between
            current -= {(a, b), (b, a)}
        else:
            current = set()
        control["partitions"] = sorted(current)

    control = _update_control(directory, mend)
    left = control["partitions"]
    print("healed" + (f"; still partitioned: {', '.join(f'{a}->{b}' for a, b in left)}" if left else ": no partition left"))
    return 0


def lag(args: argparse.Namespace) -> int:
    _, directory = _served(args)
    if args.ms < 0 or args.jitter_ms < 0:
        raise RegionsError("lags are zero or more milliseconds")
    _update_control(directory, lambda control: control.update(lag={"fixed_ms": args.ms, "jitter_ms": args.jitter_ms}))
    print(f"replication lag: {args.ms:g} ms + up to {args.jitter_ms:g} ms of jitter")
    return 0


def _status(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise RegionsError("the replicator has not published its status yet; try again in a second") from exc


def status(args: argparse.Namespace) -> int:
    _, directory = _served(args)
    published = _status(directory)
    if args.json:
        print(json.dumps(published, indent=2, sort_keys=True))
        return 0
    print(f"{'direction':<34} {'queued':>7} {'delivered':>9} {'lag p50':>9} {'p99':>9} {'max':>9}  state")
    for direction, figures in published["directions"].items():
        lag_ms = figures["lag_ms"]
        cells = [f"{lag_ms[k]:.0f} ms" if lag_ms[k] is not None else "-" for k in ("p50", "p99", "max")]
        state = "PARTITIONED" if figures["partitioned"] else "replicating"
        print(f"{direction:<34} {figures['queued']:>7} {figures['delivered']:>9} {cells[0]:>9} {cells[1]:>9} {cells[2]:>9}  {state}")
    print(f"{'region':<20} {'projection':<12} {'lag':>9}  replication watermark")
    for region, projection in published["projections"].items():
        mark = published.get("watermarks", {}).get(region)
        mark_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mark)) if mark else "-"
        print(f"{region:<20} {'caught up' if projection['caught_up'] else 'behind':<12} {projection['lag_ms']:>6.0f} ms  {mark_text}")
    print("drained" if published.get("drained") else "replication in flight")
    return 0


def wait_drained(directory: Path, timeout: float) -> None:
    """Until the replicator and every projector say, after this call began, that nothing is in flight."""
    started = time.time()
    deadline = started + timeout
    while True:
        try:
            published = _status(directory)
        except RegionsError:
            published = {}
        if (
            published.get("at", 0) > started
            and published.get("drained")
            and all(p["caught_up"] for p in published.get("projections", {}).values())
        ):
            return
        if time.time() > deadline:
            partitioned = [d for d, f in published.get("directions", {}).items() if f.get("partitioned")]
            why = f"; partitioned: {', '.join(partitioned)} (heal first)" if partitioned else ""
            raise RegionsError(f"replication did not drain within {timeout:g} s{why}")
        time.sleep(0.2)


def _snapshot(root: Root) -> dict[str, Any]:
    tables = root.settings.tables
    events: dict[str, list] = {}
    for item in _scan(root.dynamodb, tables.events):
        event = event_from_item(item)
        events.setdefault(event.entity_id, []).append(event)
    for listed in events.values():
        listed.sort(key=lambda e: e.event_id)
    return {
        "events": {a: digest_of(listed) for a, listed in events.items()},
        "folds": {a: Totals.of(listed) for a, listed in events.items()},
        "accounts": {i["account_id"]["S"]: i for i in _scan(root.dynamodb, tables.accounts)},
        "idempotency": {i["idempotency_id"]["S"]: i for i in _scan(root.dynamodb, tables.idempotency)},
        "balances": {b.account_id: (b.balance, b.credits, b.debits, b.event_count) for b in root.balance_store.all_balances()},
    }


def _scan(client: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(page["Items"])
    return items


def differences(snapshots: dict[str, dict[str, Any]]) -> list[str]:
    """Every way the regions differ from each other, or a region's views from its own log."""
    found: list[str] = []
    names = sorted(snapshots)
    for part, label in (("events", "events (count, digest)"), ("accounts", "account item"), ("idempotency", "idempotency record")):
        keys = sorted(set().union(*(snapshots[n][part] for n in names)))
        for key in keys:
            values = {n: snapshots[n][part].get(key) for n in names}
            if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
                shown = "; ".join(f"{n}={_short(v)}" for n, v in values.items())
                found.append(f"{label} of {key} differs: {shown}")
    for name in names:
        for account, totals in snapshots[name]["folds"].items():
            figures = (totals.balance, totals.credits, totals.debits, totals.event_count)
            view = snapshots[name]["balances"].get(account, (0, 0, 0, 0))
            if view != figures:
                found.append(f"balance of {account} in {name} is {view} (balance, credits, debits, events); its log folds to {figures}")
    return found


def _short(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, tuple):
        return f"{value[1]} events, digest {value[0][:12]}"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) < 160 else text[:157] + "..."


def compare(args: argparse.Namespace) -> int:
    state, directory = _served(args)
    wait_drained(directory, args.timeout)
    snapshots = {}
    for name, place in (state.regions or {}).items():
        settings = Settings(stage=state.stage, region=name, endpoint_url=place["endpoint_url"])
        snapshots[name] = _snapshot(Root(settings, client=dynamodb_client(settings, OPERATOR)))
    found = differences(snapshots)
    for line in found:
        print(f"DIFF {line}")
    accounts = len(set().union(*(s["accounts"] for s in snapshots.values())))
    if found:
        print(f"{len(found)} difference(s) between {len(snapshots)} regions")
        return 1
    events = sum(count for _, count in next(iter(snapshots.values()))["events"].values())
    print(f"{len(snapshots)} regions agree: {accounts} account(s), {events} event(s), and every balance equals its log")
    return 0
