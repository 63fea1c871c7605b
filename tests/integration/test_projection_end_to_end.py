"""Balances follow writes on a real `ledger serve`: DynamoDB Local, its stream, the poller, HTTP.

The test keeps its own model of what it sent, so "converged" means equal to what
was recorded, not merely equal to another reading of the same store. The second
test kills the server (SIGKILL, no clean-up of any kind) right after a burst of
writes, while the projector is still behind, and restarts it on the same data:
the records it redelivers must not be counted twice; nor may any when the
checkpoint is lost and the whole stream is replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from runtime.dynamodb_local import port_is_free
from serving import Served, ledger_command

ACCOUNTS = [f"acct-{n}" for n in range(10)]
FIGURES = ("balance", "credits", "debits", "event_count", "as_of")
EVENTS_TABLE = "dev-ledger-events"  # `ledger serve` runs stage dev unless told otherwise


class Model:
    """What the test recorded: balance and event count per account, and every transfer."""

    def __init__(self) -> None:
        self.balance: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.transfers: dict[str, tuple[str, str, int]] = {}  # transaction id -> (from, to, amount)

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
    """`count` random credits, debits and transfers sent from a pool, half of them sent twice with the same key."""
    requests, transfers = [], {}
    for n in range(count):
        kind = rng.choice(["credit", "debit", "transfer"])
        amount = rng.randint(1, 10_000)
        source, target = rng.sample(ACCOUNTS, 2)
        key = f"{tag}-{n}"
        if kind == "transfer":
            requests.append(("/transfers", {"from_account": source, "to_account": target, "amount": amount, "currency": "EUR"}, key))
            transfers[key] = (source, target, amount)
            model.moved(source, -amount)
            model.moved(target, amount)
        else:
            requests.append((f"/accounts/{source}/{kind}s", {"amount": amount, "currency": "EUR"}, key))
            model.moved(source, amount if kind == "credit" else -amount)
        if n % 2:
            requests.append(requests[-1])  # a client retry: must replay, not record

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda request: served.post(*request), requests))
    assert {status for status, _ in answers} <= {200, 201, 409}, Counter(status for status, _ in answers)
    # 409 is a retry racing its original ("in flight, retry"): retry it until it is a replay.
    deadline = time.monotonic() + 10
    for i, (request, (status, body)) in enumerate(zip(requests, answers)):
        while status == 409:
            assert time.monotonic() < deadline, f"{request[2]} stayed in flight: {body}"
            time.sleep(0.05)
            status, body = served.post(*request)
        assert status in (200, 201), body
        answers[i] = (status, body)

    recorded: dict[str, set[str]] = defaultdict(set)
    for (_, _, key), (_, body) in zip(requests, answers):
        recorded[key].add(body["transaction_id"])
    replayed_another = {key: ids for key, ids in recorded.items() if len(ids) != 1}
    assert not replayed_another, f"a retry did not replay its original: {replayed_another}"
    for key, movement in transfers.items():
        model.transfers[recorded[key].pop()] = movement


def _figures(balance: dict) -> dict:
    return {k: balance[k] for k in FIGURES}


def converge(served: Served, model: Model, timeout: float = 40.0) -> dict[str, dict]:
    """The strong balances equal the model at once; poll the projected ones until they equal them."""
    strong = {a: served.get(f"/accounts/{a}/balance?consistency=strong") for a in ACCOUNTS}
    assert {a: (strong[a]["balance"], strong[a]["event_count"]) for a in ACCOUNTS} == {
        a: (model.balance[a], model.events[a]) for a in ACCOUNTS
    }, "the log does not hold what was sent"
    deadline = time.monotonic() + timeout
    while True:
        views = {a: served.get(f"/accounts/{a}/balance") for a in ACCOUNTS}
        # A view only ever gains events: one ahead of the log has counted something twice.
        ahead = {a: (views[a]["event_count"], strong[a]["event_count"]) for a in ACCOUNTS if views[a]["event_count"] > strong[a]["event_count"]}
        assert not ahead, f"the view counts more events than the log (view, log): {ahead}"
        if all(_figures(views[a]) == _figures(strong[a]) for a in ACCOUNTS):
            return views
        if time.monotonic() > deadline:
            wrong = {a: (_figures(views[a]), _figures(strong[a])) for a in ACCOUNTS if _figures(views[a]) != _figures(strong[a])}
            raise AssertionError(f"projected balances did not converge in {timeout} s (view, strong): {wrong}")
        time.sleep(0.2)


def assert_balances_match(views: dict[str, dict], model: Model) -> None:
    assert {a: (v["balance"], v["event_count"]) for a, v in views.items()} == {
        a: (model.balance[a], model.events[a]) for a in ACCOUNTS
    }
    for view in views.values():
        assert view["credits"] - view["debits"] == view["balance"]


def assert_transfers_sum_to_zero(served: Served, model: Model) -> None:
    """From the server's own history: each transfer is one debit and one equal credit, and they net to zero."""
    legs: dict[str, list[dict]] = defaultdict(list)
    for account in ACCOUNTS:
        page = served.get(f"/accounts/{account}/events?limit=1000")
        assert not page.get("next_cursor"), "more history than one page; raise the limit"
        for event in page["events"]:
            if event["transaction_type"] == "transfer":
                legs[event["transaction_id"]].append(event)
    assert set(legs) == set(model.transfers), "the transfers on record are not the ones sent"
    net: Counter[str] = Counter()
    for transaction_id, pair in legs.items():
        by_type = {event["type"]: event for event in pair}
        assert len(pair) == 2 and set(by_type) == {"account.debited", "account.credited"}, pair
        debit, credit = by_type["account.debited"], by_type["account.credited"]
        assert (debit["entity_id"], credit["entity_id"], debit["amount"]) == model.transfers[transaction_id]
        assert credit["amount"] == debit["amount"]
        net[debit["entity_id"]] -= debit["amount"]
        net[credit["entity_id"]] += credit["amount"]
    assert legs, "the burst recorded no transfer"
    assert sum(net.values()) == 0


def projections_verify(served: Served) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [*ledger_command(), "projections", "verify", "--endpoint-url", served.dynamodb_endpoint],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def kill_hard(served: Served) -> None:
    """SIGKILL `ledger serve`: no handler runs, no checkpoint is saved, the poller dies wherever it is.

    DynamoDB Local is its child; serve starts it with PR_SET_PDEATHSIG, so the kernel
    must stop it too. It has to be gone before a restart opens the same files.
    """
    java = [pid for pid in _children(served.process.pid) if b"DynamoDBLocal.jar" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(java) == 1, f"expected one DynamoDB Local child, found {java}"
    served.process.kill()
    served.process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while _alive(java[0]) or not port_is_free(served.dynamodb_port):
        if time.monotonic() > deadline:
            if _alive(java[0]):
                os.kill(java[0], signal.SIGKILL)
            raise AssertionError("DynamoDB Local outlived a SIGKILLed ledger serve")
        time.sleep(0.1)


def stream_records_after(served: Served, checkpoint: dict) -> int:
    """How many INSERTs of the events stream lie after the poller's checkpoint, i.e. still had to be projected."""
    options = {"endpoint_url": served.dynamodb_endpoint, "region_name": "us-east-1", "aws_access_key_id": "local", "aws_secret_access_key": "local"}
    arn = boto3.client("dynamodb", **options).describe_table(TableName=EVENTS_TABLE)["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", **options)
    saved = checkpoint.get("streams", {}).get(arn, {}).get("shards", {})
    pending = 0
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        entry = saved.get(shard["ShardId"], {})
        if entry.get("finished"):
            continue
        start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": entry["sequence_number"]} if entry.get("sequence_number") else {"ShardIteratorType": "TRIM_HORIZON"}
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], **start)["ShardIterator"]
        while iterator:
            response = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not response["Records"]:
                break
            pending += sum(record["eventName"] == "INSERT" for record in response["Records"])
            iterator = response.get("NextShardIterator")
    return pending


def read_checkpoint(data_dir: Path) -> dict:
    checkpoint = data_dir / "dev-stream-checkpoint.json"
    return json.loads(checkpoint.read_text()) if checkpoint.exists() else {}


def wait_drained(served: Served, data_dir: Path, timeout: float = 30.0) -> None:
    """Poll until the poller's checkpoint covers the whole stream: every record, redeliveries included, was handled.

    A view can equal the log before that (when the records still to come were applied
    before a crash), so a double count would only show afterwards.
    """
    deadline = time.monotonic() + timeout
    while (pending := stream_records_after(served, read_checkpoint(data_dir))) > 0:
        assert time.monotonic() < deadline, f"the projector left {pending} record(s) unhandled after {timeout} s"
        time.sleep(0.2)


def killed_mid_stream(served: Served, data_dir: Path, model: Model, rng: random.Random, attempts: int = 5) -> Served:
    """Record a burst, SIGKILL serve right after the last write returned, restart it; until the kill left records unprojected.

    The projector usually trails the last write by a few hundred milliseconds, but it can
    catch up first; then the kill interrupted nothing and the test would prove less. So
    the checkpoint the kill left on disk is read before the restart (the restarted poller
    moves it at once) and, if it already covers the stream, the burst is recorded again.
    """
    for attempt in range(attempts):
        record_burst(served, model, rng, f"before-kill-{attempt}", 60)
        kill_hard(served)
        left_on_disk = read_checkpoint(data_dir)
        served = Served(data_dir)
        if stream_records_after(served, left_on_disk):
            return served
    served.stop()
    raise AssertionError(f"the projector had checkpointed every record before each of {attempts} kills; record larger bursts")


def test_balances_converge_to_what_was_recorded(served: Served) -> None:
    model, rng = Model(), random.Random(7)
    open_all(served, model)
    record_burst(served, model, rng, "first", 60)

    views = converge(served, model)

    assert_balances_match(views, model)
    assert_transfers_sum_to_zero(served, model)


def test_killed_mid_stream_and_restarted_counts_nothing_twice(served: Served, data_dir: Path) -> None:
    model, rng = Model(), random.Random(11)
    open_all(served, model)
    converge(served, model)
    again = killed_mid_stream(served, data_dir, model, rng)
    try:
        record_burst(again, model, rng, "after-restart", 10)
        wait_drained(again, data_dir)
        views = converge(again, model)
        assert_balances_match(views, model)
        assert_transfers_sum_to_zero(again, model)

        checked = projections_verify(again)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "every balance equals the fold of its log" in checked.stdout, checked.stdout
        assert "DRIFT" not in checked.stdout
    finally:
        stopped = again.stop(signal.SIGTERM)
    assert stopped == 0, "".join(again.output[-20:])

    # Lose the checkpoint: the next start replays the whole stream, every event of which is counted already.
    (data_dir / "dev-stream-checkpoint.json").unlink()
    replayed = Served(data_dir)
    try:
        wait_drained(replayed, data_dir)
        assert_balances_match(converge(replayed, model), model)
    finally:
        stopped = replayed.stop()
    assert stopped == 0, "".join(replayed.output[-20:])
    dead_letters = data_dir / "dev-dead-letters.jsonl"
    assert not dead_letters.exists() or dead_letters.read_text() == "", "a record was given up on"
