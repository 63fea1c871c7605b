"""The `ledger` command: run the service locally and operate on any deployment.

Every operator command takes the same endpoint options. With none, it finds the
`ledger serve` running on its data directory (`--data-dir`, LEDGER_DATA_DIR, else
./.ledger-data) through the state file `serve` keeps there, and says plainly when
there is none. `--endpoint-url` (or LEDGER_ENDPOINT_URL) names any DynamoDB;
`--aws` means AWS itself, with credentials from the environment. Expected failures
(no server, DynamoDB unreachable, no credentials) are one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from composition.root import Root
from ledger.config import OPERATOR, Settings, dynamodb_client

from .discovery import DEFAULT_DATA_DIR, NoRunningServe, ServeState

DEFAULT_PORT = 8000


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LEDGER_DATA_DIR", DEFAULT_DATA_DIR)),
        help=f"the data directory of `ledger serve` (default: LEDGER_DATA_DIR, else ./{DEFAULT_DATA_DIR})",
    )


def _endpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url", help="DynamoDB endpoint (default: LEDGER_ENDPOINT_URL, else the running `ledger serve`)"
    )
    parser.add_argument("--aws", action="store_true", help="use AWS itself (credentials from the environment)")
    parser.add_argument("--stage", help="table name prefix (default: LEDGER_STAGE, the serve's stage, else dev)")
    parser.add_argument("--region", help="AWS region this process writes for (default: LEDGER_REGION/AWS_REGION)")
    _data_dir_option(parser)


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings a command runs with: flags, then the environment, then the local `serve`."""
    settings = Settings.from_env()
    overrides = {k: v for k, v in (("endpoint_url", args.endpoint_url), ("stage", args.stage), ("region", args.region)) if v}
    settings = replace(settings, **overrides) if overrides else settings
    if settings.endpoint_url or getattr(args, "aws", False) or args.command == "serve":
        return settings
    state = ServeState.read(args.data_dir)  # NoRunningServe: main() says so
    return replace(
        settings,
        endpoint_url=state.endpoint_url,
        stage=args.stage or os.environ.get("LEDGER_STAGE") or state.stage,
        region=args.region or os.environ.get("LEDGER_REGION") or state.region,
    )


class CommandError(Exception):
    """The command cannot do what was asked; the message says why (exit status 2)."""


def existing_accounts(ledger, requested: list[str] | None) -> list[str] | None:
    """`--account` values, each checked to exist: an unknown account is an error, not "all is well"."""
    if not requested:
        return None
    from ledger.errors import AccountNotFound, InvalidIdentifier

    missing = []
    for account_id in requested:
        try:
            ledger.get_account(account_id)
        except (AccountNotFound, InvalidIdentifier):
            missing.append(account_id)
    if missing:
        raise CommandError(f"no such account: {', '.join(missing)}")
    return list(dict.fromkeys(requested))


def connect(args: argparse.Namespace) -> Root:
    """The composition root a command works with: a patient client; writes to a local `serve` go into its journal."""
    settings = settings_from(args)
    client = dynamodb_client(settings, OPERATOR)
    if not (args.endpoint_url or getattr(args, "aws", False) or os.environ.get("LEDGER_ENDPOINT_URL")):
        journal = ServeState.read(args.data_dir).journal
        if journal:
            from .journal import WriteJournal

            WriteJournal(Path(journal)).attach(client)
    return Root(settings, client=client)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="dynamo-ledger: an event-sourced ledger on DynamoDB")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API locally (with an embedded DynamoDB unless told otherwise)")
    _endpoint_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address the API listens on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"API port (default {DEFAULT_PORT})")
    serve.add_argument(
        "--regions",
        type=_region_list,
        help="run several regions, comma-separated (e.g. us-east-1,eu-west-1): one DynamoDB, API and projector "
        "each, on ports --port, --port+1, ..., linked by a replicator that behaves like Global Tables",
    )
    serve.add_argument("--lag-ms", type=float, default=50.0, help="with --regions: replication lag (default 50)")
    serve.add_argument("--jitter-ms", type=float, default=50.0, help="with --regions: extra random lag, up to (default 50)")
    serve.add_argument(
        "--lease-seconds",
        type=_positive_seconds,
        default=10.0,
        help="with --regions: a region that hears no peer for this long takes no writes (503 region_fenced; default 10)",
    )
    serve.add_argument(
        "--allow-exposed-dynamodb",
        action="store_true",
        help="start DynamoDB Local even where it cannot be bound to 127.0.0.1 (a JRE without a compiler): "
        "it then listens on every interface and takes any credentials",
    )
    serve.add_argument("--dynamodb-port", type=int, help="port of the embedded DynamoDB (default: a free one)")
    serve.add_argument(
        "--no-projector",
        dest="projector",
        action="store_false",
        help="do not poll the events stream (when a deployed Lambda already projects it)",
    )
    serve.set_defaults(handler=_serve)

    tables = commands.add_parser("tables", help="manage the service's tables")
    table_commands = tables.add_subparsers(dest="tables_command", required=True)
    create = table_commands.add_parser("create", help="create any missing table")
    _endpoint_options(create)
    create.set_defaults(handler=_create_tables)

    views = commands.add_parser("projections", help="check or rebuild the balances from the event log")
    view_commands = views.add_subparsers(dest="projections_command", required=True)
    verify = view_commands.add_parser("verify", help="report every account whose balance differs from its log")
    _endpoint_options(verify)
    verify.add_argument("--account", action="append", help="only this account (repeatable)")
    verify.set_defaults(handler=_verify)
    rebuild = view_commands.add_parser("rebuild", help="set every differing balance to the fold of its log")
    _endpoint_options(rebuild)
    rebuild.add_argument("--account", action="append", help="only this account (repeatable)")
    rebuild.set_defaults(handler=_rebuild)

    regions = commands.add_parser("regions", help="watch and steer the replication of `ledger serve --regions`")
    region_commands = regions.add_subparsers(dest="regions_command", required=True)
    region_status = region_commands.add_parser("status", help="per direction: queue, lag, partition; per region: projection")
    region_status.add_argument("--json", action="store_true", help="the status as JSON")
    cut = region_commands.add_parser("partition", help="stop replication in one direction (or both with --between)")
    cut.add_argument("--from", dest="source", help="the region whose writes stop arriving")
    cut.add_argument("--to", dest="dest", help="the region they stop arriving in")
    cut.add_argument("--between", nargs=2, metavar=("A", "B"), help="both directions between A and B")
    mend = region_commands.add_parser("heal", help="let replication flow again (everywhere, or --between A B)")
    mend.add_argument("--between", nargs=2, metavar=("A", "B"))
    delay = region_commands.add_parser("lag", help="set the replication lag")
    delay.add_argument("--ms", type=float, required=True, help="fixed lag in milliseconds")
    delay.add_argument("--jitter-ms", type=float, default=0.0, help="extra random lag, up to this many milliseconds")
    same = region_commands.add_parser("compare", help="wait for replication to drain, then compare every region")
    same.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the drain (default 60)")
    move = region_commands.add_parser(
        "failover", help="move the home of A's accounts to B (planned; --force when A is unreachable)"
    )
    move.add_argument("--from", dest="source", required=True, help="the accounts' home now")
    move.add_argument("--to", dest="dest", required=True, help="their new home")
    move.add_argument("--accounts", metavar="PATTERN", help="only accounts matching this shell pattern (e.g. 'acct-eu-*')")
    move.add_argument("--force", action="store_true", help="A is unreachable: wait out its lease, then move from B's replica")
    move.add_argument(
        "--override-lease",
        action="store_true",
        help="with --force: do not wait for A's lease to run out (both sides may write until the split heals)",
    )
    move.add_argument("--timeout", type=float, default=120.0, help="seconds each phase may wait (default 120)")
    settle = region_commands.add_parser(
        "reconcile", help="after a split: name overwritten guards, stale-epoch events, duplicate keys, overdrafts"
    )
    settle.add_argument("--repair", action="store_true", help="act: recompute guards, reverse duplicates, record reviews")
    settle.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for replication to drain (default 60)")
    join = region_commands.add_parser("add", help="add a region to the running serve while writes go on (backfilled, then compared)")
    join.add_argument("region", help="the new region's name, e.g. ap-southeast-1")
    join.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for it to join (default 300)")
    commands_by_name = [(region_status, "status"), (cut, "partition"), (mend, "heal"), (delay, "lag"), (same, "compare")]
    for command, handler in [*commands_by_name, (move, "failover"), (settle, "reconcile"), (join, "add")]:
        _data_dir_option(command)
        command.set_defaults(handler=_regions(handler))

    from . import status, tokens

    tokens.add_parser(commands)
    status.add_parser(commands, _endpoint_options)

    build = commands.add_parser("package", help="build the Lambda package and the CloudFormation templates for AWS")
    build.add_argument("--out", type=Path, required=True, help="the directory to write the Lambda package and the templates to")
    build.add_argument("--stage", default=os.environ.get("LEDGER_STAGE", "dev"), help="table name prefix (default: LEDGER_STAGE, else dev)")
    build.add_argument(
        "--regions",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="every region of the deployment, the table stack's first (default: LEDGER_REGIONS, else LEDGER_REGION/AWS_REGION)",
    )
    build.set_defaults(handler=_package)

    export = commands.add_parser("export", help="stream events to a file (resumable), with a manifest")
    _endpoint_options(export)
    export.add_argument("--account", action="append", help="only this account (repeatable; default: every account)")
    export.add_argument("--from", dest="start", type=_rfc3339, help="first instant, RFC 3339 (needed without --account)")
    export.add_argument("--to", dest="end", type=_rfc3339, help="last instant, RFC 3339 (needed without --account)")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", type=Path, required=True, help="the file; run again with the same query to resume")
    export.set_defaults(handler=_export)

    audit = commands.add_parser("audit", help="checkpoints and digests of the event log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    close = audit_commands.add_parser("close", help="write the checkpoints of every closed day (run daily)")
    _endpoint_options(close)
    close.add_argument("--account", action="append", help="only this account (repeatable)")
    close.add_argument("--until", type=_rfc3339, help="close days that ended before this time (default: an hour ago)")
    close.set_defaults(handler=_audit_close)
    check = audit_commands.add_parser("verify", help="replay the log against every stored checkpoint")
    _endpoint_options(check)
    check.add_argument("--account", action="append", help="only this account (repeatable)")
    check.set_defaults(handler=_audit_verify)
    return parser


def _region_list(text: str) -> list[str]:
    from ledger.commands import RegionName  # noqa: F401 - the same rule as an account's home_region
    import re

    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}", name)]
    if len(names) < 2 or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: two or more distinct region names such as us-east-1,eu-west-1")
    return names


def _regions(name: str):
    def run(args: argparse.Namespace) -> int:
        from . import regions_commands

        try:
            return getattr(regions_commands, name)(args)
        except regions_commands.RegionsError as exc:
            raise CommandError(str(exc)) from exc

    return run


def _rfc3339(text: str):
    from ledger.ids import parse_rfc3339

    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time with a zone") from exc


def _export(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from audit.export import ExportError, Query, account_source, export
    from ledger.ids import format_rfc3339

    from .progress import ProgressCounter

    root = connect(args)
    ledger = root.ledger
    accounts = tuple(sorted(existing_accounts(ledger, args.account) or ()))
    if not accounts and (args.start is None or args.end is None):
        print("ledger export: every account needs a window: give --from and --to (or --account)", file=sys.stderr)
        return 2
    query = Query(accounts, args.start, args.end, args.format)
    if accounts:
        source = account_source(root.event_store, accounts, args.start, args.end)
        # Per account: every event up to its newest committed one is in the file.
        settled = {a: ledger.get_account(a).last_event_id for a in accounts}
    else:
        timeline = root.timeline
        source = lambda after: timeline.events(args.start, args.end, after)  # noqa: E731
        settled = format_rfc3339(timeline.settled_until())
        if args.end > timeline.settled_until():
            print(f"note: events recorded after {settled} may still arrive; re-export later to include them", file=sys.stderr)
    digest_before = None
    if len(accounts) == 1 and args.format == "jsonl":  # the digest chain before the window, to continue it
        digest_before = "0" * 64
        if args.start is not None:
            digest_before = root.checkpoints.fold_at(accounts[0], args.start - timedelta(milliseconds=1)).digest
    try:
        with ProgressCounter("export") as progress:
            manifest = export(source, query, args.out, progress, digest_before, settled)
    except ExportError as exc:
        print(f"ledger export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {manifest['count']} event(s) to {args.out}, sha256 {manifest['sha256']}")
    return 0


def _for_each_account(args: argparse.Namespace, label: str, work) -> list:
    """`work(checkpoints, ledger, account_id)` for `--account` or every account, with a progress bar."""
    from .progress import ProgressBar

    root = connect(args)
    ledger, checkpoints = root.ledger, root.checkpoints
    accounts = existing_accounts(ledger, args.account) or sorted(ledger.account_ids())
    results = []
    with ProgressBar(label) as progress:
        for done, account_id in enumerate(accounts, 1):
            results.append(work(checkpoints, ledger, account_id))
            progress(done, len(accounts))
    return results


def _audit_close(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from audit.checkpoints import SETTLE

    closable = datetime.now(timezone.utc) - SETTLE
    if args.until is not None and args.until > closable:
        print(
            f"note: only days that ended before {closable:%Y-%m-%dT%H:%M}Z are closed: a day is closed an hour "
            "after it ends, when no event can still arrive for it; later days are left for a later run",
            file=sys.stderr,
        )
    written = _for_each_account(args, "close", lambda checkpoints, _ledger, account: checkpoints.close(account, args.until))
    print(f"wrote {sum(written)} checkpoint(s) for {len(written)} account(s)")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from audit.verify import verify_account

    findings = [
        finding
        for finding in _for_each_account(
            args, "verify", lambda checkpoints, ledger, account: verify_account(checkpoints, account, ledger.full_history(account))
        )
        if finding
    ]
    for finding in findings:
        print(f"TAMPERED {finding.describe()}")
    print(f"{len(findings)} account(s) no longer match their checkpoints" if findings else "every checkpoint matches the log")
    return 1 if findings else 0


def _read_side(args: argparse.Namespace):
    root = connect(args)
    return root.ledger, root.balance_store


def _verify(args: argparse.Namespace) -> int:
    from projections.verify import verify

    from .progress import ProgressBar

    ledger, store = _read_side(args)
    with ProgressBar("verify") as progress:
        drifts = verify(ledger, store, accounts=existing_accounts(ledger, args.account), progress=progress)
    for drift in drifts:
        print(f"DRIFT {drift.describe()}")
    print(f"{len(drifts)} account(s) differ from their log" if drifts else "every balance equals the fold of its log")
    return 1 if drifts else 0


def _rebuild(args: argparse.Namespace) -> int:
    from projections.verify import rebuild

    from .progress import ProgressBar

    ledger, store = _read_side(args)
    with ProgressBar("rebuild") as progress:
        report = rebuild(ledger, store, accounts=existing_accounts(ledger, args.account), progress=progress)
    for account_id in report.repaired:
        print(f"rebuilt {account_id}")
    print(f"checked {report.checked} account(s), rebuilt {len(report.repaired)}")
    return 0


def _create_tables(args: argparse.Namespace) -> int:
    from .tables import ensure_tables

    root = connect(args)
    created = ensure_tables(root.dynamodb, root.settings)
    print(f"created: {', '.join(created)}" if created else "all tables exist")
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.regions:
        from replication.replicator import Lag

        from .regions import serve_regions

        if args.endpoint_url or args.aws:
            raise CommandError("--regions runs an embedded DynamoDB per region; it takes no --endpoint-url or --aws")
        return serve_regions(
            settings_from(args),
            args.regions,
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            projector=args.projector,
            lag=Lag(args.lag_ms, args.jitter_ms),
            lease_seconds=args.lease_seconds,
            allow_exposed_dynamodb=args.allow_exposed_dynamodb,
        )
    from .serve import serve

    return serve(
        settings_from(args),
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        dynamodb_port=args.dynamodb_port,
        projector=args.projector,
        embedded=not args.aws,
        allow_exposed_dynamodb=args.allow_exposed_dynamodb,
    )


def _package(args: argparse.Namespace) -> int:
    from deploy.package import PackageError, package

    try:
        built = package(args.out, args.stage, args.regions or Settings.from_env().regions, progress=print)
    except (PackageError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    for path in built.files.values():
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print("next: deploy tables.json once, then service.json in every region (README: Deploy to AWS)")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the process as Ctrl-C does, so every `finally` runs and no child is left."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Both explicitly: a shell that starts us in the background (`&`, nohup) leaves
    # SIGINT ignored, and Ctrl-C or a test's SIGINT would then do nothing.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        _fail(str(exc))
        return 2
    except NoRunningServe as exc:
        _fail(f"{exc}. Start one with `ledger serve`, or name a DynamoDB with --endpoint-url (or --aws).")
        return 2
    except (NoCredentialsError, NoRegionError) as exc:
        _fail(f"{exc}: --aws needs AWS credentials and a region in the environment")
        return 2
    except (BotoCoreError, ClientError) as exc:
        _fail(f"DynamoDB failed: {exc}")
        return 1


def _fail(message: str) -> None:
    print(f"ledger {' '.join(sys.argv[1:2])}: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
