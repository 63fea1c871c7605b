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


def ledger_command() -> list[str]:
    script = Path(sys.executable).with_name("ledger")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]


class Served:
    """A running `ledger serve`; `stop()` sends SIGINT as Ctrl-C would.

    Its output is read continuously in a thread, so a chatty server never blocks
    on a full pipe.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        self.process = subprocess.Popen(
            [*ledger_command(), "serve", "--port", str(pick_free_port()), "--data-dir", str(data_dir)],
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
                self.api, self.dynamodb_endpoint, self.dynamodb_port = match.group(1), match.group(2), int(match.group(3))
                break
        else:
            raise AssertionError("ledger serve stopped before it was ready:\n" + "".join(self.output))
        self._reader = threading.Thread(target=self._read_rest, daemon=True)
        self._reader.start()

    def _read_rest(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.output.append(line)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.api + path, timeout=10) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any], key: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.api + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
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
        java = self._java_pid()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            _kill(java)
            raise AssertionError(f"ledger serve ignored signal {sig} for {timeout} s and was killed:\n" + "".join(self.output))
        finally:
            self._reader.join(timeout=5)
        _kill(java)  # it dies with its parent; this is only the belt to those braces
        return code

    def _java_pid(self) -> int | None:
        try:
            return self.state.get("dynamodb_pid")
        except (OSError, ValueError):
            return None


def _kill(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
