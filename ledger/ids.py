"""Identifiers: ULIDs for events and transactions, and the rules for client-chosen ids.

An event's sort key is a ULID: 48 bits of milliseconds then 80 bits of randomness,
written in Crockford base32 so that string order is time order. A time range is
therefore a key range (`time_range_bounds`). The monotonic provider keeps ids
strictly increasing within one process even inside one millisecond; plain
`ulid.new()` would not.
"""

from __future__ import annotations

import random
import re
import threading
from datetime import datetime, timedelta, timezone

import ulid

_MONOTONIC = ulid.monotonic
# ulid-py's monotonic provider reads its last randomness after releasing its own
# lock, so two threads can receive the same ULID; serialise calls ourselves.
_MONOTONIC_LOCK = threading.Lock()
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

ULID_PATTERN = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
# At least one character other than a dot: "." and ".." are path segments, not ids.
ACCOUNT_ID_PATTERN = re.compile(r"^(?!\.+$)[A-Za-z0-9._:-]{1,64}$")
MIN_RANDOMNESS = "0" * 16
MAX_RANDOMNESS = "Z" * 16
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def new_ulid() -> str:
    """A new ULID, greater than every ULID this process made before (same clock)."""
    with _MONOTONIC_LOCK:
        return _MONOTONIC.new().str


def new_ulid_after(floor: str | None) -> str:
    """A new ULID greater than `floor` (an id another process, maybe with a faster clock, minted).

    Normally just `new_ulid()`; when this clock is behind `floor`, the id takes the
    floor's millisecond and a random step above its randomness, so it sorts after it.
    """
    fresh = new_ulid()
    if floor is None or fresh > floor:
        return fresh
    above = int(ulid.parse(floor)) + 1 + random.getrandbits(32)
    return ulid.from_int(min(above, 2**128 - 1)).str


def is_ulid(value: str) -> bool:
    return isinstance(value, str) and ULID_PATTERN.fullmatch(value) is not None


def is_account_id(value: str) -> bool:
    return isinstance(value, str) and ACCOUNT_ID_PATTERN.fullmatch(value) is not None


def ulid_time(value: str) -> datetime:
    """The instant a ULID was minted, to the millisecond."""
    return ulid.parse(value).timestamp().datetime


def _encode_millis(millis: int) -> str:
    chars = []
    for _ in range(10):
        chars.append(_CROCKFORD[millis & 31])
        millis >>= 5
    return "".join(reversed(chars))


def time_range_bounds(start: datetime | None, end: datetime | None) -> tuple[str, str]:
    """Inclusive ULID bounds covering every id minted in [start, end]."""
    low = _encode_millis(_to_millis(start)) + MIN_RANDOMNESS if start else "0" * 26
    high = _encode_millis(_to_millis(end)) + MAX_RANDOMNESS if end else "7" + "Z" * 25
    return low, high


def _to_millis(moment: datetime) -> int:
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    return max(0, min(millis, 2**48 - 1))


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 timestamp; a time zone is required (no naive local times)."""
    text = value.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", text):
        raise ValueError(f"not an RFC 3339 timestamp with a time zone: {value!r}")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Python keeps microseconds only
    moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError as exc:  # e.g. year 1 at +01:00 is before year 1 in UTC
        raise ValueError(f"{value!r} is outside the representable calendar in UTC") from exc


def format_rfc3339(moment: datetime) -> str:
    """UTC, millisecond precision, `Z` suffix: the one spelling the ledger writes."""
    utc = moment.astimezone(timezone.utc)
    # strftime's %Y does not pad years before 1000 on every platform; RFC 3339 needs four digits.
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"
