"""`ledger serve` as a user runs it: a subprocess with its own embedded DynamoDB Local.

The README's tour runs verbatim against it (only the port differs), the data
survives a restart on the same data directory, and stopping leaves no process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


from runtime.dynamodb_local import port_is_free
from serving import Served, ledger_command

ROOT = Path(__file__).resolve().parents[2]


def _readme_tour() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- readme-tour:start -->")[1].split("<!-- readme-tour:end -->")[0]
    return block.split("```bash")[1].split("```")[0]


def test_the_readme_tour_runs_against_a_real_server(served: Served) -> None:
    script = _readme_tour().replace("API=http://127.0.0.1:8000", f"API={served.api}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATA_DIR"] = str(served.data_dir)  # where `ledger tokens issue` finds the serve's key

    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Idempotent-Replayed: true" in result.stdout
    for code in ("insufficient_funds", "validation_error", "idempotency_key_missing", "idempotency_key_reused",
                 "unauthorized", "account_not_found"):
        assert f'"code":"{code}"' in result.stdout
    history = served.get("/accounts/alice/events?limit=1000")["events"]
    assert [e["type"] for e in history] == [
        "account.opened", "account.credited", "account.debited", "account.debited", "account.credited",
    ]  # fmt: skip
    assert history[-1]["reverses"] == history[2]["transaction_id"]  # the coffee's reversal
    assert sum(e.get("amount", 0) * (1 if e["type"] == "account.credited" else -1) for e in history) == 750
    assert '"reversed_by"' in result.stdout and '"digest"' in result.stdout


def test_the_ledger_survives_a_restart_and_stopping_leaves_no_process(served: Served, data_dir: Path) -> None:
    request = urllib.request.Request(
        served.api + "/accounts",
        data=json.dumps({"account_id": "carol", "currency": "USD"}).encode(),
        headers={**served.auth, "Content-Type": "application/json", "Idempotency-Key": "open-carol"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()

    assert served.stop() == 0
    assert port_is_free(served.dynamodb_port), "DynamoDB Local outlived ledger serve"

    again = Served(data_dir)
    try:
        assert again.get("/accounts/carol")["currency"] == "USD"
        assert [e["type"] for e in again.get("/accounts/carol/events")["events"]] == ["account.opened"]
    finally:
        assert again.stop() == 0


def test_ctrl_c_stops_a_serve_started_with_sigint_ignored(data_dir: Path) -> None:
    """A script's `ledger serve &` (or nohup) inherits SIGINT as ignored; Ctrl-C must still stop it."""
    served = Served(data_dir, sigint_ignored=True)

    assert served.stop(timeout=30) == 0
    assert port_is_free(served.dynamodb_port), "DynamoDB Local outlived ledger serve"


def test_operator_commands_find_the_running_serve_through_its_data_dir(served: Served, data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    served.post("/accounts", {"account_id": "dora", "currency": "EUR"}, "open-dora")

    verified = subprocess.run(
        [*ledger_command(), "projections", "verify"], capture_output=True, text=True, timeout=120, env=env, cwd=data_dir.parent
    )  # the default data dir is ./.ledger-data: point it at this one instead
    pointed = subprocess.run(
        [*ledger_command(), "projections", "verify", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120, env=env
    )

    assert verified.returncode == 2 and "no `ledger serve` has run in .ledger-data" in verified.stderr, verified.stderr
    assert pointed.returncode == 0, pointed.stdout + pointed.stderr
    assert "every balance equals the fold of its log" in pointed.stdout


def test_serve_is_secure_by_default(served: Served, data_dir: Path) -> None:
    """A key made on first start (owner-only), the ready line's operator token works, and no token is a 401."""
    assert (data_dir / "token-signing-key").stat().st_mode & 0o077 == 0
    status, body = served.post("/accounts", {"account_id": "erin", "currency": "EUR"}, "open-erin")
    assert status == 201, body

    try:
        urllib.request.urlopen(served.api + "/accounts/erin", timeout=10)
        raise AssertionError("read without a token")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="dynamo-ledger"'
        assert json.load(refused)["code"] == "unauthorized"
    issued = subprocess.run(
        [*ledger_command(), "tokens", "issue", "--principal", "erin-app", "--role", "reader", "--accounts", "erin",
         "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    reader = {"Authorization": f"Bearer {issued.stdout.strip()}"}
    with urllib.request.urlopen(urllib.request.Request(served.api + "/accounts/erin", headers=reader), timeout=10) as read:
        assert json.load(read)["account_id"] == "erin"
    assert urllib.request.urlopen(urllib.request.Request(served.api + "/openapi.json"), timeout=10).status == 200


def test_ledger_status_shows_what_serve_counted(served: Served, data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    assert served.post("/accounts", {"account_id": "finn", "currency": "EUR"}, "open-finn")[0] == 201
    assert served.post("/accounts/finn/credits", {"amount": 5, "currency": "EUR"}, "pay-finn")[0] == 201
    assert served.post("/accounts/finn/credits", {"amount": 5, "currency": "EUR"}, "pay-finn")[0] == 201  # a replay
    assert served.post("/accounts/finn/credits", {"amount": 6, "currency": "EUR"}, "pay-finn")[0] == 422  # key reused

    deadline = time.monotonic() + 60
    while True:  # published once a second; the projector applies both events
        shown = subprocess.run([*ledger_command(), "status", "--json", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        region = (report.get("regions") or [{}])[0]
        if region and region["projector"]["totals"].get("EventsProjected", 0) >= 2:
            break
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.2)
    assert region["api"]["totals"] == {"WritesRecorded": 2, "WritesReplayed": 1, "IdempotencyKeyMismatches": 1, "Refusals": 1}
    assert region["projector"]["lag_ms"]["samples"] >= 1
    assert report["tables"]["items"]["dev-ledger-events"] == 2 and report["tables"]["exact"]

    human = subprocess.run([*ledger_command(), "status", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60, env=env)
    assert "writes recorded 2, replayed 1, key mismatches 1" in human.stdout, human.stdout
    assert "events projected 2" in human.stdout and "lag p50" in human.stdout
