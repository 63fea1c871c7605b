"""Balance and digest at any instant: the nearest checkpoint plus the events after it, equal to a full fold."""

from __future__ import annotations

import itertools
from datetime import timedelta

from profiles import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.canonical import digest_of
from composition.root import Root
from ledger.ids import format_rfc3339, time_range_bounds
from past_events import EPOCH, append, at, past_event

DAY_MS = 86_400_000
_runs = itertools.count()


def brute_force(events, moment):
    _, high = time_range_bounds(None, moment)
    upto = [e for e in sorted(events, key=lambda e: e.event_id) if e.event_id <= high]
    return sum(e.signed_amount for e in upto), len(upto), digest_of(upto)[0]


class CountingClient:
    def __init__(self, real):
        self._real, self.queries = real, []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def query(self, **request):
        response = self._real.query(**request)
        self.queries.append(len(response.get("Items", [])))
        return response


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amounts=st.lists(st.tuples(st.integers(1, 6 * DAY_MS), st.integers(-500, 500).filter(bool)), min_size=1, max_size=30),
    closed_until=st.one_of(st.none(), st.integers(0, 7 * DAY_MS)),
    instants=st.lists(st.integers(-DAY_MS, 7 * DAY_MS), min_size=1, max_size=8),
)
def test_balance_and_digest_at_any_instant_equal_a_full_fold(root, ledger, amounts, closed_until, instants):
    account = f"pit{next(_runs)}"
    events = [past_event(account, EPOCH)] + [past_event(account, at(ms / 1000), amount) for ms, amount in amounts]
    append(ledger, events)
    checkpoints = root.checkpoints
    if closed_until is not None:
        checkpoints.close(account, at(closed_until / 1000))

    for ms in instants:
        moment = at(ms / 1000)
        fold = checkpoints.fold_at(account, moment)
        assert (fold.balance, fold.event_count, fold.digest) == brute_force(events, moment), format_rfc3339(moment)


def test_with_checkpoints_a_query_reads_only_the_last_day(root, ledger, dynamodb):
    # 10 days, 40 events a day; a checkpoint per closed day.
    events = [past_event("hot", EPOCH)] + [past_event("hot", at(n * 2160 + 1), 1 + n % 9) for n in range(400)]
    append(ledger, events)
    assert root.checkpoints.close("hot", at(9 * 86_400)) == 9  # days 0..8 closed; day 9 still open
    counting = CountingClient(dynamodb)
    moment = at(9 * 86_400 + 40_000)

    fold = Root(root.settings, client=counting).checkpoints.fold_at("hot", moment)

    assert (fold.balance, fold.event_count, fold.digest) == brute_force(events, moment)
    assert len(counting.queries) == 2  # the checkpoint, then the events since its day ended
    assert sum(counting.queries) == 1 + 19  # one checkpoint, day 9's events up to the instant


def test_the_api_answers_balance_at_and_digest_to(api, root, ledger, open_account):
    events = [past_event("carol", EPOCH)] + [past_event("carol", at(3600 * n + 5), 100 * n) for n in range(1, 60)]
    append(ledger, events)
    root.checkpoints.close("carol")
    moment = at(3600 * 30)
    balance, count, digest = brute_force(events, moment)

    point = api.get("/accounts/carol/balance", {"at": format_rfc3339(moment)})
    summary = api.get("/accounts/carol/digest", {"to": format_rfc3339(moment)})

    assert point.status == 200 and (point.json["balance"], point.json["event_count"]) == (balance, count)
    assert point.json["as_of"]["event_id"] == events[count - 1].event_id and point.json["at"] == format_rfc3339(moment)
    assert summary.json == {
        "account_id": "carol",
        "to": format_rfc3339(moment),
        "event_count": count,
        "digest": digest,
        "last_event_id": events[count - 1].event_id,
        "settled_until": None,  # appended below the service: the account item names no newest event
        "algorithm": "sha256-chain-v1",
    }
    before = api.get("/accounts/carol/balance", {"at": format_rfc3339(EPOCH - timedelta(days=1))}).json
    assert (before["balance"], before["event_count"], before["as_of"]) == (0, 0, None)


def test_bad_instants_are_refused(api, ledger):
    append(ledger, [past_event("dave", EPOCH)])
    for path, params, status, code in [
        ("/accounts/dave/balance", {"at": "yesterday"}, 400, "invalid_query"),
        ("/accounts/dave/balance", {"at": "2999-01-01T00:00:00Z"}, 400, "invalid_query"),
        ("/accounts/dave/balance", {"at": "2026-03-02T00:00:00Z", "consistency": "strong"}, 400, "invalid_query"),
        ("/accounts/dave/digest", {"to": "0001-01-01T00:00:00"}, 400, "invalid_query"),  # no zone
        ("/accounts/dave/digest", {"to": "2026-03-02T00:00:00Z", "from": "x"}, 400, "invalid_query"),
        ("/accounts/nobody/digest", {"to": "2026-03-02T00:00:00Z"}, 404, "account_not_found"),
        ("/accounts/nobody/balance", {"at": "2026-03-02T00:00:00Z"}, 404, "account_not_found"),
    ]:
        response = api.get(path, params)
        assert (response.status, response.code) == (status, code), (path, params)


def test_a_digest_without_to_covers_every_committed_event(api, open_account):
    open_account("erin")
    credit = api.post("/accounts/erin/credits", {"amount": 5, "currency": "EUR"}).json

    summary = api.get("/accounts/erin/digest")

    assert summary.status == 200
    assert (summary.json["event_count"], summary.json["last_event_id"]) == (2, credit["events"][0]["event_id"])
    assert summary.json["settled_until"] == credit["events"][0]["event_id"]


def test_an_instant_in_year_one_is_echoed_in_rfc_3339(api, open_account):
    open_account("frank")

    response = api.get("/accounts/frank/balance", {"at": "0001-01-01T00:00:00Z"})

    assert response.status == 200
    assert response.json["at"] == "0001-01-01T00:00:00.000Z"
