"""`ledger serve --regions` as a user runs it: two regions on DynamoDB Local, a partition, writes on both sides, heal.

Writes go to both regions (each account debited in its home, transfers between
homes included) before, during and after a partition of both directions; then
`ledger regions heal` and `ledger regions compare` (which waits for replication
and the projectors to drain) must exit 0, and every region's balances must equal
a model of what was acknowledged, with every credit from the other home available.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import Counter
from pathlib import Path

from serving import Served, ledger_command

REGIONS = ("us-east-1", "eu-west-1")
ACCOUNTS = {"east-a": "us-east-1", "east-b": "us-east-1", "west-a": "eu-west-1", "west-b": "eu-west-1"}


def regions(served: Served, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [*ledger_command(), "regions", *args, "--data-dir", str(served.data_dir)],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip


def write_burst(served: Served, model: Counter, rng: random.Random, tag: str, count: int) -> None:
    for n in range(count):
        source, target = rng.sample(sorted(ACCOUNTS), 2)
        amount = rng.randint(1, 50)
        home = served.apis[ACCOUNTS[source]]
        if rng.random() < 0.5:
            status, body = served.post("/transfers", {"from_account": source, "to_account": target, "amount": amount, "currency": "EUR"}, f"{tag}-{n}", api=home)
            if status == 201:
                model[source] -= amount
                model[target] += amount
        else:
            status, body = served.post(f"/accounts/{source}/credits", {"amount": amount, "currency": "EUR"}, f"{tag}-{n}", api=home)
            if status == 201:
                model[source] += amount
        assert status in (201, 422), body  # 422: insufficient funds on a no-overdraft account


def test_two_regions_partitioned_and_healed_converge_to_what_was_acknowledged(data_dir: Path) -> None:
    # A lease longer than the test: this one is about convergence, not about fencing (test_failover_serve.py).
    served = Served(data_dir, "--regions", ",".join(REGIONS), "--lag-ms", "20", "--jitter-ms", "80", "--lease-seconds", "300")
    try:
        rng, model = random.Random(5), Counter()
        for account, home in ACCOUNTS.items():
            status, body = served.post("/accounts", {"account_id": account, "currency": "EUR"}, f"open-{account}", api=served.apis[home])
            assert status == 201, body
            status, body = served.post(f"/accounts/{account}/credits", {"amount": 500, "currency": "EUR"}, f"fund-{account}", api=served.apis[home])
            assert status == 201, body
            model[account] += 500
        assert regions(served, "compare", "--timeout", "60").returncode == 0  # every account known everywhere

        write_burst(served, model, rng, "before", 20)
        cut = regions(served, "partition", "--between", *REGIONS)
        assert cut.returncode == 0, cut.stderr
        write_burst(served, model, rng, "during", 30)
        stuck = regions(served, "compare", "--timeout", "2")
        assert stuck.returncode != 0 and "partitioned" in stuck.stderr, stuck.stdout + stuck.stderr
        assert regions(served, "heal").returncode == 0
        write_burst(served, model, rng, "after", 10)

        compared = regions(served, "compare", "--timeout", "90")

        assert compared.returncode == 0, compared.stdout + compared.stderr
        assert "2 regions agree" in compared.stdout
        for region in REGIONS:
            for account in ACCOUNTS:
                view = served.get(f"/accounts/{account}/balance", api=served.apis[region])
                assert view["balance"] == model[account], (region, account, view)
                assert (view["available"], view["in_flight"]) == (model[account], 0), (region, account, view)
        status = regions(served, "status")
        assert status.returncode == 0 and "PARTITIONED" not in status.stdout
    finally:
        assert served.stop() == 0, "".join(served.output[-20:])


def _readme_block(name: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]
    return block.split("```bash")[1].split("```")[0]


def _run_readme_block(served: Served, name: str, data_dir: Path) -> subprocess.CompletedProcess:
    script = _readme_block(name)
    for short, default in (("US", 8000), ("EU", 8001), ("AP", 8002)):
        region = {"US": "us-east-1", "EU": "eu-west-1", "AP": "ap-southeast-1"}[short]
        script = script.replace(f"{short}=http://127.0.0.1:{default}", f"{short}={served.apis[region]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=300, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip


def test_the_readme_multi_region_tour_and_fail_over_runbook_run_as_written(data_dir: Path) -> None:
    served = Served(data_dir, "--regions", "us-east-1,eu-west-1,ap-southeast-1")  # as the README starts it
    try:
        result = _run_readme_block(served, "multi-region-tour", data_dir)

        assert result.returncode == 0, result.stdout + result.stderr
        assert '"code":"wrong_region"' in result.stdout and '"home_url"' in result.stdout
        assert "3 regions agree" in result.stdout
        ben = served.get("/accounts/ben/balance", api=served.apis["eu-west-1"])
        assert (ben["balance"], ben["available"], ben["in_flight"]) == (380, 380, 0)

        runbook = _run_readme_block(served, "failover-runbook", data_dir)

        assert runbook.returncode == 0, runbook.stdout + runbook.stderr
        out = runbook.stdout
        assert out.count('"code":"wrong_region"') == 1, out  # the old home redirects after the planned move
        assert "1 account(s) now homed in eu-west-1" in out and "lease: done" in out and "readmit: done" in out
        assert "3 regions agree" in out and "nothing to reconcile" in out
        assert out.count('"account.debited"') == 3, out  # dan in EU, ann in EU, ann home again
        ann = served.get("/accounts/ann", api=served.apis["ap-southeast-1"])
        assert ann["home_region"] == "us-east-1" and ann["write_epoch"] == 3
    finally:
        assert served.stop() == 0, "".join(served.output[-20:])
