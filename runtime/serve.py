"""`ledger serve`: the embedded database, the tables, the API and the projector.

With no endpoint configured, DynamoDB Local runs as a child process with its data
in `--data-dir`, so the ledger survives a restart. Without Java it falls back to
moto's in-memory server and says so loudly. The API is Chalice's own local server
around the same `app` object that Lambda runs. The projector is the same stream
handler Lambda runs, fed by a `StreamPoller` thread that keeps its checkpoint and
dead letters in `--data-dir`.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from chalice.config import Config
from chalice.local import create_local_server

from api.app import app, use_ledger
from ledger.bootstrap import build_ledger
from ledger.config import Settings, dynamodb_client, streams_client
from projections.bootstrap import build_balance_store, build_stream_handler

from .dynamodb_local import DynamoDBLocal, EmbeddedDynamoDBError, java_available
from .moto_server import MotoDynamoDB
from .poller import PollerConfig, StreamPoller, stream_arn_of
from .tables import ensure_tables


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _start_embedded(stack: ExitStack, data_dir: Path, port: int | None) -> tuple[str, str]:
    """Start the embedded database; return its endpoint and a description for the ready line."""
    if java_available():
        data_dir = data_dir.resolve()
        database = stack.enter_context(DynamoDBLocal(data_dir=data_dir, port=port))
        return database.endpoint_url, f"DynamoDB Local at {database.endpoint_url}, data in {data_dir}"
    _say(
        "WARNING: Java was not found, so DynamoDB Local cannot run.\n"
        "WARNING: falling back to moto's IN-MEMORY DynamoDB: every account and event is LOST when this stops.\n"
        "WARNING: install Java 11+ (e.g. apt-get install openjdk-17-jre-headless) to keep data on disk."
    )
    database = stack.enter_context(MotoDynamoDB(port=port))
    return database.endpoint_url, f"IN-MEMORY moto at {database.endpoint_url} (data is not kept)"


# Locally a record that fails is most likely DynamoDB Local being slow or restarting:
# be patient before dead-lettering it.
_LOCAL_POLLER = PollerConfig(max_attempts=10, backoff_cap_seconds=5.0)


def _start_projector(stack: ExitStack, settings: Settings, client, data_dir: Path) -> str:
    """Poll the events stream in a thread until the stack unwinds; return where its files are."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # CloudWatch embedded-metric JSON on stdout means nothing locally; set it to
    # false to see the projector's metrics anyway.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    poller = StreamPoller(
        streams_client(settings),
        stream_arn_of(client, settings.tables.events),
        build_stream_handler(settings, client),
        checkpoint_path=data_dir / f"{settings.stage}-stream-checkpoint.json",
        dead_letter_path=data_dir / f"{settings.stage}-dead-letters.jsonl",
        config=_LOCAL_POLLER,
    )
    thread, stop = poller.start_thread()

    def stop_projector() -> None:
        stop.set()
        thread.join(timeout=15)

    stack.callback(stop_projector)
    return f"projector polling the events stream, dead letters to {poller.dead_letter_path}"


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    data_dir: Path,
    dynamodb_port: int | None = None,
    projector: bool = True,
) -> int:
    """Run until Ctrl-C or SIGTERM; every child process stops with us."""
    with ExitStack() as stack:
        if settings.endpoint_url:
            where = f"DynamoDB at {settings.endpoint_url}"
        else:
            try:
                endpoint, where = _start_embedded(stack, data_dir, dynamodb_port)
            except EmbeddedDynamoDBError as exc:
                _say(f"ledger: {exc}")
                return 1
            settings = replace(settings, endpoint_url=endpoint)
        client = dynamodb_client(settings)
        created = ensure_tables(client, settings)
        if created:
            _say(f"created tables: {', '.join(created)}")
        use_ledger(build_ledger(settings, client), build_balance_store(settings, client))
        if projector:
            _say(_start_projector(stack, settings, client, data_dir.resolve()))
        try:
            server = create_local_server(app, Config(chalice_stage=settings.stage), host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _say(f"ledger: port {port} on {host} is in use; choose another with --port")
                return 1
            raise
        stack.callback(server.server.server_close)
        base = f"http://{host}:{port}"
        print(
            f"ledger ready: API {base} ({where}, stage {settings.stage}, region {settings.region}). "
            f"Try: curl -s -X POST {base}/accounts -H 'Content-Type: application/json' "
            f"-H 'Idempotency-Key: try-1' -d '{{\"account_id\":\"alice\",\"currency\":\"EUR\"}}'",
            flush=True,
        )
        try:
            server.server.serve_forever()
        except KeyboardInterrupt:
            _say("ledger: stopping")
    return 0
