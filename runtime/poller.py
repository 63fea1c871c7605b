"""Deliver DynamoDB Stream records to the projector the way Lambda does.

On AWS the projector runs as a Lambda function behind an event source mapping
(ESM) on the events table's stream. Locally nothing plays that part: neither
``chalice local`` nor moto delivers stream records to a handler. So ``ledger
serve`` runs a :class:`StreamPoller`, which reads the stream itself and calls
the *same* handler function Lambda calls, ``handler(event, context)``, with
``event = {"Records": [...]}`` in Lambda's DynamoDB Streams shape.

It mirrors the ESM behaviour the projector relies on (DynamoDB Streams with
``ReportBatchItemFailures`` and a retry limit):

- every shard starts at TRIM_HORIZON, then resumes from a checkpoint file;
- batches of up to ``batch_size`` records from one shard, gathered for at most
  ``batching_window_seconds``; order is kept within a shard, and a child shard
  waits until its parent is finished;
- at-least-once delivery with partial batch responses: on failure the
  checkpoint moves to just before the lowest failed sequence number and the
  batch is redelivered from that record after a backoff (the records after it
  come again too, so the handler must be idempotent); a handler that raises
  fails the whole batch;
- a record that fails ``max_attempts`` times goes to a dead-letter file (the
  local stand-in for an on-failure destination) and the shard moves on.

Records are delivered as Lambda sees them, not as boto3 parses them:
``ApproximateCreationDateTime`` is Unix epoch seconds and binary attributes are
base64 text. Each record also carries ``eventSourceARN`` (the stream ARN) and
``awsRegion`` (the streams client's region; DynamoDB Local itself says
``ddblocal``). Records of every ``eventName`` pass through, including DynamoDB
Local's TTL records: filtering is the handler's job.

Give the poller a streams client with short timeouts: a call in flight cannot
be interrupted, so it bounds how fast :meth:`StreamPoller.run` can stop.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError

Handler = Callable[[dict[str, Any], Any], Any]

_CHECKPOINT_VERSION = 1
_MAX_GET_RECORDS_LIMIT = 1000
_ITERATOR_ERRORS = {"ExpiredIteratorException", "TrimmedDataAccessException"}
_REPORTED_FAILURE = "reported in batchItemFailures"
_checkpoint_locks: dict[Path, threading.Lock] = {}
_checkpoint_locks_guard = threading.Lock()


def print_to_stderr(message: str) -> None:
    """The default log: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def stream_arn_of(dynamodb_client: Any, table_name: str) -> str:
    """The ARN of the table's current stream, as an ESM would be configured with."""
    table = dynamodb_client.describe_table(TableName=table_name)["Table"]
    arn = table.get("LatestStreamArn")
    enabled = table.get("StreamSpecification", {}).get("StreamEnabled", False)
    if not arn or not enabled:
        raise ValueError(f"table {table_name} has no enabled stream; enable one (NEW_AND_OLD_IMAGES)")
    return str(arn)


@dataclass(frozen=True)
class PollerConfig:
    """Tuning of a :class:`StreamPoller`; the defaults suit ``ledger serve``."""

    batch_size: int = 100
    batching_window_seconds: float = 0.1  # wait up to this long to fill a batch
    max_attempts: int = 5  # per record; then dead-letter it and move on
    backoff_base_seconds: float = 0.05  # exponential with full jitter, capped
    backoff_cap_seconds: float = 2.0
    idle_sleep_seconds: float = 0.1  # between polls when there is nothing new
    shard_refresh_seconds: float = 5.0  # DescribeStream to find new shards
    # A fresh iterator (after the checkpoint) for every batch. moto binds an iterator to
    # its shard object and replaces that object when it rolls a cancelled transaction
    # back, so a kept iterator reads the rolled-back writes and misses later ones.
    reuse_iterators: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


# What `ledger serve` (one region or several) polls with. Locally a record that fails is
# most likely DynamoDB Local being slow or restarting: be patient before dead-lettering it.
# Batches of up to 1,000 (GetRecords' most): DynamoDB Local's CPU is the projector's
# limit, and a tenth of the GetRecords calls and fewer balance writes per event (an
# account's events of a batch are one write) let it drain faster (bench/projection.py, part 2).
LOCAL_POLLER = PollerConfig(batch_size=_MAX_GET_RECORDS_LIMIT, max_attempts=10, backoff_cap_seconds=5.0)


class LocalLambdaContext:
    """Enough of Lambda's context object for handlers and Powertools decorators."""

    def __init__(self, function_name: str, region: str, timeout_seconds: float = 900.0) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:000000000000:function:{function_name}"
        self.memory_limit_in_mb = 128
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    checkpoint: str | None = None  # last fully processed sequence number
    finished: bool = False
    iterator: str | None = None
    caught_up: bool = False  # the last read found nothing more, and nothing awaits a retry
    failures: int = 0  # consecutive failed passes, for the backoff
    not_before: float = 0.0  # monotonic time before which the shard is not read
    attempts: dict[str, int] = field(default_factory=dict)  # sequence number -> failed deliveries
    errors: dict[str, str] = field(default_factory=dict)  # sequence number -> last error


class _BatchFailed(Exception):
    """The handler's response fails the whole batch (as Lambda reads it)."""


def _lambda_json(value: Any) -> Any:
    """A GetRecords value in Lambda's event form: epoch seconds for times, base64 for bytes."""
    if isinstance(value, dict):
        return {key: _lambda_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_lambda_json(item) for item in value]
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _sequence_number(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"])


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _is_invalid_iterator(exc: ClientError) -> bool:
    code = _error_code(exc)
    if code in _ITERATOR_ERRORS:
        return True
    # DynamoDB Local answers a malformed iterator with a ValidationException.
    return code == "ValidationException" and "iterator" in str(exc).lower()


def _checkpoint_lock(path: Path) -> threading.Lock:
    with _checkpoint_locks_guard:
        return _checkpoint_locks.setdefault(path.resolve(), threading.Lock())


class StreamPoller:
    """Poll one DynamoDB stream and feed its records to a Lambda-style handler.

    ``sleep`` is how :meth:`drain` waits between polls (inject a fake in tests);
    :meth:`run` waits on its stop event instead, so that it stops promptly.
    """

    def __init__(
        self,
        streams_client: Any,
        stream_arn: str,
        handler: Handler,
        checkpoint_path: Path,
        dead_letter_path: Path,
        config: PollerConfig = PollerConfig(),
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = print_to_stderr,
    ) -> None:
        self._client = streams_client
        self.stream_arn = stream_arn
        self._handler = handler
        self.checkpoint_path = Path(checkpoint_path)
        self.dead_letter_path = Path(dead_letter_path)
        self.config = config
        self._sleep = sleep
        self._log_line = log
        self._clock = time.monotonic
        self._random = random.Random()
        self._region = getattr(getattr(streams_client, "meta", None), "region_name", None) or "us-east-1"
        table = stream_arn.split(":table/", 1)[-1].split("/stream/", 1)[0]
        self._label = f"stream poller ({table})"
        self._function_name = f"{table}-stream-handler"
        self._shards: dict[str, _Shard] = {}
        self._saved = self._load_checkpoint()
        self._listing_ok = False
        self._next_refresh = 0.0
        self._refresh_failures = 0
        self._stop: threading.Event | None = None
        self.stats: dict[str, int] = {"delivered": 0, "retried": 0, "dead_lettered": 0, "batches": 0}
        self.last_delivered_at = 0.0  # when the newest record delivered was written (epoch seconds)

    # -- public API ---------------------------------------------------------

    def poll_once(self) -> int:
        """One pass over all shards, at most one batch each; the number of records delivered successfully."""
        if self._clock() >= self._next_refresh:
            self._refresh_shards()
        delivered = 0
        for shard in list(self._shards.values()):
            if self._stopping():
                break
            if shard.finished or not self._parent_done(shard) or shard.not_before > self._clock():
                continue
            delivered += self._poll_shard(shard)
        return delivered

    def drain(self, timeout: float = 30.0) -> None:
        """Poll until every open shard is caught up and every closed one finished."""
        deadline = self._clock() + timeout
        self._next_refresh = 0.0
        self._listing_ok = False
        while True:
            self.poll_once()
            if self._drained():
                return
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"{self._label}: not drained after {timeout} s: {self._pending()}")
            self._sleep(min(self._wait_time(), remaining))

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; transient errors are logged and retried, never raised."""
        self._stop = stop
        unexpected_failures = 0
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                    wait = self._wait_time()
                    unexpected_failures = 0
                except Exception as exc:  # noqa: BLE001 - the poller thread must survive anything
                    unexpected_failures += 1
                    wait = self._backoff(unexpected_failures)
                    self._log(f"unexpected error, retrying in {wait:.2f} s: {type(exc).__name__}: {exc}")
                if wait > 0:
                    stop.wait(wait)
        finally:
            self._stop = None

    def start_thread(self) -> tuple[threading.Thread, threading.Event]:
        """Run :meth:`run` in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name=self._label, daemon=True)
        thread.start()
        return thread, stop

    # -- shards ---------------------------------------------------------------

    def _refresh_shards(self) -> None:
        try:
            listed = self._describe_shards()
        except (BotoCoreError, ClientError) as exc:
            self._refresh_failures += 1
            wait = self._backoff(self._refresh_failures)
            self._next_refresh = self._clock() + wait
            self._log(f"DescribeStream failed, retrying in {wait:.2f} s: {exc}")
            return
        self._refresh_failures = 0
        self._listing_ok = True
        self._next_refresh = self._clock() + self.config.shard_refresh_seconds
        shards: dict[str, _Shard] = {}
        for description in listed:
            shard_id = description["ShardId"]
            shard = self._shards.get(shard_id)
            if shard is None:
                saved = self._saved.get(shard_id, {})
                shard = _Shard(
                    shard_id=shard_id,
                    parent_id=description.get("ParentShardId"),
                    checkpoint=saved.get("sequence_number"),
                    finished=bool(saved.get("finished", False)),
                )
            shards[shard_id] = shard
        self._shards = shards
        if set(self._saved) - set(shards):  # trimmed away: forget them
            self._save_checkpoint()

    def _describe_shards(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = []
        request: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self._client.describe_stream(**request)["StreamDescription"]
            listed.extend(description.get("Shards", []))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return listed
            request["ExclusiveStartShardId"] = last

    def _parent_done(self, shard: _Shard) -> bool:
        parent = self._shards.get(shard.parent_id) if shard.parent_id else None
        return parent is None or parent.finished

    def caught_up(self) -> bool:
        """Every shard read to its end at the last pass (nothing waits to be delivered)."""
        return self._drained()

    def _drained(self) -> bool:
        if not self._listing_ok:
            return False
        return all(
            shard.finished or (shard.caught_up and self._parent_done(shard)) for shard in self._shards.values()
        )

    def _pending(self) -> str:
        if not self._listing_ok:
            return "the shards could not be listed"
        waiting = [s.shard_id for s in self._shards.values() if not s.finished and not s.caught_up]
        return f"shards not caught up: {', '.join(waiting) or 'none'}"

    def _wait_time(self) -> float:
        """How long to wait before the next pass: 0 if a shard has more to read now."""
        now = self._clock()
        wait = self.config.idle_sleep_seconds
        for shard in self._shards.values():
            if shard.finished or not self._parent_done(shard):
                continue
            if shard.not_before > now:
                wait = min(wait, shard.not_before - now)
            elif not shard.caught_up:
                return 0.0
        if self._next_refresh > now:
            wait = min(wait, self._next_refresh - now)
        return max(wait, 0.0)

    # -- reading --------------------------------------------------------------

    def _poll_shard(self, shard: _Shard) -> int:
        try:
            records, closed = self._read_batch(shard)
        except (BotoCoreError, ClientError) as exc:
            shard.iterator = None
            shard.caught_up = False
            shard.failures += 1
            wait = self._backoff(shard.failures)
            shard.not_before = self._clock() + wait
            self._log(f"reading shard {shard.shard_id} failed, retrying in {wait:.2f} s: {exc}")
            return 0
        if not records:
            shard.failures = 0
            if closed:
                self._finish(shard)
            return 0
        return self._deliver(shard, records, closed)

    def _read_batch(self, shard: _Shard) -> tuple[list[dict[str, Any]], bool]:
        """Up to batch_size records; also whether the shard turned out to be closed."""
        batch: list[dict[str, Any]] = []
        deadline = self._clock() + self.config.batching_window_seconds
        iterator_renewals = 0
        shard.caught_up = False
        if not self.config.reuse_iterators:
            shard.iterator = None
        while len(batch) < self.config.batch_size and not self._stopping():
            if shard.iterator is None:
                shard.iterator = self._new_iterator(shard)
            limit = min(_MAX_GET_RECORDS_LIMIT, self.config.batch_size - len(batch))
            try:
                response = self._client.get_records(ShardIterator=shard.iterator, Limit=limit)
            except ClientError as exc:
                if not _is_invalid_iterator(exc):
                    raise
                shard.iterator = None
                iterator_renewals += 1
                if batch:  # deliver what we have; the next read starts from the checkpoint
                    return batch, False
                if iterator_renewals > 1:
                    raise
                reason = _error_code(exc) or "invalid iterator"
                self._log(f"shard {shard.shard_id}: {reason}, getting a new iterator")
                continue
            received = response.get("Records", [])
            batch.extend(self._lambda_record(record) for record in received)
            shard.iterator = response.get("NextShardIterator")
            if shard.iterator is None:
                shard.caught_up = True
                return batch, True
            if not received:
                shard.caught_up = True
                break
            if self._clock() >= deadline:
                break
        return batch, False

    def _new_iterator(self, shard: _Shard) -> str:
        request = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
        if shard.checkpoint is not None:
            try:
                response = self._client.get_shard_iterator(
                    **request, ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.checkpoint
                )
                return str(response["ShardIterator"])
            except ClientError as exc:
                if _error_code(exc) != "TrimmedDataAccessException":
                    raise
                self._log(
                    f"shard {shard.shard_id}: records after checkpoint {shard.checkpoint} were trimmed "
                    f"from the stream and are lost; resuming at TRIM_HORIZON"
                )
        response = self._client.get_shard_iterator(**request, ShardIteratorType="TRIM_HORIZON")
        return str(response["ShardIterator"])

    def _lambda_record(self, record: dict[str, Any]) -> dict[str, Any]:
        converted: dict[str, Any] = _lambda_json(record)
        converted["awsRegion"] = self._region
        converted["eventSourceARN"] = self.stream_arn
        return converted

    # -- delivering -----------------------------------------------------------

    def _deliver(self, shard: _Shard, records: list[dict[str, Any]], closed: bool) -> int:
        self.stats["batches"] += 1
        failed_at: int
        try:
            context = LocalLambdaContext(self._function_name, self._region)
            response = self._handler({"Records": records}, context)
            failed = self._failed_sequence_numbers(response, records)
        except Exception as exc:  # noqa: BLE001 - a raising handler fails the batch, as on Lambda
            failed_at = 0
            first = _sequence_number(records[0])
            shard.attempts[first] = shard.attempts.get(first, 0) + 1
            shard.errors[first] = f"{type(exc).__name__}: {exc}"
        else:
            if not failed:
                shard.checkpoint = _sequence_number(records[-1])
                shard.failures = 0
                shard.attempts.clear()
                shard.errors.clear()
                self.stats["delivered"] += len(records)
                self.last_delivered_at = float(records[-1]["dynamodb"].get("ApproximateCreationDateTime") or 0)
                if closed:
                    self._finish(shard)
                else:
                    self._save_checkpoint()
                return len(records)
            for sequence_number in failed:
                shard.attempts[sequence_number] = shard.attempts.get(sequence_number, 0) + 1
                shard.errors[sequence_number] = _REPORTED_FAILURE
            failed_at = min(i for i, record in enumerate(records) if _sequence_number(record) in failed)
        return self._handle_failure(shard, records, failed_at)

    def _failed_sequence_numbers(self, response: Any, records: list[dict[str, Any]]) -> set[str]:
        """The partial batch response, read as Lambda reads it; raises _BatchFailed if it fails all."""
        if response is None:
            return set()
        if not isinstance(response, dict):
            raise _BatchFailed(f"invalid handler response {response!r}")
        failures = response.get("batchItemFailures")
        if not failures:
            return set()
        if not isinstance(failures, list):
            raise _BatchFailed(f"invalid batchItemFailures {failures!r}")
        in_batch = {_sequence_number(record) for record in records}
        failed: set[str] = set()
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not isinstance(identifier, str) or identifier not in in_batch:
                raise _BatchFailed(f"invalid itemIdentifier in {failure!r}")
            failed.add(identifier)
        return failed

    def _handle_failure(self, shard: _Shard, records: list[dict[str, Any]], failed_at: int) -> int:
        done = records[:failed_at]
        if done:
            shard.checkpoint = _sequence_number(done[-1])
            self.stats["delivered"] += len(done)
        failed = records[failed_at]
        sequence_number = _sequence_number(failed)
        attempts = shard.attempts.get(sequence_number, 0)
        shard.iterator = None  # redeliver from the checkpoint
        shard.caught_up = False
        if attempts >= self.config.max_attempts:
            error = shard.errors.get(sequence_number, "")
            self._dead_letter(shard, failed, attempts, error)
            shard.checkpoint = sequence_number
            shard.failures = 0
            shard.not_before = 0.0
            self.stats["dead_lettered"] += 1
            self._log(
                f"dead-lettered record {sequence_number} of shard {shard.shard_id} after {attempts} "
                f"failed attempts ({error}) to {self.dead_letter_path}"
            )
        else:
            shard.failures += 1
            shard.not_before = self._clock() + self._backoff(shard.failures)
            self.stats["retried"] += 1
        self._forget_attempts_up_to(shard)
        self._save_checkpoint()
        return len(done)

    def _forget_attempts_up_to(self, shard: _Shard) -> None:
        if shard.checkpoint is None:
            return
        done = int(shard.checkpoint)
        for sequence_number in [s for s in shard.attempts if int(s) <= done]:
            del shard.attempts[sequence_number]
            shard.errors.pop(sequence_number, None)

    def _finish(self, shard: _Shard) -> None:
        shard.finished = True
        shard.iterator = None
        self._save_checkpoint()
        self._log(f"shard {shard.shard_id} is closed and fully processed")

    def _dead_letter(self, shard: _Shard, record: dict[str, Any], attempts: int, error: str) -> None:
        entry = {
            "stream_arn": self.stream_arn,
            "shard_id": shard.shard_id,
            "sequence_number": _sequence_number(record),
            "attempts": attempts,
            "error": error,
            "dead_lettered_at": datetime.now().astimezone().isoformat(),
            "record": record,
        }
        self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letter_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())

    # -- checkpoint -----------------------------------------------------------

    def _read_checkpoint_file(self) -> dict[str, Any]:
        try:
            data = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._log(f"ignoring unreadable checkpoint file {self.checkpoint_path}: {exc}")
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("streams"), dict) else {}

    def _load_checkpoint(self) -> dict[str, dict[str, Any]]:
        """This stream's saved shards; checkpoints of other streams (an older table) do not apply."""
        stream = self._read_checkpoint_file().get("streams", {}).get(self.stream_arn, {})
        shards = stream.get("shards", {}) if isinstance(stream, dict) else {}
        return {k: v for k, v in shards.items() if isinstance(v, dict)}

    def _save_checkpoint(self) -> None:
        """Write this stream's shards atomically, keeping the entries of other streams."""
        shards = {
            shard.shard_id: {"sequence_number": shard.checkpoint, "finished": shard.finished}
            for shard in self._shards.values()
            if shard.checkpoint is not None or shard.finished
        }
        with _checkpoint_lock(self.checkpoint_path):
            data = self._read_checkpoint_file() or {"version": _CHECKPOINT_VERSION, "streams": {}}
            data["streams"][self.stream_arn] = {"shards": shards}
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            directory = self.checkpoint_path.parent
            fd, temp = tempfile.mkstemp(prefix=self.checkpoint_path.name + ".", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=2, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.checkpoint_path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        self._saved = shards

    # -- helpers --------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        exponent = min(max(failures - 1, 0), 30)
        ceiling = min(self.config.backoff_cap_seconds, self.config.backoff_base_seconds * 2**exponent)
        return self._random.uniform(0.0, ceiling)

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _log(self, message: str) -> None:
        self._log_line(f"{self._label}: {message}")
