"""ULIDs, time ranges as key ranges, and RFC 3339 parsing (pure, no IO)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import ulid

from ledger.ids import (
    format_rfc3339,
    is_account_id,
    is_ulid,
    new_ulid,
    parse_rfc3339,
    time_range_bounds,
    ulid_time,
)

UTC = timezone.utc


def smallest_ulid_of(millis: int) -> str:
    return ulid.from_int(millis << 80).str


def largest_ulid_of(millis: int) -> str:
    return ulid.from_int((millis << 80) | ((1 << 80) - 1)).str


def millis(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


# -- ULIDs --------------------------------------------------------------------------


def test_monotonic_ulids_strictly_increase_across_ten_thousand_calls():
    minted = [new_ulid() for _ in range(10_000)]

    assert all(earlier < later for earlier, later in zip(minted, minted[1:]))
    assert all(is_ulid(value) for value in minted)


def test_a_ulid_records_the_millisecond_it_was_minted_in_utc():
    before = datetime.now(UTC)
    minted = new_ulid()
    after = datetime.now(UTC)

    moment = ulid_time(minted)

    assert moment.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) < moment <= after


@pytest.mark.parametrize(
    "value, valid",
    [
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", True),
        ("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", True),
        ("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", False),  # beyond 48 bits of milliseconds
        ("01arz3ndektsv4rrffq69g5fav", False),
        ("01ARZ3NDEKTSV4RRFFQ69G5FA", False),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAVX", False),
        ("01ARZ3NDEKTSV4RRFFQ69G5FAI", False),  # I, L, O, U are not Crockford digits
        ("", False),
        (None, False),
    ],
)
def test_is_ulid_accepts_only_canonical_upper_case_ulids(value, valid):
    assert is_ulid(value) is valid


@pytest.mark.parametrize(
    "value, valid",
    [
        ("alice", True),
        ("Az09._:-", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("a/b", False),
        ("a b", False),
        ("été", False),
        ("a\x00", False),
        ("a\n", False),
        (7, False),
    ],
)
def test_is_account_id_accepts_only_the_documented_alphabet_and_length(value, valid):
    assert is_account_id(value) is valid


# -- time ranges ------------------------------------------------------------------


def test_time_range_bounds_bracket_every_ulid_minted_in_the_range():
    start = datetime.now(UTC)
    minted = [new_ulid() for _ in range(200)]
    end = datetime.now(UTC)

    low, high = time_range_bounds(start, end)

    assert all(low <= value <= high for value in minted)


def test_time_range_bounds_are_inclusive_to_the_millisecond_and_exclude_its_neighbours():
    start = datetime(2026, 11, 22, 10, 0, 0, 123_999, tzinfo=UTC)
    end = datetime(2026, 11, 22, 10, 0, 5, 456_001, tzinfo=UTC)
    first, last = millis(start), millis(end)

    low, high = time_range_bounds(start, end)

    assert largest_ulid_of(first - 1) < low <= smallest_ulid_of(first)
    assert largest_ulid_of(last) <= high < smallest_ulid_of(last + 1)


def test_a_one_instant_range_covers_its_whole_millisecond():
    instant = datetime(2026, 11, 22, 10, 0, 0, 500_000, tzinfo=UTC)

    low, high = time_range_bounds(instant, instant)

    assert low <= smallest_ulid_of(millis(instant)) <= largest_ulid_of(millis(instant)) <= high


def test_open_ended_bounds_cover_every_possible_ulid():
    low, high = time_range_bounds(None, None)

    assert low <= smallest_ulid_of(0)
    assert largest_ulid_of(2**48 - 1) <= high


def test_bounds_in_another_offset_equal_the_utc_ones():
    utc = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))

    assert time_range_bounds(paris, paris) == time_range_bounds(utc, utc)


# -- RFC 3339 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22t10:00:00z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22 10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T12:00:00+02:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T05:30:00-04:30", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T00:30:00+00:00", datetime(2026, 11, 22, 0, 30, tzinfo=UTC)),
        ("2026-11-22T10:00:00.5Z", datetime(2026, 11, 22, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2026-11-22T10:00:00.123Z", datetime(2026, 11, 22, 10, 0, 0, 123_000, tzinfo=UTC)),
        ("2026-11-22T10:00:00.123456Z", datetime(2026, 11, 22, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2026-11-22T10:00:00.123456789Z", datetime(2026, 11, 22, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2026-11-23T01:00:00.25+15:00", datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_accepts_zones_offsets_and_fractions_and_returns_utc(text, expected):
    parsed = parse_rfc3339(text)

    assert parsed == expected
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-22T10:00:00",  # naive: whose local time?
        "2026-11-22T10:00:00.123",
        "2026-11-22",
        "2026-11-22T10:00Z",
        "2026-11-22T10:00:00+0200",
        "2026-11-22T10:00:00+02",
        "2026-11-22T10:00:00.Z",
        "2026-11-22T10:00:00.1234567890Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T10:60:00Z",
        "2026-11-22T10:00:00+24:00",
        "1732269600",
        "yesterday",
        "",
    ],
)
def test_parse_rfc3339_refuses_naive_partial_and_impossible_times_with_value_error(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_parse_rfc3339_refuses_a_time_that_leaves_the_calendar_in_utc_with_value_error(text):
    # Callers (the API's from/to) turn ValueError into a 400; anything else becomes a 500.
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_format_rfc3339_writes_utc_milliseconds_with_z():
    moment = datetime(2026, 11, 22, 12, 0, 0, 123_999, tzinfo=timezone(timedelta(hours=2)))

    assert format_rfc3339(moment) == "2026-11-22T10:00:00.123Z"


def test_formatting_then_parsing_keeps_the_instant_to_the_millisecond():
    moment = datetime(2026, 11, 22, 10, 0, 0, 987_654, tzinfo=UTC)

    assert parse_rfc3339(format_rfc3339(moment)) == moment.replace(microsecond=987_000)


def test_new_ulid_never_hands_two_threads_the_same_id():
    # ulid-py's monotonic provider can return one id twice under thread switches;
    # a tiny switch interval makes that race show up within a few thousand calls.
    import sys
    import threading

    from ledger.ids import new_ulid

    minted: list[list[str]] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def mint() -> None:
            minted.append([new_ulid() for _ in range(10_000)])

        threads = [threading.Thread(target=mint) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    every = [id_ for batch in minted for id_ in batch]
    assert len(set(every)) == len(every) == 80_000
    assert all(batch == sorted(batch) for batch in minted)  # each thread sees them increase
