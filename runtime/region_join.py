"""`ledger regions add C` on the serve side: a region joins a running `serve --regions` while writes go on.

What Global Tables does when a replica is added to a non-empty table, in order:
1. start C's DynamoDB Local and create its tables; C takes no write yet;
2. register C with the replicator, so every write captured from now on is queued
   for it too;
3. backfill C from every existing replica (a write captured before step 2 is in its
   own region's table at least), item by item under last-writer-wins by the original
   write time: a newer version that replication delivered meanwhile is never
   overwritten, and an event is written once;
4. start C's projector (it folds the backfilled events like any others), its lease
   and its API;
5. compare per-account event digests with a peer, up to the instant both hold every
   write of the others (their replication watermarks), until they agree, and wait
   until every peer has heard it (its lease);
6. only then let C take writes and home accounts: its gate opens, the other regions
   learn its name, `serve.json` lists it, and `replication/added.json` keeps it for
   the next start.
Each step's progress is published in the replicator's status (`regions status`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from audit.canonical import digest_of
from ledger.errors import RegionFenced
from ledger.ids import ulid_time
from ledger.store import event_from_item
from replication.replicator import LEDGER_TABLES, Region, Replicator

ADDED_FILE = "added.json"


def read_added(directory: Path) -> list[str]:
    """The regions added to this data directory's serve by `regions add` (they start with it again)."""
    try:
        return list(json.loads((directory / ADDED_FILE).read_text()))
    except (FileNotFoundError, ValueError):
        return []


class Joiner:
    """Joins requested regions, one thread each; the control loop hands it the replicator between steps."""

    def __init__(
        self,
        start: Callable[[str], tuple[Any, Region]],
        open_region: Callable[[Any], None],
        directory: Path,
        log: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        self._stop = stop
        self._start = start  # name -> (ServedRegion, replicator link): DynamoDB Local, tables, root
        self._open = open_region  # ServedRegion -> projector, lease, API, serve.json
        self._directory = directory
        self._log = log
        self._links: list[tuple[Region, threading.Event]] = []
        self._lock = threading.Lock()
        self.joining: dict[str, dict[str, Any]] = {}

    def request(self, names: list[str], present: set[str], replicator: Replicator) -> None:
        for name in names:
            if name not in present and name not in self.joining:
                self.joining[name] = {"phase": "starting", "backfilled": 0, "started_at": time.time()}
                threading.Thread(target=self._join, args=(name, replicator), name=f"join-{name}", daemon=True).start()

    def register_pending(self, replicator: Replicator) -> None:
        """Called by the thread that steps the replicator: add the regions whose DynamoDB is up."""
        with self._lock:
            links, self._links = self._links, []
        for link, done in links:
            replicator.add_region(link)
            done.set()

    def _join(self, name: str, replicator: Replicator) -> None:
        info = self.joining[name]
        try:
            peers = [n for n in replicator.regions if n != name]
            served, link = self._start(name)
            ready = threading.Event()

            def gate() -> None:
                if not ready.is_set():
                    raise RegionFenced(f"{name} is joining ({info['phase']}); it takes writes once it holds every other region's", region=name)

            served.root.admission = gate
            info["phase"] = "replicating new writes"
            registered = threading.Event()
            with self._lock:
                self._links.append((link, registered))
            registered.wait()
            info["phase"] = "backfilling"
            began = time.monotonic()
            for source in peers:
                for logical in LEDGER_TABLES:
                    start: dict[str, Any] | None = None
                    while True:
                        count, start = replicator.backfill(name, source, logical, start)
                        info["backfilled"] += count
                        if start is None:
                            break
            info["backfill_seconds"] = round(time.monotonic() - began, 2)
            self._open(served)
            info["phase"] = "comparing with " + peers[0]
            _until_equal(replicator, served.root, peers[0], name)
            info["phase"] = "waiting for its lease"
            deadline = time.monotonic() + 120
            while served.lease.fenced() and time.monotonic() < deadline:  # every peer has heard it
                time.sleep(0.1)
            ready.set()
            info["phase"] = "ready"
            info["ready_at"] = time.time()
            added = read_added(self._directory)
            (self._directory / ADDED_FILE).write_text(json.dumps([*added, name] if name not in added else added))
            self._log(f"ledger: {name} joined ({info['backfilled']} items backfilled in {info['backfill_seconds']} s) at {served.api_url}")
        except Exception as exc:  # noqa: BLE001 - reported through the status, and the log
            info["phase"] = f"failed: {type(exc).__name__}: {exc}"
            self._log(f"ledger: {name} could not join: {exc}")
        finally:
            # This thread started the region's DynamoDB Local, whose parent-death signal follows the
            # starting thread, not the process: it lives as long as serve does.
            self._stop.wait()


def _until_equal(replicator: Replicator, root: Any, peer: str, name: str, timeout: float = 300.0) -> None:
    """Until the new region's events equal the peer's, per account, up to both their replication watermarks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks = replicator.watermarks()
        cutoff = min(marks.get(name) or 0.0, marks.get(peer) or 0.0)
        if cutoff and _digests(replicator.regions[name].client, root, cutoff) == _digests(replicator.regions[peer].client, root, cutoff):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{name}'s events did not match {peer}'s within {timeout:g} s")


def _digests(client: Any, root: Any, cutoff: float) -> dict[str, tuple[str, int]]:
    events: dict[str, list] = defaultdict(list)
    for page in client.get_paginator("scan").paginate(TableName=root.settings.tables.events, ConsistentRead=True):
        for item in page["Items"]:
            event = event_from_item(item)
            if ulid_time(event.event_id).timestamp() <= cutoff:
                events[event.entity_id].append(event)
    return {account: digest_of(sorted(listed, key=lambda e: e.event_id)) for account, listed in events.items()}
