"""`ledger serve` as a subprocess, the way a user starts it, for the integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from runtime.dynamodb_local import pick_free_port

READY = re.compile(r"ledger ready: API (http://\S+) \(DynamoDB Local at (http://[\d.]+:(\d+))")
READY_REGIONS = re.compile(r"ledger ready: \d+ regions: (.*?) \(DynamoDB Local per region")
TOKEN = re.compile(r"TOKEN=(\S+)")


def ledger_command() -> list[str]:
    script = Path(sys.executable).with_name("ledger")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]


class Served:
    """A running `ledger serve`; `stop()` sends SIGINT as Ctrl-C would.

    Its output is read continuously in a thread, so a chatty server never blocks
    on a full pipe.
    """

    def __init__(self, data_dir: Path, *options: str, sigint_ignored: bool = False) -> None:
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        port = _free_run_of_ports(4)
        self.process = subprocess.Popen(
            [*ledger_command(), "serve", "--port", str(port), "--data-dir", str(data_dir), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=data_dir.parent,
            # As `cmd &` in a script or nohup leaves it: SIGINT ignored from birth.
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )
        self.output: list[str] = []
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            if token := TOKEN.search(line):  # the ready line's operator token: every role, every account
                self.token = token.group(1)
            if match := READY.search(line):
                self.api, self.dynamodb_endpoint, self.dynamodb_port = match.group(1), match.group(2), int(match.group(3))
                break
            if match := READY_REGIONS.search(line):  # "us-east-1 http://...:8000, eu-west-1 http://...:8001"
                self.apis = dict(part.split(" ") for part in match.group(1).split(", "))
                self.api = next(iter(self.apis.values()))
                break
        else:
            raise AssertionError("ledger serve stopped before it was ready:\n" + "".join(self.output))
        self._reader = threading.Thread(target=self._read_rest, daemon=True)
        self._reader.start()

    def _read_rest(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, api: str | None = None) -> dict:
        return json.load(self.open(path, api))

    def open(self, path: str, api: str | None = None):
        """GET with the operator token; the response (its headers too), for the caller to read."""
        return urllib.request.urlopen(urllib.request.Request((api or self.api) + path, headers=self.auth), timeout=10)

    def post(self, path: str, body: dict[str, Any], key: str, api: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            (api or self.api) + path,
            data=json.dumps(body).encode(),
            headers={**self.auth, "Content-Type": "application/json", "Idempotency-Key": key},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as refused:
            return refused.code, json.load(refused)

    @property
    def state(self) -> dict[str, Any]:
        """What `serve` wrote to its data directory's serve.json."""
        return json.loads((self.data_dir / "serve.json").read_text())

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Stop it as Ctrl-C would; if it does not stop in time, kill it (and its DynamoDB Local) and fail."""
        java = self._java_pids()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            for pid in java:
                _kill(pid)
            raise AssertionError(f"ledger serve ignored signal {sig} for {timeout} s and was killed:\n" + "".join(self.output))
        finally:
            self._reader.join(timeout=5)
        for pid in java:
            _kill(pid)  # it dies with its parent; this is only the belt to those braces
        return code

    def _java_pids(self) -> list[int]:
        try:
            state = self.state
        except (OSError, ValueError):
            return []
        regions = state.get("regions") or {}
        return [int(r["dynamodb_pid"]) for r in regions.values()] or ([state["dynamodb_pid"]] if state.get("dynamodb_pid") else [])


def _free_run_of_ports(count: int) -> int:
    """A port with the next `count - 1` free too (serve --regions takes consecutive ports)."""
    from runtime.dynamodb_local import port_is_free

    for _ in range(50):
        first = pick_free_port()
        if all(port_is_free(first + n) for n in range(count)):
            return first
    raise AssertionError("no run of free ports")


def _kill(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
