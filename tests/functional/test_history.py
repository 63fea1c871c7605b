"""Reading history: pagination, order, time windows, and transactions by id."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

AMOUNTS = [5, 10, 15, 20, 25, 30, 35, 40]  # with account.opened: 9 events


@pytest.fixture
def alice_events(api, open_account) -> list[dict]:
    """alice's 9 events in the order they were recorded."""
    open_account("alice")
    for amount in AMOUNTS:
        assert api.post("/accounts/alice/credits", {"amount": amount, "currency": "EUR"}).status == 201
    everything = api.get("/accounts/alice/events", {"limit": 1000}).json
    assert everything["next_cursor"] is None
    return everything["events"]


def walk(api, account_id: str, **params) -> list[dict]:
    """Every page of a history query, following next_cursor to the end."""
    pages = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = api.get(f"/accounts/{account_id}/events", query)
        assert response.status == 200, response.json
        pages.append(response.json)
        cursor = response.json["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


def ids(events: list[dict]) -> list[str]:
    return [event["event_id"] for event in events]


def test_history_lists_events_in_the_order_they_were_recorded(alice_events):
    assert ids(alice_events) == sorted(ids(alice_events))
    assert alice_events[0]["type"] == "account.opened"
    assert [event["amount"] for event in alice_events[1:]] == AMOUNTS
    assert [event["recorded_at"] for event in alice_events] == sorted(event["recorded_at"] for event in alice_events)


@pytest.mark.parametrize("limit, sizes", [(4, [4, 4, 1]), (3, [3, 3, 3]), (1, [1] * 9), (9, [9]), (10, [9])])
def test_ascending_pages_walk_every_event_exactly_once_in_order(api, alice_events, limit, sizes):
    pages = walk(api, "alice", limit=limit)

    assert [len(page["events"]) for page in pages] == sizes
    assert ids([event for page in pages for event in page["events"]]) == ids(alice_events)
    assert pages[-1]["next_cursor"] is None
    assert all(page["next_cursor"] for page in pages[:-1])


@pytest.mark.parametrize("limit, sizes", [(4, [4, 4, 1]), (3, [3, 3, 3]), (1, [1] * 9)])
def test_descending_pages_walk_every_event_exactly_once_newest_first(api, alice_events, limit, sizes):
    pages = walk(api, "alice", limit=limit, order="desc")

    assert [len(page["events"]) for page in pages] == sizes
    assert ids([event for page in pages for event in page["events"]]) == ids(alice_events)[::-1]
    assert pages[-1]["next_cursor"] is None


def test_the_default_page_holds_up_to_100_events_without_a_cursor(api, alice_events):
    response = api.get("/accounts/alice/events")

    assert response.status == 200
    assert response.json == {
        "account_id": "alice",
        "events": alice_events,
        "next_cursor": None,
        "settled_until": alice_events[-1]["event_id"],
    }


def test_a_cursor_keeps_working_after_new_events_arrive_and_the_walk_reaches_them(api, alice_events):
    first = api.get("/accounts/alice/events", {"limit": 4}).json
    api.post("/accounts/alice/credits", {"amount": 99, "currency": "EUR"})

    rest = walk(api, "alice", limit=4, cursor=first["next_cursor"])

    seen = ids(first["events"]) + ids([event for page in rest for event in page["events"]])
    assert seen[: len(alice_events)] == ids(alice_events)
    assert len(seen) == len(alice_events) + 1 == len(set(seen))


# -- time windows ---------------------------------------------------------------------


def within(events: list[dict], start: str | None = None, end: str | None = None) -> list[dict]:
    """The events whose recorded_at lies in [start, end] (same spelling, so string order is time order)."""
    return [
        event
        for event in events
        if (start is None or event["recorded_at"] >= start) and (end is None or event["recorded_at"] <= end)
    ]


def test_a_from_to_window_holds_exactly_the_events_recorded_within_it(api, alice_events):
    start, end = alice_events[3]["recorded_at"], alice_events[6]["recorded_at"]

    response = api.get("/accounts/alice/events", {"from": start, "to": end})

    assert response.status == 200
    assert ids(response.json["events"]) == ids(within(alice_events, start, end))
    assert set(ids(alice_events[3:7])) <= set(ids(response.json["events"]))


def test_from_alone_and_to_alone_bound_one_side(api, alice_events):
    middle = alice_events[5]["recorded_at"]

    since = api.get("/accounts/alice/events", {"from": middle}).json["events"]
    until = api.get("/accounts/alice/events", {"to": middle}).json["events"]

    assert ids(since) == ids(within(alice_events, start=middle))
    assert ids(until) == ids(within(alice_events, end=middle))
    assert set(ids(since)) | set(ids(until)) == set(ids(alice_events))


def test_a_window_may_be_given_with_an_offset_instead_of_z(api, alice_events):
    start = alice_events[2]["recorded_at"]
    in_kolkata = datetime.fromisoformat(start).astimezone(timezone(timedelta(hours=5, minutes=30)))
    shifted = in_kolkata.isoformat(timespec="milliseconds")  # e.g. 2026-11-23T03:56:59.807+05:30

    with_offset = api.get("/accounts/alice/events", {"from": shifted}).json["events"]
    with_z = api.get("/accounts/alice/events", {"from": start}).json["events"]

    assert shifted.endswith("+05:30")
    assert ids(with_offset) == ids(with_z) == ids(within(alice_events, start=start))


def test_a_window_of_one_instant_holds_the_events_of_that_millisecond(api, alice_events):
    instant = alice_events[5]["recorded_at"]

    response = api.get("/accounts/alice/events", {"from": instant, "to": instant})

    assert ids(response.json["events"]) == ids(within(alice_events, instant, instant))
    assert alice_events[5]["event_id"] in ids(response.json["events"])


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_of_a_window_walk_it_exactly_once(api, alice_events, order):
    start, end = alice_events[2]["recorded_at"], alice_events[7]["recorded_at"]
    expected = ids(within(alice_events, start, end))

    pages = walk(api, "alice", limit=2, order=order, **{"from": start, "to": end})

    walked = ids([event for page in pages for event in page["events"]])
    assert walked == (expected if order == "asc" else expected[::-1])


def test_a_window_before_the_account_existed_is_empty_not_missing(api, alice_events):
    response = api.get("/accounts/alice/events", {"from": "2000-01-01T00:00:00Z", "to": "2000-12-31T23:59:59Z"})

    assert response.status == 200
    assert response.json["events"] == []
    assert response.json["next_cursor"] is None


def test_the_history_of_an_unknown_account_is_404(api):
    response = api.get("/accounts/nobody/events")

    assert (response.status, response.code) == (404, "account_not_found")


# -- transactions -----------------------------------------------------------------------


def test_a_transaction_is_found_by_its_id(api, alice_events):
    credit = alice_events[4]

    response = api.get(f"/transactions/{credit['transaction_id']}")

    assert response.status == 200
    assert response.json == {"transaction_id": credit["transaction_id"], "type": "credit", "events": [credit]}


def test_an_unknown_transaction_ulid_is_404(api, alice_events):
    unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV"

    response = api.get(f"/transactions/{unknown}")

    assert (response.status, response.code) == (404, "transaction_not_found")
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("transaction_id", ["not-a-ulid", "01arz3ndektsv4rrffq69g5fav", "0" * 27, "ILOU" * 6 + "00"])
def test_an_invalid_transaction_id_is_400(api, transaction_id):
    response = api.get(f"/transactions/{transaction_id}")

    assert (response.status, response.code) == (400, "invalid_identifier")
