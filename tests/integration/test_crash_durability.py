"""No acknowledged write is lost when DynamoDB Local is killed in the middle of a burst.

DynamoDB Local answers a write a few milliseconds before its SQLite transaction is
on disk, so a SIGKILL in that window loses writes it acknowledged (about one in a
hundred and fifty, each acknowledged 1-4 ms before the kill). `ledger serve`
journals every acknowledged write before the API answers and replays the journal
when it starts. This test kills the Java process under four writing threads,
three times over, restarting `serve` on the same data each time, and checks that
every write answered 2xx is in the log exactly once, that no Idempotency-Key was
recorded twice, and that the projected balances equal the fold of the log.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from serving import Served
from test_projection_end_to_end import projections_verify, read_checkpoint, stream_records_after

ACCOUNTS = [f"crash-{n}" for n in range(4)]
CYCLES = 3
ACKS_BEFORE_KILL = 120


def _write_until_refused(served: Served, acked: dict[str, tuple[str, int]], stop: threading.Event, keys) -> None:
    """Credit accounts with fresh keys until the server stops answering 2xx; note what it acknowledged."""
    while not stop.is_set():
        key = next(keys)
        account, amount = _account_of(key), _amount_of(key)
        try:
            status, body = served.post(f"/accounts/{account}/credits", {"amount": amount, "currency": "EUR"}, key)
        except OSError:  # the server is going away
            return
        if status != 201:
            return
        acked[key] = (body["events"][0]["event_id"], amount)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_every_acknowledged_write_survives_kills_of_dynamodb_local(data_dir: Path) -> None:
    served = Served(data_dir)
    acked: dict[str, tuple[str, int]] = {}
    recovered = 0
    try:
        for account in ACCOUNTS:
            status, body = served.post("/accounts", {"account_id": account, "currency": "EUR"}, f"open-{account}")
            assert status == 201, body
        counter = itertools.count()
        keys = (f"crash-write-{next(counter):06d}" for _ in itertools.count())
        for cycle in range(CYCLES):
            stop = threading.Event()
            before = len(acked)
            writers = [threading.Thread(target=_write_until_refused, args=(served, acked, stop, keys)) for _ in range(4)]
            for writer in writers:
                writer.start()
            _wait_for(lambda: len(acked) - before >= ACKS_BEFORE_KILL, 60, "a burst of acknowledged writes")
            os.kill(served.state["dynamodb_pid"], signal.SIGKILL)  # mid-burst: the writers are still sending
            stop.set()
            for writer in writers:
                writer.join(timeout=30)
            # serve notices its database died and stops by itself, saying how to recover.
            assert served.process.wait(timeout=30) == 1, "".join(served.output[-10:])
            served.stop()
            served = Served(data_dir)
            recovered += sum(int(m) for m in re.findall(r"recovered (\d+) acknowledged", "".join(served.output)))

        logged = Counter()
        for account in ACCOUNTS:
            page = served.get(f"/accounts/{account}/events?limit=1000")
            assert page["next_cursor"] is None
            logged.update((e["idempotency_key"], e["event_id"]) for e in page["events"] if e["type"] == "account.credited")
        keys_logged = Counter(key for key, _ in logged)
        lost = {key: event for key, (event, _) in acked.items() if (key, event) not in logged}
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes are gone: {sorted(lost)[:5]}"
        assert max(keys_logged.values()) == 1, "an Idempotency-Key was recorded twice"

        # Balances: each write counted once, whatever the replays made the stream deliver again.
        deadline = time.monotonic() + 60
        while stream_records_after(served, read_checkpoint(data_dir)):
            assert time.monotonic() < deadline, "the projector did not drain"
            time.sleep(0.2)
        checked = projections_verify(served)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for account in ACCOUNTS:
            strong = served.get(f"/accounts/{account}/balance?consistency=strong")
            assert strong["balance"] == sum(_amount_of(key) for key, _ in logged if _account_of(key) == account)
        print(f"crash test: {len(acked)} writes acknowledged over {CYCLES} kills, all present; {recovered} replayed from the journal")
    finally:
        served.stop()


def _account_of(key: str) -> str:
    return ACCOUNTS[int(key[-6:]) % len(ACCOUNTS)]


def _amount_of(key: str) -> int:
    return 1 + int(key[-6:]) % 97
