"""`ledger regions ...`: watch and steer the replicator of a running `ledger serve --regions`.

The commands find the serve through its data directory (`serve.json`), steer the
replicator through `replication/control.json` (partitions, lag) and read what it
publishes in `replication/status.json`. `compare` waits for replication and every
projector to drain, then reads every region directly and names each difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from audit.canonical import digest_of
from composition.root import Root
from failover.lease import IN_FLIGHT_SECONDS, wait_seconds
from failover.move import Move
from failover.reconcile import find as find_findings
from failover.reconcile import repair as repair_finding
from ledger.ids import format_rfc3339
from ledger.config import OPERATOR, Settings, dynamodb_client
from ledger.fold import Totals
from ledger.store import event_from_item
from replication.stamps import HybridClock, Stamper

from .discovery import ServeState
from .regions import CONTROL_FILE, REPLICATION_DIR, STATUS_FILE, read_control, write_json


_log = Logger(service="ledger-reconcile", stream=sys.stderr)


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
    print(f"{'region':<20} {'projection':<12} {'lag':>9}  {'replication watermark':<22} writes")
    for region, projection in published["projections"].items():
        mark = published.get("watermarks", {}).get(region)
        mark_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mark)) if mark else "-"
        writes = "FENCED" if projection.get("fenced") else "taken"
        if projection.get("excluded_by"):
            writes += f" (failed over from by {', '.join(projection['excluded_by'])})"
        if projection.get("excluded"):
            writes += f" (excludes {', '.join(projection['excluded'])})"
        print(f"{region:<20} {'caught up' if projection['caught_up'] else 'behind':<12} {projection['lag_ms']:>6.0f} ms  {mark_text:<22} {writes}")
    for name, info in published.get("joining", {}).items():
        if info["phase"] != "ready":
            print(f"{name} joining: {info['phase']}, {info['backfilled']} items backfilled")
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
                found.append(f"{label} of {key} differs: {_shown(values)}")
    for name in names:
        for account, totals in snapshots[name]["folds"].items():
            figures = (totals.balance, totals.credits, totals.debits, totals.event_count)
            view = snapshots[name]["balances"].get(account, (0, 0, 0, 0))
            if view != figures:
                found.append(f"balance of {account} in {name} is {view} (balance, credits, debits, events); its log folds to {figures}")
    return found


def _shown(values: dict[str, Any]) -> str:
    """Each region's version; of items, only the attributes that differ (every stamp in full, to see who wrote last)."""
    items = [v for v in values.values() if isinstance(v, dict)]
    if len(items) == len(values):
        names = sorted(set().union(*items))
        differing = [a for a in names if len({json.dumps(i.get(a), sort_keys=True) for i in items}) > 1]
        values = {n: {a: item.get(a, "absent") for a in differing} for n, item in values.items()}
    return "; ".join(f"{n}={_short(v)}" for n, v in values.items())


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


# -- fail-over ---------------------------------------------------------------------------


def _region_roots(state: ServeState) -> dict[str, Root]:
    """A root per region over the operator's client, stamped as that region's writes are (so they replicate)."""
    roots = {}
    names = tuple(state.regions or {})
    for name, place in (state.regions or {}).items():
        settings = Settings(stage=state.stage, region=name, endpoint_url=place["endpoint_url"], regions=names)
        client = Stamper(name, settings.tables.replicated, HybridClock()).attach(dynamodb_client(settings, OPERATOR))
        roots[name] = Root(settings, client=client)
    return roots


class _Phases:
    """Runs the command's phases, printing each with how long it took."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def run(self, name: str, step, *, timeout: float, what: str) -> None:
        began = time.monotonic()
        pending = step()
        while pending:
            if time.monotonic() - began > timeout:
                raise RegionsError(f"{name}: {what} still waiting after {timeout:g} s: {', '.join(sorted(pending)[:10])}")
            time.sleep(0.1)
            pending = step()
        print(f"{name}: done in {time.monotonic() - began:.2f} s", flush=True)


def _until_each(accounts: list[str], attempt) -> Any:
    """A phase step: try `attempt` on each account still pending; what is left is pending."""
    pending = set(accounts)

    def step() -> set[str]:
        for account in sorted(pending):
            if attempt(account):
                pending.discard(account)
        return pending

    return step


def failover(args: argparse.Namespace) -> int:
    state, _ = _served(args)
    _check_regions(state, args.source, args.dest)
    if args.source == args.dest:
        raise RegionsError("--from and --to name the same region")
    if args.override_lease and not args.force:
        raise RegionsError("--override-lease goes with --force (a planned fail-over waits for nothing it could skip)")
    roots = _region_roots(state)
    source, target = roots[args.source], roots[args.dest]
    move = Move(source, target, args.accounts, record_ttl_seconds=target.settings.idempotency_ttl_seconds)
    phases = _Phases()
    which = f"accounts matching {args.accounts!r}" if args.accounts else "every account"
    mode = "forced, lease overridden" if args.override_lease else "forced" if args.force else "planned"
    print(f"fail-over ({mode}) of {which} homed in {args.source} to {args.dest}", flush=True)
    try:
        moved = _forced(move, phases, args) if args.force else _planned(move, phases, args)
    except (BotoCoreError, ClientError) as exc:
        down = args.dest if args.force else f"{args.source} or {args.dest}"
        hint = "" if args.force else f"; if {args.source} is down, use --force"
        raise RegionsError(f"{down} did not answer ({exc}){hint}") from exc
    print(f"{len(moved)} account(s) now homed in {args.dest} in {time.monotonic() - phases.started:.2f} s" + (f": {', '.join(moved[:10])}" + (" ..." if len(moved) > 10 else "") if moved else ""))
    return 0


def _planned(move: Move, phases: _Phases, args: argparse.Namespace) -> list[str]:
    source, target = move.source, move.target
    _readmit(source, target, phases, args.timeout)
    chosen = move.select(source.event_store.accounts())
    ids = [a.account_id for a in chosen]
    print(f"fence: {len(ids)} account(s) in {move.source_name}; from now on both regions refuse their writes (503 account_moving) until the open", flush=True)

    def fence(account_id: str) -> bool:
        account = source.event_store.get_account(account_id)
        if account is None or not move.select([account]):
            return True  # moved meanwhile by another command: not ours
        return move.fence(account)

    phases.run("fence", _until_each(ids, fence), timeout=args.timeout, what="accounts being written")
    ids = [i for i in ids if i in move.epochs]
    print(f"replicate: waiting until {move.target_name} holds every event and live idempotency record {move.source_name} holds for them", flush=True)
    phases.run("replicate", _until_each(ids, lambda a: move.replicated(a, time.time())), timeout=args.timeout, what="not yet replicated")
    print(f"open: recompute each available balance from {move.target_name}'s log, then take writes there", flush=True)
    phases.run("open", _until_each(ids, move.open), timeout=args.timeout, what="projector still folding")

    def redirects(account_id: str) -> bool:  # the old home names the new one (421) once the open reached it
        account = source.event_store.get_account(account_id)
        return account is None or (account.home_region == move.target_name and account.moving_from is None)

    print(f"settle: waiting until {move.source_name} holds the open (from then on it answers 421 naming {move.target_name})", flush=True)
    phases.run("settle", _until_each(ids, redirects), timeout=args.timeout, what="open not replicated back yet")
    return ids


def _readmit(source: Root, target: Root, phases: _Phases, timeout: float) -> None:
    """Failing back to a region excluded by a forced fail-over: lift the exclusion once its replica caught up."""
    name, back = source.settings.region, target.settings.region
    _, exclusions = source.heartbeats.read()
    if back not in exclusions.get(name, set()):
        return
    print(f"readmit: {back} was failed over from by force; waiting until its replica holds {name}'s accounts", flush=True)

    def caught_up() -> set[str]:
        theirs = {a.account_id: a for a in target.event_store.accounts()}
        return {
            a.account_id
            for a in source.event_store.accounts()
            if a.home_region == name
            and (a.account_id not in theirs or (theirs[a.account_id].home_region, theirs[a.account_id].write_epoch) != (a.home_region, a.write_epoch))
        }

    phases.run("readmit", caught_up, timeout=timeout, what="account items not yet replicated")
    source.heartbeats.set_exclusions(name, exclusions.get(name, set()) - {back})

    lifted_at = time.time()

    def still_fenced() -> set[str]:  # until it says, in a beat after the lift, that it takes writes again
        beats, _ = target.heartbeats.read()
        own = beats.get(back)
        return set() if own is not None and own.beat_at > lifted_at and not own.fenced else {back}

    phases.run("lift", still_fenced, timeout=timeout, what="still fenced:")


def _forced(move: Move, phases: _Phases, args: argparse.Namespace) -> list[str]:
    target = move.target
    if args.override_lease:
        print(f"lease: not waited for (--override-lease): {move.source_name}, if alive, may write until the split heals", flush=True)
    else:
        print(f"lease: waiting until nobody has heard {move.source_name} for its lease time plus {IN_FLIGHT_SECONDS:g} s", flush=True)

        def lease_running() -> set[str]:
            beats, _ = target.heartbeats.read()
            return {move.source_name} if wait_seconds(beats, move.source_name, time.time(), move.target_name) > 0 else set()

        phases.run(
            "lease", lease_running, timeout=args.timeout,
            what=f"{move.source_name} may still be heard (by {move.target_name}, or by a region {move.target_name} cannot hear itself;"
            " with two regions there is no witness: heal, or --override-lease)",
        )  # fmt: skip
    _, exclusions = target.heartbeats.read()
    target.heartbeats.set_exclusions(move.target_name, exclusions.get(move.target_name, set()) | {move.source_name})
    print(f"exclude: {move.target_name} no longer waits to hear {move.source_name}; {move.source_name} stays fenced once it hears this", flush=True)
    chosen = move.select(target.event_store.accounts())
    ids = [a.account_id for a in chosen]
    print(f"take over: {len(ids)} account(s), available recomputed from {move.target_name}'s log", flush=True)

    def take(account_id: str) -> bool:
        account = target.event_store.get_account(account_id)
        if account is None or not move.select([account]):
            return True  # taken over by an earlier round, or moved by another command: not pending
        return move.take_over(account)

    phases.run("take over", _until_each(ids, take), timeout=args.timeout, what="projector still folding")
    return ids


# -- reconcile ---------------------------------------------------------------------------


def reconcile(args: argparse.Namespace) -> int:
    state, directory = _served(args)
    wait_drained(directory, args.timeout)
    roots = _region_roots(state)
    findings = find_findings(next(iter(roots.values())))
    open_findings = [f for f in findings if not f.reviewed]
    counts = Counter(f.kind for f in open_findings)
    for finding in findings:
        state_word = "reviewed" if finding.reviewed else "FINDING"
        print(f"{state_word} {finding.kind} {finding.account_id}: {finding.detail}")
        if not finding.reviewed:
            _log.warning("reconciliation finding", extra={"kind": finding.kind, "account_id": finding.account_id, "finding": finding.key, "detail": finding.detail})
    _emit_metrics(counts)
    if not open_findings:
        print(f"nothing to reconcile across {len(roots)} regions" + (f" ({len(findings)} reviewed before)" if findings else ""))
        return 0
    if not args.repair:
        print(f"{len(open_findings)} finding(s): " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + "; run with --repair to act")
        return 1
    now = format_rfc3339(datetime.now(timezone.utc))
    for finding in open_findings:
        done = repair_finding(finding, roots, now)
        _log.info("reconciliation repair", extra={"kind": finding.kind, "account_id": finding.account_id, "finding": finding.key, "repair": done})
        print(f"repaired {finding.kind} {finding.account_id}: {done}")
    print(f"{len(open_findings)} finding(s) repaired; `ledger regions reconcile` again, once replicated, finds none")
    return 0


def _emit_metrics(counts: Counter) -> None:
    """One CloudWatch embedded-metric document per run on stderr: findings by kind (zero too)."""
    metrics = Metrics(namespace="DynamoLedger", service="ledger-reconcile")
    for kind in ("overwritten_guard", "stale_epoch", "duplicate_key", "overdraft"):
        metrics.add_metric(name=f"ReconcileFindings_{kind}", unit=MetricUnit.Count, value=counts.get(kind, 0))
    print(json.dumps(metrics.serialize_metric_set(), separators=(",", ":")), file=sys.stderr)
    metrics.clear_metrics()


# -- adding a region ---------------------------------------------------------------------


def add(args: argparse.Namespace) -> int:
    state, directory = _served(args)
    name = args.region
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}", name):
        raise RegionsError(f"{name!r} is not a region name such as ap-southeast-1")
    if name in (state.regions or {}):
        raise RegionsError(f"{name} is a region of this serve already")
    requested = time.time()
    _update_control(directory, lambda control: control.update(add=sorted({*control.get("add", []), name})))
    print(f"adding {name}: its DynamoDB and tables, new writes queued for it, a backfill from every region, "
          f"its projector, a digest comparison; it takes writes once that agrees", flush=True)  # fmt: skip
    deadline = time.monotonic() + args.timeout
    said = None
    while time.monotonic() < deadline:
        try:
            published = _status(directory)
        except RegionsError:
            published = {}
        info = published.get("joining", {}).get(name) if published.get("at", 0) > requested else None
        if info:
            line = f"{info['phase']} ({info['backfilled']} items backfilled)"
            if line != said:
                print(line, flush=True)
                said = line
            if info["phase"] == "ready":
                took = info["ready_at"] - info["started_at"]
                rate = info["backfilled"] / info["backfill_seconds"] if info.get("backfill_seconds") else 0.0
                print(f"{name} joined in {took:.1f} s: {info['backfilled']} items backfilled in {info['backfill_seconds']} s "
                      f"({rate:.0f} items/s); accounts may be homed there now")  # fmt: skip
                return 0
            if info["phase"].startswith("failed"):
                raise RegionsError(f"{name} could not join: {info['phase']}")
        time.sleep(0.2)
    raise RegionsError(f"{name} had not joined after {args.timeout:g} s (last: {said or 'not started'})")
