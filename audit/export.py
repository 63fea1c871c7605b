"""`ledger export`: stream matching events to a file, resumably, with a manifest.

JSONL lines are the canonical lines (`audit.canonical`), so the file is what the
digest is computed over. CSV has a fixed column order (`CSV_COLUMNS`), metadata as
a JSON string. Events come in `(event_id, entity_id)` order, so the last complete
line of a file is a resume point: an interrupted export started again with the
same query truncates a torn last line and continues after it. The query is kept
next to the file (`FILE.export.json`) until the export completes; then
`FILE.manifest.json` records the query, the count, the first and last event and
the SHA-256 of the file.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ledger.events import Event
from ledger.ids import format_rfc3339, time_range_bounds

from .canonical import canonical_fields, canonical_line, chain
from .timeline import Position, position_of

CSV_COLUMNS = [
    "event_id", "entity_id", "transaction_id", "type", "transaction_type", "amount", "currency", "recorded_at",
    "region", "idempotency_key", "counterparty", "allow_overdraft", "reverses", "description", "metadata",
    "schema_version", "write_epoch", "available_pending",
    # Added later, at the end so earlier columns keep their places: who wrote it, moves of homes, freezes,
    # the operation of a batch.
    "caller", "from_region", "forced", "status", "batch_operation",
]  # fmt: skip

Source = Callable[[Position | None], Iterator[Event]]


class ExportError(Exception):
    """The export cannot start as asked (another query's partial file, say)."""


@dataclass(frozen=True)
class Query:
    accounts: tuple[str, ...]  # empty: every account
    start: datetime | None
    end: datetime | None
    format: str

    def to_json(self) -> dict[str, Any]:
        return {
            "accounts": list(self.accounts) or "all",
            "from": format_rfc3339(self.start) if self.start else None,
            "to": format_rfc3339(self.end) if self.end else None,
            "format": self.format,
        }


def account_source(store: Any, accounts: tuple[str, ...], start: datetime | None, end: datetime | None) -> Source:
    """Events of the given accounts in [start, end], merged in timeline order (consistent reads)."""
    low, high = time_range_bounds(start, end)

    def one(account: str, after: Position | None) -> Iterator[Event]:
        resume = after[0] if after and after[0] >= low else None
        while True:
            events, more = store.account_events(account, low, high, limit=1000, after=resume)
            yield from (e for e in events if after is None or position_of(e) > after)
            if not more:
                return
            resume = events[-1].event_id

    return lambda after: heapq.merge(*(one(a, after) for a in accounts), key=position_of)


def csv_row(event: Event) -> list[str]:
    fields = canonical_fields(event)
    unknown = set(fields) - set(CSV_COLUMNS)
    if unknown:
        raise ValueError(f"event fields without a CSV column: {sorted(unknown)}")
    row = []
    for column in CSV_COLUMNS:
        value = fields.get(column)
        if column == "metadata":
            value = json.dumps(value or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        row.append("" if value is None else str(value))
    return row


def _csv_line(values: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().encode("utf-8")


def _line(event: Event, fmt: str) -> bytes:
    return canonical_line(event) if fmt == "jsonl" else _csv_line(csv_row(event))


def _position_of_line(line: bytes, fmt: str) -> Position:
    if fmt == "jsonl":
        data = json.loads(line)
        return (data["event_id"], data["entity_id"])
    row = next(csv.reader([line.decode("utf-8")]))
    return (row[0], row[1])


def _resume_point(out: Path, fmt: str) -> tuple[Position | None, int]:
    """Truncate a torn last line; return the last complete line's position and the events kept."""
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with out.open("r+b") as handle:
            handle.truncate(len(complete))
    lines = complete.splitlines(keepends=True)
    if fmt == "csv" and lines:
        lines = lines[1:]  # the header
    if not lines:
        return None, 0
    return _position_of_line(lines[-1], fmt), len(lines)


def export(
    source: Source,
    query: Query,
    out: Path,
    progress: Callable[[int], None] | None = None,
    digest_before: str | None = None,
    settled_until: str | dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Write every event of `source` to `out` (resuming a partial export of the same query); return the manifest."""
    state = out.with_name(out.name + ".export.json")
    manifest_path = out.with_name(out.name + ".manifest.json")
    after: Position | None = None
    count = 0
    if state.exists():
        if json.loads(state.read_text()) != query.to_json():
            raise ExportError(f"{out} is a partial export of another query ({state}); choose another --out")
        if out.exists():
            after, count = _resume_point(out, query.format)
    elif out.exists():
        raise ExportError(f"{out} exists; remove it or choose another --out")
    else:
        manifest_path.unlink(missing_ok=True)
        state.write_text(json.dumps(query.to_json()))
    with out.open("ab") as handle:
        if query.format == "csv" and handle.tell() == 0:
            handle.write(_csv_line(CSV_COLUMNS))
        for event in source(after):
            handle.write(_line(event, query.format))
            count += 1
            if progress and count % 500 == 0:
                handle.flush()
                progress(count)
        handle.flush()
        os.fsync(handle.fileno())
    if progress:
        progress(count)
    manifest = _manifest(out, query, count, digest_before)
    if settled_until is not None:
        manifest["settled_until"] = settled_until  # events after it may still arrive: re-export to include them
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    state.unlink()
    return manifest


def _manifest(out: Path, query: Query, count: int, digest_before: str | None) -> dict[str, Any]:
    sha = hashlib.sha256()
    first = last = None
    digest = digest_before
    with out.open("rb") as handle:
        lines = iter(handle)
        if query.format == "csv":
            sha.update(next(lines, b""))
        for line in lines:
            sha.update(line)
            position = _position_of_line(line, query.format)
            first = first or position[0]
            last = position[0]
            if digest is not None:
                digest = chain(digest, line)
    manifest: dict[str, Any] = {
        "file": out.name,
        "query": query.to_json(),
        "count": count,
        "first_event_id": first,
        "last_event_id": last,
        "sha256": sha.hexdigest(),
        "bytes": out.stat().st_size,
        "completed_at": format_rfc3339(datetime.now(timezone.utc)),
    }
    if digest_before is not None:
        manifest["digest_before"] = digest_before
        manifest["digest_after"] = digest
    return manifest
