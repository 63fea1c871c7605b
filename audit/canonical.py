"""The canonical form of an event and the digest chain over an account's events.

The canonical line of an event is its JSON object (every field the API shows,
absent optional fields left out), keys sorted, no whitespace, UTF-8 with non-ASCII
characters as themselves, then one newline. `ledger export --format jsonl` writes
exactly these lines, so an auditor can recompute a digest from an export alone.

The digest after events e1..en (in ULID order) is a hash chain:

    d0 = "0" * 64
    di = SHA-256( d(i-1) as 64 lowercase hex characters, then the canonical line of ei ), as hex

A chain, not one hash over everything, so that a stored digest at a period's end
lets anyone continue from there: the digest up to any time costs only the events
after the nearest stored one, and an auditor can check one month's export against
the digest before the month and the digest at its end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from ledger.events import Event

GENESIS_DIGEST = "0" * 64


def canonical_fields(event: Event) -> dict:
    """The event as the API and the export show it."""
    return event.model_dump(mode="json", exclude_none=True)


def canonical_line(event: Event) -> bytes:
    text = json.dumps(canonical_fields(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


def chain(previous: str, line: bytes) -> str:
    """The digest after one more canonical line."""
    return hashlib.sha256(previous.encode("ascii") + line).hexdigest()


def digest_of(events: Iterable[Event], start: str = GENESIS_DIGEST) -> tuple[str, int]:
    """The digest after `events` (in ULID order), continuing from `start`, and how many there were."""
    digest, count = start, 0
    for event in events:
        digest = chain(digest, canonical_line(event))
        count += 1
    return digest, count
