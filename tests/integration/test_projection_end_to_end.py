"""Balances follow writes on a real `ledger serve`: DynamoDB Local, its stream, the poller, HTTP.

The test keeps its own model of what it recorded, so "converged" means equal to
what was sent, not merely equal to another reading of the same store.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving import Served, ledger_command

ACCOUNTS = [f"acct-{n}" for n in range(8)]


class Model:
    """What the test recorded: balance and event count per account."""

    def __init__(self) -> None:
        self.balance: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def opened(self, account: str) -> None:
        self.events[account] += 1

    def moved(self, account: str, signed: int) -> None:
        self.balance[account] += signed
        self.events[account] += 1


def open_all(served: Served, model: Model) -> None:
    for account in ACCOUNTS:
        status, body = served.post("/accounts", {"account_id": account, "currency": "EUR", "allow_overdraft": True}, f"open-{account}")
        assert status == 201, body
        model.opened(account)


def record_burst(served: Served, model: Model, rng: random.Random, tag: str, count: int) -> None:
    """`count` random credits, debits and transfers, half of them sent twice with the same key."""
    requests = []
    for n in range(count):
        kind = rng.choice(["credit", "debit", "transfer"])
        amount = rng.randint(1, 10_000)
        source, target = rng.sample(ACCOUNTS, 2)
        key = f"{tag}-{n}"
        if kind == "transfer":
            body = {"from_account": source, "to_account": target, "amount": amount, "currency": "EUR"}
            requests.append(("/transfers", body, key))
            model.moved(source, -amount)
            model.moved(target, amount)
        else:
            requests.append((f"/accounts/{source}/{kind}s", {"amount": amount, "currency": "EUR"}, key))
            model.moved(source, amount if kind == "credit" else -amount)
        if n % 2:
            requests.append(requests[-1])  # a client retry: must replay, not record

    def send(request: tuple[str, dict, str]) -> int:
        return served.post(*request)[0]

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(send, requests))
    assert set(statuses) <= {200, 201, 409}, Counter(statuses)  # 409: a retry racing its original
    # A 409 means "in flight, retry": retry those (sequentially) until each is a replay.
    for request, status in zip(requests, statuses):
        while status == 409:
            time.sleep(0.05)
            status = send(request)
        assert status in (200, 201)


def wait_for_balances(served: Served, model: Model, timeout: float = 45.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        views = {a: served.get(f"/accounts/{a}/balance") for a in ACCOUNTS}
        if all(views[a]["balance"] == model.balance[a] and views[a]["event_count"] == model.events[a] for a in ACCOUNTS):
            return views
        if time.monotonic() > deadline:
            wrong = {a: (views[a]["balance"], views[a]["event_count"], model.balance[a], model.events[a]) for a in ACCOUNTS}
            raise AssertionError(f"balances did not converge (view balance, count, model balance, count): {wrong}")
        time.sleep(0.2)


def projections_verify(served: Served) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ledger_command(), "projections", "verify", "--endpoint-url", served.dynamodb_endpoint],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_balances_converge_to_what_was_recorded(served: Served) -> None:
    model, rng = Model(), random.Random(7)
    open_all(served, model)
    record_burst(served, model, rng, "first", 60)

    views = wait_for_balances(served, model)

    assert sum(view["balance"] for view in views.values()) == sum(model.balance.values())
    for account, view in views.items():
        strong = served.get(f"/accounts/{account}/balance?consistency=strong")
        assert {k: strong[k] for k in ("balance", "credits", "debits", "event_count", "as_of")} == {
            k: view[k] for k in ("balance", "credits", "debits", "event_count", "as_of")
        }
        assert view["credits"] - view["debits"] == view["balance"]


def test_stopping_mid_stream_and_restarting_counts_nothing_twice(served: Served, data_dir: Path) -> None:
    model, rng = Model(), random.Random(11)
    open_all(served, model)
    wait_for_balances(served, model)
    record_burst(served, model, rng, "before-stop", 80)
    behind = [a for a in ACCOUNTS if served.get(f"/accounts/{a}/balance")["event_count"] != model.events[a]]

    assert served.stop() == 0  # right after the last write: the projector is mid-stream

    again = Served(data_dir)
    try:
        record_burst(again, model, rng, "after-restart", 20)
        wait_for_balances(again, model)
        checked = projections_verify(again)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "every balance equals the fold of its log" in checked.stdout, checked.stdout
        assert "DRIFT" not in checked.stdout
    finally:
        assert again.stop() == 0
    dead_letters = data_dir / "dev-dead-letters.jsonl"
    assert not dead_letters.exists() or dead_letters.read_text() == "", "a record was given up on"
    # Evidence the stop really interrupted the projection (else this test proves less).
    assert behind, "every balance had caught up before the stop; record a larger burst"
