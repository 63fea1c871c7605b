"""Fail-over on `ledger serve --regions`, as an operator runs it: planned under load, forced during a partition.

Clients behave as a router would: a write refused with 421 is sent again, with
the same Idempotency-Key, to the `home_url` the refusal names, and a 503 is sent
again after its Retry-After. A model keeps what was acknowledged; afterwards
`ledger regions compare` must be clean and every region's balances must equal the
model: nothing acknowledged lost, nothing counted twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from serving import Served, ledger_command

EAST, WEST = "us-east-1", "eu-west-1"


def regions(served: Served, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [*ledger_command(), "regions", *args, "--data-dir", str(served.data_dir)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def _post(url: str, body: dict[str, Any], key: str, token: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": key},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused), dict(refused.headers)


class Router:
    """Sends each write to the account's home as last learned, with the same key each time: follows a 421 to
    the home it names, tries another region on 503 region_fenced (and comes back on a 404 there: the account
    has not reached it), retries other 503s after their Retry-After."""

    def __init__(self, served: Served, homes: dict[str, str]) -> None:
        self.apis = served.apis
        self.token = served.token
        self.homes = dict(homes)
        self.acknowledged: Counter = Counter()
        self.refusals: Counter = Counter()
        self.failures: list[Any] = []  # writes that ended in neither 201 nor a retryable refusal
        self.lock = threading.Lock()

    def credit(self, account: str, amount: int, key: str, deadline: float) -> int:
        homes_before = dict(self.homes)
        while True:
            status, body, headers = _post(f"{self.apis[self.homes[account]]}/accounts/{account}/credits", {"amount": amount, "currency": "EUR"}, key, self.token)
            if status == 201:
                with self.lock:
                    if headers.get("Idempotent-Replayed") != "true":
                        self.acknowledged[account] += amount
                    else:  # recorded by an earlier attempt whose answer was lost: counted once, there
                        self.acknowledged[account] += 0
                return status
            with self.lock:
                self.refusals[body.get("code")] += 1
            if status == 421:
                self.homes[account] = body["home_region"]
            elif status == 503 and body.get("code") == "region_fenced" and time.monotonic() < deadline:
                others = [r for r in self.apis if r != self.homes[account]]  # cut off: try elsewhere
                self.homes[account] = others[0]
                time.sleep(0.2)
            elif status == 404 and time.monotonic() < deadline and self.homes[account] != homes_before[account]:
                # Tried elsewhere after a refusal, where the account has not replicated to yet: back again.
                self.homes[account] = homes_before[account]
                time.sleep(0.2)
            elif status == 503 and time.monotonic() < deadline:
                time.sleep(min(float(headers.get("Retry-After", "1")), 0.5))
            else:
                with self.lock:
                    self.failures.append((self.homes[account], account, key, status, body))
                return status


def _open(served: Served, homes: dict[str, str]) -> None:
    for account, home in homes.items():
        status, body = served.post("/accounts", {"account_id": account, "currency": "EUR"}, f"open-{account}", api=served.apis[home])
        assert status == 201, body


def test_a_planned_fail_over_of_a_busy_region_loses_nothing_while_writes_go_on(data_dir: Path) -> None:
    served = Served(data_dir, "--regions", f"{EAST},{WEST}", "--lag-ms", "20", "--jitter-ms", "30")
    homes = {"e1": EAST, "e2": EAST, "w1": WEST}
    try:
        _open(served, homes)
        router = Router(served, homes)
        stop = threading.Event()
        sent = Counter()

        def write(account: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                if router.credit(account, 1 + n % 7, f"{account}-{n}", time.monotonic() + 60) != 201:
                    return
                sent[account] += 1

        writers = [threading.Thread(target=write, args=(a,)) for a in homes]
        for writer in writers:
            writer.start()
        while min(sent.values(), default=0) < 10 and not router.failures:
            time.sleep(0.05)

        moved = regions(served, "failover", "--from", EAST, "--to", WEST)

        while min(sent.values()) < 20 and not router.failures:  # writes went on after the move, at the new home
            time.sleep(0.05)
        stop.set()
        for writer in writers:
            writer.join(timeout=120)
        assert not router.failures, router.failures
        assert moved.returncode == 0, moved.stdout + moved.stderr
        for phase in ("fence: done", "replicate: done", "open: done"):
            assert phase in moved.stdout, moved.stdout
        assert "2 account(s) now homed in eu-west-1" in moved.stdout
        compared = regions(served, "compare", "--timeout", "90")
        assert compared.returncode == 0, compared.stdout + compared.stderr
        for region in (EAST, WEST):
            for account in homes:
                view = served.get(f"/accounts/{account}/balance", api=served.apis[region])
                assert view["balance"] == router.acknowledged[account], (region, account, view)
                assert view["available"] == router.acknowledged[account], (region, account, view)
            assert served.get("/accounts/e1", api=served.apis[region])["home_region"] == WEST
        print(f"planned fail-over under load: refusals followed or retried {dict(router.refusals)}")
    finally:
        assert served.stop() == 0, "".join(served.output[-20:])


def test_a_forced_fail_over_of_two_regions_needs_the_override_then_heals_and_fails_back(data_dir: Path) -> None:
    """With two regions there is no witness: the lease cannot tell a dead region from one that forced the other way."""
    served = Served(data_dir, "--regions", f"{EAST},{WEST}", "--lag-ms", "20", "--jitter-ms", "0", "--lease-seconds", "6")
    homes = {"e1": EAST, "w1": WEST}
    try:
        _open(served, homes)
        router = Router(served, homes)
        assert router.credit("e1", 100, "fund", time.monotonic() + 30) == 201
        assert regions(served, "compare").returncode == 0
        assert regions(served, "partition", "--between", EAST, WEST).returncode == 0
        router.credit("e1", 5, "cut-off", time.monotonic())  # in the east, before its lease runs out: may be 201

        deadline = time.monotonic() + 30
        while True:  # both sides fence themselves: with two regions, a split leaves no majority
            status, body, headers = _post(f"{served.apis[EAST]}/accounts/e1/credits", {"amount": 1, "currency": "EUR"}, "probe", served.token)
            if status == 503 and body["code"] == "region_fenced":
                break
            if status == 201 and headers.get("Idempotent-Replayed") != "true":
                router.acknowledged["e1"] += 1  # taken before the east's lease ran out
            assert time.monotonic() < deadline, (status, body)
            time.sleep(0.2)
        assert headers.get("Retry-After")
        with served.open("/accounts/e1/balance", served.apis[EAST]) as read:
            assert read.headers["Region-Fenced"] == "true"  # reads go on, and say so

        waited = regions(served, "failover", "--from", EAST, "--to", WEST, "--force", "--timeout", "3")
        assert waited.returncode != 0 and "may still be heard" in waited.stdout + waited.stderr, waited.stdout + waited.stderr
        forced = regions(served, "failover", "--from", EAST, "--to", WEST, "--force", "--override-lease")

        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "lease: not waited for" in forced.stdout and "take over: done" in forced.stdout
        assert router.credit("e1", 7, "after-move", time.monotonic() + 30) == 201
        assert router.homes["e1"] == WEST
        assert regions(served, "heal").returncode == 0
        compared = regions(served, "compare", "--timeout", "90")
        assert compared.returncode == 0, compared.stdout + compared.stderr
        expected = router.acknowledged["e1"]
        for region in (EAST, WEST):
            view = served.get("/accounts/e1/balance", api=served.apis[region])
            assert (view["balance"], view["available"]) == (expected, expected), (region, view)
        status, body, _ = _post(f"{served.apis[EAST]}/accounts/w1/credits", {"amount": 1, "currency": "EUR"}, "east-still-out", served.token)
        assert (status, body["code"]) == (503, "region_fenced"), "the east took writes before it was failed back to"

        back = regions(served, "failover", "--from", WEST, "--to", EAST)

        assert back.returncode == 0, back.stdout + back.stderr
        assert "readmit: done" in back.stdout
        router.homes["e1"] = WEST  # the router learns the way back from the 421
        deadline = time.monotonic() + 30
        assert router.credit("e1", 11, "home-again", deadline) == 201
        assert router.homes["e1"] == EAST
    finally:
        assert served.stop() == 0, "".join(served.output[-20:])


def test_a_region_added_while_writes_go_on_holds_everything_and_then_homes_accounts(data_dir: Path) -> None:
    served = Served(data_dir, "--regions", f"{EAST},{WEST}", "--lag-ms", "20", "--jitter-ms", "30")
    homes = {"e1": EAST, "w1": WEST}
    try:
        _open(served, homes)
        router = Router(served, homes)
        stop = threading.Event()
        sent = Counter()

        def write(account: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                if router.credit(account, 1 + n % 5, f"{account}-{n}", time.monotonic() + 60) != 201:
                    return
                sent[account] += 1
                time.sleep(0.1)  # a steady load (about 15 writes/s in all), not a saturating one

        writers = [threading.Thread(target=write, args=(a,)) for a in homes]
        for writer in writers:
            writer.start()
        while min(sent.values(), default=0) < 10 and not router.failures:
            time.sleep(0.05)

        added = regions(served, "add", "ap-southeast-1")

        stop.set()
        for writer in writers:
            writer.join(timeout=120)
        assert not router.failures, router.failures
        assert added.returncode == 0, added.stdout + added.stderr
        assert "backfilling" in added.stdout and "ap-southeast-1 joined" in added.stdout
        print(added.stdout)
        ap = served.state["regions"]["ap-southeast-1"]["api_url"]
        status, body = served.post("/accounts", {"account_id": "a1", "currency": "EUR"}, "open-a1", api=ap)
        assert status == 201 and body["home_region"] == "ap-southeast-1", body
        compared = regions(served, "compare", "--timeout", "90")
        assert compared.returncode == 0, compared.stdout + compared.stderr
        assert "3 regions agree" in compared.stdout
        for account in homes:
            view = served.get(f"/accounts/{account}/balance", api=ap)
            assert view["balance"] == router.acknowledged[account], (account, view)
    finally:
        assert served.stop() == 0, "".join(served.output[-20:])
