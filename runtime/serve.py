"""`ledger serve`: the embedded database, the tables, the API and the projector.

With no endpoint configured, DynamoDB Local runs as a child process with its data
in `--data-dir`, so the ledger survives a restart, and every write it acknowledges
is journaled first (`runtime.journal`), so it survives a crash of DynamoDB Local
too: the journal is replayed before anything is served. Without Java it falls back
to moto's in-memory server and says so loudly. The API is served by a hardened
HTTP server (`runtime.http_server`) around the same `app` object that Lambda runs.
The projector is the same stream handler Lambda runs, fed by a `StreamPoller`
thread that keeps its checkpoint and dead letters in `--data-dir`. Once ready,
`serve.json` in the data directory tells operator commands where everything is.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from chalice.config import Config

from api.app import create_app
from composition.root import Root
from ledger.config import Settings, dynamodb_client, streams_client
from projections.store import Writes

from . import discovery, status
from .dynamodb_local import DynamoDBLocal, EmbeddedDynamoDBError, java_available
from .http_server import create_server
from .journal import WriteJournal
from .moto_server import MotoDynamoDB
from .poller import LOCAL_POLLER, StreamPoller, stream_arn_of
from .tables import ensure_tables
from .tokens import operator_token, with_local_key

JOURNAL_FILE = "write-journal.jsonl"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _start_embedded(
    stack: ExitStack, data_dir: Path, port: int | None, allow_exposed: bool = False
) -> tuple[str, str, DynamoDBLocal | None]:
    """Start the embedded database; return its endpoint, a description for the ready line, and DynamoDB Local."""
    if java_available():
        data_dir = data_dir.resolve()
        database = stack.enter_context(DynamoDBLocal(data_dir=data_dir, port=port, allow_exposed=allow_exposed))
        return database.endpoint_url, f"DynamoDB Local at {database.endpoint_url}, data in {data_dir}", database
    _say(
        "WARNING: Java was not found, so DynamoDB Local cannot run.\n"
        "WARNING: falling back to moto's IN-MEMORY DynamoDB: every account and event is LOST when this stops.\n"
        "WARNING: install Java 11+ (e.g. apt-get install openjdk-17-jre-headless) to keep data on disk."
    )
    database = stack.enter_context(MotoDynamoDB(port=port))
    return database.endpoint_url, f"IN-MEMORY moto at {database.endpoint_url} (data is not kept)", None


def _watch(stack: ExitStack, database: DynamoDBLocal, crashed: threading.Event) -> None:
    """Stop `serve` if DynamoDB Local dies under it: answering 503s for ever helps nobody.

    Nothing acknowledged is lost: the next start replays the journal.
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            status = database.exited()
            if status is not None:
                _say(
                    f"ledger: DynamoDB Local exited unexpectedly (status {status}); stopping. Start `ledger serve` "
                    "again: every write it acknowledged is replayed from the journal"
                )
                crashed.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="dynamodb-local-watch", daemon=True)
    thread.start()
    stack.callback(stop.set)


def _recover(journal: WriteJournal, client) -> None:
    """Replay the journal: whatever DynamoDB Local acknowledged and then lost in a crash is applied again."""
    report = journal.replay(client)
    if report.reapplied:
        _say(f"recovered {report.reapplied} acknowledged write(s) that DynamoDB Local had lost in a crash")
    for failure in report.failed:
        _say(f"WARNING: a journaled write could not be replayed: {failure}")


def _start_projector(stack: ExitStack, root: Root, data_dir: Path) -> StreamPoller:
    """Poll the events stream in a thread until the stack unwinds; return where its files are."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # CloudWatch embedded-metric JSON on stdout means nothing locally; set it to
    # false to see the projector's metrics anyway.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    settings = root.settings
    poller = StreamPoller(
        streams_client(settings),
        stream_arn_of(root.dynamodb, settings.tables.events),
        root.stream_handler,
        checkpoint_path=data_dir / f"{settings.stage}-stream-checkpoint.json",
        dead_letter_path=data_dir / f"{settings.stage}-dead-letters.jsonl",
        config=LOCAL_POLLER,
    )
    thread, stop = poller.start_thread()

    def stop_projector() -> None:
        stop.set()
        thread.join(timeout=15)

    stack.callback(stop_projector)
    return poller


def _try(root: Root, base: str) -> str:
    """The ready line's example: with an operator token when this serve signs its own (a secret or Cognito: bring yours)."""
    if not root.settings.token_key:
        return f"Tokens are checked against {'Cognito' if root.settings.cognito_user_pool_arn else 'the configured secret'}."
    token = operator_token(root.signing_keys.codec())
    return (
        f"Operator token (every role, every account, 12 h): TOKEN={token} "
        f'Try: curl -s -H "Authorization: Bearer $TOKEN" {base}/accounts/demo'
    )


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    data_dir: Path,
    dynamodb_port: int | None = None,
    projector: bool = True,
    embedded: bool = True,
    allow_exposed_dynamodb: bool = False,
) -> int:
    """Run until Ctrl-C or SIGTERM; every child process stops with us."""
    with ExitStack() as stack:
        journal: WriteJournal | None = None
        database: DynamoDBLocal | None = None
        crashed = threading.Event()
        writes: Writes = "items"  # how the projector's writes travel (composition.root.Root)
        if settings.endpoint_url or not embedded:
            where = f"DynamoDB at {settings.endpoint_url or 'AWS'}"
        else:
            try:
                endpoint, where, database = _start_embedded(stack, data_dir, dynamodb_port, allow_exposed_dynamodb)
            except EmbeddedDynamoDBError as exc:
                _say(f"ledger: {exc}")
                return 1
            settings = replace(settings, endpoint_url=endpoint)
            # DynamoDB Local commits each write request to disk: many of the projector's in one transaction.
            # moto: one by one.
            writes = "transactions" if database is not None else "items"
            if database is not None:
                journal = WriteJournal(data_dir.resolve() / JOURNAL_FILE)
                _watch(stack, database, crashed)
        client = dynamodb_client(settings)
        created = ensure_tables(client, settings)
        if created:
            _say(f"created tables: {', '.join(created)}")
        if journal is not None:
            _recover(journal, client)
            journal.attach(client)
            where += ", every acknowledged write journaled"
        settings = with_local_key(settings, data_dir)
        root = Root(settings, client=client, projection_writes=writes)
        poller = None
        if projector:
            poller = _start_projector(stack, root, data_dir.resolve())
            _say(f"projector polling the events stream, dead letters to {poller.dead_letter_path}")
        try:
            server = create_server(create_app(root), Config(chalice_stage=settings.stage), host, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _say(f"ledger: port {port} on {host} is in use; choose another with --port")
                return 1
            raise
        stack.callback(server.server_close)
        base = f"http://{host}:{server.port}"
        state = discovery.ServeState(
            pid=os.getpid(),
            endpoint_url=settings.endpoint_url or "",
            api_url=base,
            stage=settings.stage,
            region=settings.region,
            journal=str(journal.path) if journal else None,
            dynamodb_pid=database.pid if journal and database else None,
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        state.write(data_dir)
        stack.callback(discovery.remove, data_dir)
        status.publish(stack, data_dir, lambda: [status.region_figures(root, poller)])
        try:  # the ready line inside: a Ctrl-C the moment it is read is a clean stop too
            print(f"ledger ready: API {base} ({where}, stage {settings.stage}, region {settings.region}). {_try(root, base)}", flush=True)
            server.serve_forever()
        except KeyboardInterrupt:
            _say("ledger: stopping")
    return 1 if crashed.is_set() else 0
