"""`GET /events?from=&to=`: every event of a window across all accounts, in ULID order, paged."""

from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.timeline import Timeline
from ledger.ids import format_rfc3339, time_range_bounds
from past_events import EPOCH, append, at, past_event

DAY = 86_400
_runs = itertools.count()


def brute_force(events, start, end):
    low, high = time_range_bounds(start, end)
    return sorted((e for e in events if low <= e.event_id <= high), key=lambda e: (e.event_id, e.entity_id))


def read_all_pages(api, start, end, limit):
    events, cursor, pages = [], None, 0
    while True:
        params = {"from": format_rfc3339(start), "to": format_rfc3339(end), "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = api.get("/events", params)
        assert response.status == 200, response.json
        events.extend(response.json["events"])
        cursor, pages = response.json["next_cursor"], pages + 1
        if cursor is None:
            return events, pages
        assert response.json["events"], "a page with a cursor must not be empty"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    moments=st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol", "dave"]), st.integers(0, 5 * DAY * 1000)), max_size=40),
    window=st.tuples(st.integers(-DAY * 1000, 6 * DAY * 1000), st.integers(0, 7 * DAY * 1000)),
    limit=st.integers(1, 7),
)
def test_pages_of_any_window_are_exactly_the_brute_force_list(api, ledger, dynamodb, moments, window, limit):
    # The tables live for the whole test function: each example gets accounts of its own.
    run = f"run{next(_runs)}"
    events = [past_event(f"{run}-{name}", at(ms / 1000), 100 + n) for n, (name, ms) in enumerate(moments)]
    append(ledger, events)
    start = at(window[0] / 1000)
    end = start + timedelta(milliseconds=window[1])

    got, pages = read_all_pages(api, start, end, limit)

    mine = [e for e in got if e["entity_id"].startswith(f"{run}-")]
    expected = brute_force(events, start, end)
    assert [(e["event_id"], e["entity_id"]) for e in mine] == [(e.event_id, e.entity_id) for e in expected]
    ids = [(e["event_id"], e["entity_id"]) for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ordered, nothing twice across pages


def test_a_window_spanning_days_merges_every_shard_in_order(api, ledger):
    events = [past_event(f"acct-{n % 7}", at(n * 3_607.3), 10 + n) for n in range(120)]  # ~5 days, all shards
    append(ledger, events)
    start, end = EPOCH, at(5 * DAY)

    got, pages = read_all_pages(api, start, end, 25)

    assert [e["event_id"] for e in got] == [e.event_id for e in brute_force(events, start, end)]
    assert pages == 5
    assert got[0] == events[0].model_dump(mode="json", exclude_none=True)


def test_the_timeline_is_lazy_a_small_page_reads_little(ledger, dynamodb):
    append(ledger, [past_event(f"acct-{n % 3}", at(n * 60), 5) for n in range(300)])
    calls = []
    real_query = dynamodb.query

    class Counting:
        def __getattr__(self, name):
            return getattr(dynamodb, name)

        def query(self, **request):
            calls.append(request["ExpressionAttributeValues"][":bucket"]["S"])
            return real_query(**request)

    from ledger.store import EventStore

    store = EventStore(Counting(), ledger.store._tables, "us-east-1")
    page = Timeline(store, page_size=10).page(EPOCH, at(DAY), limit=5)

    assert len(page.events) == 5 and page.next_cursor
    assert len(calls) == 8  # one page of each of the day's 8 shards, nothing more


def test_bad_windows_and_cursors_are_refused(api, ledger):
    append(ledger, [past_event("alice", at(n), 1) for n in range(3)])
    window = {"from": format_rfc3339(EPOCH), "to": format_rfc3339(at(10))}
    first = api.get("/events", {**window, "limit": 1})
    cases = [
        ({}, "invalid_query"),
        ({"from": window["from"]}, "invalid_query"),
        ({"from": "yesterday", "to": window["to"]}, "invalid_query"),
        ({"from": window["to"], "to": window["from"]}, "invalid_query"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "invalid_query"),
        ({**window, "limit": 0}, "invalid_query"),
        ({**window, "limit": 1001}, "invalid_query"),
        ({**window, "account": "alice"}, "invalid_query"),
        ({**window, "cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"from": window["from"], "to": format_rfc3339(at(9)), "cursor": first.json["next_cursor"]}, "invalid_cursor"),
    ]
    for params, code in cases:
        response = api.get("/events", params)
        assert (response.status, response.code) == (400, code), params
