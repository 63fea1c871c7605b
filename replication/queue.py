"""The replicator's durable queue: every captured write, per destination region, until it is applied.

A shipment is one item's new image (or its deletion) bound for one region. It is
written here before the stream checkpoint that captured it moves on, and removed
only after it was applied, so a crash or restart of the replicator loses nothing; it
may apply a shipment twice, which last-writer-wins makes harmless. Per item, source
and destination, only the newest due version leaves, and that source's older ones
are dropped with it: an item is never replaced by an older version of itself (per-item
order, as Global Tables keeps it), and a hot item updated many times a second costs
one write per round, not one per update. Versions of one item from different sources
all leave, and last-writer-wins picks among them where they land: capture order says
nothing about which was written last, so dropping one source's version for another's
could lose the newest in a third region for good. Different items leave in any order.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    dest TEXT NOT NULL,
    table_name TEXT NOT NULL,
    item_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    image TEXT NOT NULL,
    stamp_time INTEGER NOT NULL,
    stamp_region TEXT NOT NULL,
    due_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS per_source_item ON shipments (source, dest, table_name, item_key, id);
"""


@dataclass(frozen=True)
class Shipment:
    id: int
    source: str
    dest: str
    table: str
    key: dict[str, Any]
    kind: str  # "put" or "delete"
    image: dict[str, Any]  # the item (put) or the deleted item as it was (delete), typed
    stamp_time: int  # microseconds, the original write's time
    stamp_region: str  # the original write's region
    due_at: float


class ShipmentQueue:
    def __init__(self, path: Path | str = ":memory:", durable: bool = True) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if str(path) != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            self._db.executescript(_SCHEMA)

    def put(self, shipments: Iterable[tuple[str, str, str, dict[str, Any], str, dict[str, Any], int, str, float]]) -> None:
        """Enqueue (source, dest, table, key, kind, image, stamp time, stamp region, due) rows in one commit."""
        rows = [
            (source, dest, table, _key(key), kind, json.dumps(image, sort_keys=True), stamp_time, stamp_region, due)
            for source, dest, table, key, kind, image, stamp_time, stamp_region, due in shipments
        ]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO shipments (source, dest, table_name, item_key, kind, image, stamp_time, stamp_region, due_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute("COMMIT")

    def ready(self, now: float) -> list[Shipment]:
        """Per item, source and destination, the newest shipment that is due."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, source, dest, table_name, item_key, kind, image, stamp_time, stamp_region, due_at"
                " FROM shipments s WHERE due_at <= ? AND id = (SELECT MAX(id) FROM shipments t WHERE t.source = s.source"
                " AND t.dest = s.dest AND t.table_name = s.table_name AND t.item_key = s.item_key AND t.due_at <= ?)",
                (now, now),
            ).fetchall()
        return [_shipment(row) for row in rows]

    def done(self, shipments: list[Shipment]) -> None:
        """Forget applied shipments and their sources' older versions of their items, in one commit."""
        if not shipments:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM shipments WHERE source = ? AND dest = ? AND table_name = ? AND item_key = ? AND id <= ?",
                [(s.source, s.dest, s.table, _key(s.key), s.id) for s in shipments],
            )
            self._db.execute("COMMIT")

    def pending(self) -> dict[tuple[str, str], int]:
        """How many ledger items wait, per (source, destination); heartbeats (`regions`) never stop coming, so never count."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, dest, COUNT(*) FROM shipments WHERE table_name <> 'regions' GROUP BY source, dest"
            ).fetchall()
        return {(source, dest): count for source, dest, count in rows}

    def oldest_pending(self) -> dict[tuple[str, str], int]:
        """The stamp (microseconds) of the oldest ledger write still waiting, per (source, destination)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, dest, MIN(stamp_time) FROM shipments WHERE table_name <> 'regions' GROUP BY source, dest"
            ).fetchall()
        return {(source, dest): oldest for source, dest, oldest in rows}

    def next_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(due_at) FROM shipments").fetchone()
        return row[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _key(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def _shipment(row: tuple) -> Shipment:
    id_, source, dest, table, key, kind, image, stamp_time, stamp_region, due = row
    return Shipment(id_, source, dest, table, json.loads(key), kind, json.loads(image), stamp_time, stamp_region, due)
