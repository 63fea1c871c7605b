"""`ledger serve` as a user runs it: a subprocess with its own embedded DynamoDB Local.

The README's tour runs verbatim against it (only the port differs), the data
survives a restart on the same data directory, and stopping leaves no process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.dynamodb_local import ensure_installed, pick_free_port, port_is_free

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"ledger ready: API (http://\S+) \(DynamoDB Local at (http://[\d.]+:(\d+))")


def _ledger_command() -> list[str]:
    script = Path(sys.executable).with_name("ledger")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]


class Served:
    """A running `ledger serve`; `stop()` sends SIGINT as Ctrl-C would."""

    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        self.process = subprocess.Popen(
            [*_ledger_command(), "serve", "--port", str(pick_free_port()), "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=data_dir.parent,
        )
        self.output: list[str] = []
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            if match := READY.search(line):
                self.api, self.dynamodb_port = match.group(1), int(match.group(3))
                return
        raise AssertionError("ledger serve stopped before it was ready:\n" + "".join(self.output))

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.api + path, timeout=10) as response:
            return json.load(response)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=30)
        self.output.extend(self.process.stdout.readlines())  # type: ignore[union-attr]
        return code


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ensure_installed()
    return tmp_path / "ledger-data"


@pytest.fixture
def served(data_dir: Path) -> Iterator[Served]:
    server = Served(data_dir)
    yield server
    if server.process.poll() is None:
        server.stop()


def _readme_tour() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- readme-tour:start -->")[1].split("<!-- readme-tour:end -->")[0]
    return block.split("```bash")[1].split("```")[0]


def test_the_readme_tour_runs_against_a_real_server(served: Served) -> None:
    script = _readme_tour().replace("API=http://127.0.0.1:8000", f"API={served.api}")

    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Idempotent-Replayed: true" in result.stdout
    for code in ("insufficient_funds", "validation_error", "idempotency_key_missing", "idempotency_key_reused"):
        assert f'"code": "{code}"' in result.stdout
    history = served.get("/accounts/alice/events?limit=1000")["events"]
    assert [e["type"] for e in history] == ["account.opened", "account.credited", "account.debited", "account.debited"]
    assert sum(e.get("amount", 0) * (1 if e["type"] == "account.credited" else -1) for e in history) == 550


def test_the_ledger_survives_a_restart_and_stopping_leaves_no_process(served: Served, data_dir: Path) -> None:
    request = urllib.request.Request(
        served.api + "/accounts",
        data=json.dumps({"account_id": "carol", "currency": "USD"}).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": "open-carol"},
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
