"""`ledger serve --regions a,b,c`: one complete region per name, linked by a Global Tables-like replicator.

Each region gets what a single-region `serve` has, of its own: a DynamoDB Local
bound to loopback with its data in `<data dir>/<region>` and its write journal, a
composition root whose client stamps writes the way Global Tables does
(`replication.stamps`), the API on its own port (`--port`, `--port`+1, ...), and a
projector on its own events stream. One replicator (`replication.replicator`)
links them, its queue and stream checkpoints in `<data dir>/replication`, so a
restart loses nothing queued. A control loop thread steps it, applies what
`ledger regions partition|heal|lag` wrote to `control.json` there, and writes
`status.json` (queues, lags, partitions, projection lag) for `ledger regions status`
and `compare`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chalice.config import Config

from api.app import create_app
from composition.root import Root
from failover.lease import DEFAULT_LEASE_SECONDS, Lease
from failover.store import HeartbeatStore
from access.tokens import TokenCodec
from ledger.ids import format_rfc3339
from projections.schema import ProjectionTables
from projections.store import BalanceStore
from ledger.config import Settings, dynamodb_client, streams_client
from replication.queue import ShipmentQueue
from replication.replicator import Lag, Region, Replicator
from replication.stamps import HybridClock, Stamper

from . import discovery, status
from .dynamodb_local import DynamoDBLocal
from .http_server import create_server
from .journal import WriteJournal
from .poller import LOCAL_POLLER, StreamPoller, stream_arn_of
from .region_join import Joiner, read_added
from .tables import ensure_tables
from .tokens import operator_token, with_local_key

REPLICATION_DIR = "replication"
CONTROL_FILE = "control.json"
STATUS_FILE = "status.json"
JOURNAL_FILE = "write-journal.jsonl"


@dataclass
class ServedRegion:
    name: str
    root: Root
    database: DynamoDBLocal
    journal: WriteJournal
    api_url: str
    watermarks: BalanceStore  # over an unjournaled client: a watermark is rewritten every half second, and derived
    lease: Lease
    projector: StreamPoller | None = None


def read_control(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / CONTROL_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temp, path)


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def serve_regions(
    settings: Settings,
    names: list[str],
    *,
    host: str,
    port: int,
    data_dir: Path,
    projector: bool = True,
    lag: Lag = Lag(50.0, 50.0),
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    allow_exposed_dynamodb: bool = False,
) -> int:
    """Run every region until Ctrl-C or SIGTERM; every child process stops with us."""
    data_dir = data_dir.resolve()
    replication_dir = data_dir / REPLICATION_DIR
    replication_dir.mkdir(parents=True, exist_ok=True)
    settings = with_local_key(settings, data_dir)  # one key: a token works in every region
    names = [*names, *[n for n in read_added(replication_dir) if n not in names]]  # joined by `regions add` before
    urls = {name: f"http://{host}:{port + i}" for i, name in enumerate(names)}
    crashed = threading.Event()
    with ExitStack() as stack:
        regions: list[ServedRegion] = []
        links: list[Region] = []
        for name in names:
            served, link = _start_region(
                stack, settings, name, names, data_dir, urls, allow_exposed_dynamodb, crashed, lease_seconds
            )
            regions.append(served)
            links.append(link)
        replicator = Replicator(
            links, settings.tables, ShipmentQueue(replication_dir / "queue.sqlite"), replication_dir, lag=lag, log=_say
        )
        control = read_control(replication_dir)
        if "lag" not in control:
            write_json(replication_dir / CONTROL_FILE, {**control, "lag": {"fixed_ms": lag.fixed_ms, "jitter_ms": lag.jitter_ms}})
        if projector:
            for region in regions:
                region.projector = _start_projector(stack, region, data_dir / region.name)
        stop = threading.Event()

        def start_joining(name: str) -> tuple[ServedRegion, Region]:
            urls[name] = f"http://{host}:{port + len(urls)}"
            return _start_region(stack, settings, name, [*urls], data_dir, urls, allow_exposed_dynamodb, crashed, lease_seconds)

        def open_joined(region: ServedRegion) -> None:
            if projector:
                region.projector = _start_projector(stack, region, data_dir / region.name)
            for other in regions:
                other.lease.add_peer(region.name)
                other.root.ledger.add_region(region.name)
            _start_lease(stack, region, stop)
            _start_api(stack, region, settings, host)
            regions.append(region)
            state.regions[region.name] = _published(region)  # type: ignore[index]
            state.write(data_dir)

        joiner = Joiner(start_joining, open_joined, replication_dir, _say, stop)
        loop = threading.Thread(target=_control_loop, args=(replicator, regions, replication_dir, stop, joiner), daemon=True)
        loop.start()
        stack.callback(loop.join, 10)
        stack.callback(stop.set)
        for region in regions:
            _start_lease(stack, region, stop)
        _await_leases(regions, deadline=time.monotonic() + max(30.0, 3 * lease_seconds))
        for region in regions:
            _start_api(stack, region, settings, host)
        state = discovery.ServeState(
            pid=os.getpid(),
            endpoint_url=regions[0].database.endpoint_url,
            api_url=regions[0].api_url,
            stage=settings.stage,
            region=regions[0].name,
            journal=str(regions[0].journal.path),
            dynamodb_pid=regions[0].database.pid,
            regions={r.name: _published(r) for r in regions},
        )
        state.write(data_dir)
        stack.callback(discovery.remove, data_dir)
        status.publish(stack, data_dir, lambda: [status.region_figures(r.root, r.projector) for r in list(regions)])
        listing = ", ".join(f"{r.name} {r.api_url}" for r in regions)
        try:  # the ready line inside: a Ctrl-C the moment it is read is a clean stop too
            print(
                f"ledger ready: {len(regions)} regions: {listing} (DynamoDB Local per region, data in {data_dir}, "
                f"every acknowledged write journaled, replication lag {lag.fixed_ms:g} ms + up to {lag.jitter_ms:g} ms, "
                f"stage {settings.stage}). {_token_hint(settings)}Try: .venv/bin/ledger regions status",
                flush=True,
            )
            threading.Event().wait()
        except KeyboardInterrupt:
            _say("ledger: stopping")
    return 1 if crashed.is_set() else 0


def _token_hint(settings: Settings) -> str:
    if not settings.token_key:
        return ""
    return f"Operator token (every role, every account, 12 h): TOKEN={operator_token(TokenCodec(settings.token_key))} "


def _start_region(
    stack: ExitStack,
    settings: Settings,
    name: str,
    names: list[str],
    data_dir: Path,
    urls: dict[str, str],
    allow_exposed: bool,
    crashed: threading.Event,
    lease_seconds: float,
) -> tuple[ServedRegion, Region]:
    region_dir = data_dir / name
    database = stack.enter_context(DynamoDBLocal(data_dir=region_dir, allow_exposed=allow_exposed))
    local = replace(settings, region=name, regions=tuple(names), endpoint_url=database.endpoint_url)
    plain = dynamodb_client(local)
    created = ensure_tables(plain, local)
    if created:
        _say(f"{name}: created tables: {', '.join(created)}")
    journal = WriteJournal(region_dir / JOURNAL_FILE)
    report = journal.replay(plain)
    if report.reapplied:
        _say(f"{name}: recovered {report.reapplied} acknowledged write(s) that DynamoDB Local had lost in a crash")
    journal.attach(plain)  # the replicator's writes: what it applied must survive a crash too
    clock = HybridClock()
    stamped = Stamper(name, local.tables.replicated, clock).attach(dynamodb_client(local))
    journal.attach(stamped)  # after the stamper: the journal keeps the stamped request
    # Heartbeats: stamped so that they replicate, not journaled (a lost beat is a missed beat).
    beats = HeartbeatStore(Stamper(name, local.tables.replicated, clock).attach(dynamodb_client(local)), local.tables.regions)
    lease = Lease(name, names, beats, lease_seconds)
    root = Root(local, client=stamped, region_urls=urls, lease=lease, projection_writes="transactions")  # one disk commit for many
    _watch(database, name, crashed)
    watermarks = BalanceStore(dynamodb_client(local), ProjectionTables.for_stage(local.stage))
    served = ServedRegion(name, root, database, journal, urls[name], watermarks, lease)
    return served, Region(name, plain, streams_client(local), clock)


def _published(region: ServedRegion) -> dict[str, str]:
    """What serve.json says of a region, for the operator's commands."""
    return {
        "endpoint_url": region.database.endpoint_url,
        "api_url": region.api_url,
        "journal": str(region.journal.path),
        "dynamodb_pid": str(region.database.pid),
    }


def _start_lease(stack: ExitStack, region: ServedRegion, stop: threading.Event) -> None:
    settle = region.root.balance_store.settle_deferred
    beat = threading.Thread(target=region.lease.run, args=(stop, _say, settle), name=f"lease-{region.name}", daemon=True)
    beat.start()
    stack.callback(beat.join, 5)


def _start_api(stack: ExitStack, region: ServedRegion, settings: Settings, host: str) -> None:
    port = int(region.api_url.rsplit(":", 1)[1])
    server = create_server(create_app(region.root), Config(chalice_stage=settings.stage), host, port)
    thread = threading.Thread(target=server.serve_forever, name=f"api-{region.name}", daemon=True)
    thread.start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)


def _await_leases(regions: list[ServedRegion], deadline: float) -> None:
    """Until every region heard a peer (so that the ready line means writable), or the deadline."""
    while any(region.lease.fenced() for region in regions) and time.monotonic() < deadline:
        time.sleep(0.05)
    for region in regions:
        if region.lease.fenced():
            _say(f"ledger: {region.name} has not heard from a peer yet; it refuses writes (503 region_fenced) until it does")


def _watch(database: DynamoDBLocal, name: str, crashed: threading.Event) -> None:
    def watch() -> None:
        while not crashed.wait(0.5):
            status = database.exited()
            if status is not None and database.pid is not None:
                _say(f"ledger: DynamoDB Local of {name} exited unexpectedly (status {status}); stopping. Start again: "
                     "every acknowledged write is replayed from the journals")  # fmt: skip
                crashed.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name=f"dynamodb-local-watch-{name}", daemon=True).start()


def _start_projector(stack: ExitStack, region: ServedRegion, directory: Path) -> StreamPoller:
    settings = region.root.settings
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    poller = StreamPoller(
        streams_client(settings),
        stream_arn_of(region.root.dynamodb, settings.tables.events),
        region.root.stream_handler,
        checkpoint_path=directory / f"{settings.stage}-stream-checkpoint.json",
        dead_letter_path=directory / f"{settings.stage}-dead-letters.jsonl",
        config=LOCAL_POLLER,
        log=_say,
    )
    thread, stop = poller.start_thread()
    stack.callback(thread.join, 15)
    stack.callback(stop.set)
    return poller


def _control_loop(replicator: Replicator, regions: list[ServedRegion], directory: Path, stop: threading.Event, joiner: Joiner) -> None:
    """Step the replicator; apply the control file (and join the regions it asks for); publish the status."""
    seen_control: dict[str, Any] | None = None
    next_status = 0.0
    while not stop.is_set():
        try:
            joiner.register_pending(replicator)
            control = read_control(directory)
            if control != seen_control:
                seen_control = control
                joiner.request(list(control.get("add", [])), set(replicator.regions), replicator)
                replicator.partitions = {tuple(pair) for pair in control.get("partitions", [])}  # type: ignore[misc]
                lag = control.get("lag") or {}
                replicator.lag = Lag(float(lag.get("fixed_ms", replicator.lag.fixed_ms)), float(lag.get("jitter_ms", replicator.lag.jitter_ms)))
            moved = replicator.step()
            now = time.time()
            if now >= next_status:
                next_status = now + 0.5
                write_json(directory / STATUS_FILE, {**_status(replicator, regions, now), "joining": dict(joiner.joining)})
        except Exception as exc:  # noqa: BLE001 - the loop must survive a region's hiccup
            _say(f"replicator: {type(exc).__name__}: {exc}; retrying")
            moved = 0
        stop.wait(0.0 if moved else 0.05)


def _status(replicator: Replicator, regions: list[ServedRegion], now: float) -> dict[str, Any]:
    status = replicator.status(now)
    status["drained"] = replicator.drained()
    marks = replicator.watermarks()
    for region in regions:  # what each region's balance reads say about their freshness
        if marks[region.name]:
            region.watermarks.set_watermark(format_rfc3339(datetime.fromtimestamp(marks[region.name], timezone.utc)))
    status["watermarks"] = {name: mark for name, mark in marks.items()}
    projections = {}
    for region in regions:
        poller = region.projector
        caught_up = poller is None or poller.caught_up()
        behind = 0.0 if caught_up or not poller.last_delivered_at else max(0.0, now - poller.last_delivered_at)
        projections[region.name] = {
            "caught_up": caught_up,
            "lag_ms": round(behind * 1000, 1),
            "fenced": region.lease.fenced(),
            "excluded": sorted(region.lease.excluded),
            "excluded_by": sorted(region.lease.excluded_by),
        }
    status["projections"] = projections
    return status
