"""A write-ahead journal for the embedded DynamoDB Local: no acknowledged write lost in a crash.

Why: DynamoDB Local answers a write a few milliseconds before its SQLite
transaction is on disk. Killed in that window (SIGKILL, OOM killer, a power cut of
the laptop), it comes back without writes it had acknowledged: measured here, 1 of
about 100-150 acknowledged transactions lost when the Java process was killed in
the middle of a burst, each acknowledged 1-4 ms before the kill. The ledger had
answered 201 for them, so their clients never retry.

What: every write call that DynamoDB Local acknowledges (HTTP 200) is appended to
this journal and fsynced before botocore hands the answer to the caller, so the
API answers 2xx only for writes that are on disk here. When `ledger serve` starts,
it replays the journal in order before it serves anything. Every ledger write is
conditional (put-if-absent events and idempotency records, guarded account
updates, seen-set conditions in the projector, version checks in rebuild), so a
replayed write that is already there fails its condition and changes nothing; a
lost one is applied again, and its stream record reaches the projector, which
deduplicates by event identity. After the replay the journal keeps only the
writes that had to be applied again (they are acknowledged, and as fragile, once
more); the rest are proven on disk.

Rule for code that writes through a journaled client: every write must be
idempotent when replayed after later writes (conditional, or a pure overwrite).

Operators' commands that write (`projections rebuild`, `audit close`) find the
running `serve` through its data directory and append to the same journal; the
file is locked per append, so processes do not interleave lines.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

try:
    import fcntl
except ImportError:  # Windows: one process per journal
    fcntl = None  # type: ignore[assignment]

WRITE_OPERATIONS = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems")
_ALREADY_THERE = {"ConditionalCheckFailedException"}
_CONTEXT_KEY = "ledger_journal_params"


class JournalError(BotoCoreError):
    """The journal could not be written: the write is not acknowledged (the caller sees a failure and retries)."""

    fmt = "the write journal could not be written: {error}"


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if isinstance(value, set):
        return [_encode(item) for item in sorted(value)]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


@dataclass
class ReplayReport:
    """What a replay found: writes already on disk, writes applied again, writes that failed."""

    present: int = 0
    reapplied: int = 0
    failed: list[str] = field(default_factory=list)


class WriteJournal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- recording ----------------------------------------------------------------

    def attach(self, client: Any) -> Any:
        """Journal every acknowledged write `client` makes from now on; returns the client."""
        events = client.meta.events
        for operation in WRITE_OPERATIONS:
            events.register(f"before-parameter-build.dynamodb.{operation}", self._remember)
            events.register(f"after-call.dynamodb.{operation}", self._record)
        return client

    @staticmethod
    def _remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_CONTEXT_KEY] = json.dumps(_encode(params), separators=(",", ":"))

    def _record(self, http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
        params = context.get(_CONTEXT_KEY)
        if params is None or http_response is None or http_response.status_code != 200:
            return
        self.append(f'{{"op":"{model.name}","params":{params}}}\n')

    def append(self, line: str) -> None:
        """Append one line and fsync it; raises `JournalError` if it is not on disk."""
        data = line.encode("utf-8")
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)  # closing releases the flock
        except OSError as exc:
            raise JournalError(error=exc) from exc

    # -- recovery -----------------------------------------------------------------

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """Every complete entry, in order (a torn last line, from a crash mid-append, is not one)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn line followed by later appends: that write was never acknowledged
            found.append((entry["op"], _decode(entry["params"])))
        return found

    def replay(self, client: Any) -> ReplayReport:
        """Apply every journaled write again, in order, to `client` (not journaled); keep the re-applied ones."""
        report = ReplayReport()
        kept: list[str] = []
        for operation, params in self.entries():
            params.pop("ClientRequestToken", None)  # the token's memory did not survive the crash either
            try:
                getattr(client, _method_name(operation))(**params)
            except ClientError as exc:
                if _already_there(exc):
                    report.present += 1
                else:
                    report.failed.append(f"{operation}: {exc}")
                continue
            report.reapplied += 1
            kept.append(json.dumps({"op": operation, "params": _encode(params)}, separators=(",", ":")) + "\n")
        self._rewrite(kept)
        return report

    def _rewrite(self, lines: list[str]) -> None:
        temp = self.path.with_name(self.path.name + ".compacting")
        with open(temp, "w", encoding="utf-8") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _already_there(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _ALREADY_THERE:
        return True
    if code != "TransactionCanceledException":
        return False
    reasons = [reason.get("Code") for reason in exc.response.get("CancellationReasons") or []]
    return "ConditionalCheckFailed" in reasons and set(reasons) <= {"ConditionalCheckFailed", "None", None}


def _method_name(operation: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in operation).lstrip("_")
