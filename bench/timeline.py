"""What the cross-account timeline costs: DynamoDB requests and items read per page, dense and sparse.

Seeds `--events` events across `--accounts` accounts twice over on DynamoDB Local:
once packed into one day (dense), once spread over a year (sparse). Then it reads,
through the API (`GET /events`, Chalice's test client, so exactly what the route
does), counting every Query and the items DynamoDB returned:

- the first page of 100 of the dense day and of the sparse year;
- a page of 1 over an empty year (the window holds no event);
- a walk of the whole sparse year in pages of 100 (requests per page);
- an export of the sparse year (`Timeline.events`, what `ledger export` reads).

Requests and items are deterministic for a given seed; run it before and after a
change to compare.

    .venv/bin/python bench/timeline.py                    # 2,000 events, about a minute
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ulid  # noqa: E402
from chalice.test import Client  # noqa: E402

from access.tokens import TokenCodec  # noqa: E402
from composition.root import Root  # noqa: E402
from api.app import create_app  # noqa: E402
from ledger.config import Settings, dynamodb_client  # noqa: E402
from ledger.events import Credited  # noqa: E402
from ledger.ids import format_rfc3339  # noqa: E402
from ledger.store import Commit  # noqa: E402
from runtime.dynamodb_local import DynamoDBLocal, ensure_installed  # noqa: E402
from runtime.tables import ensure_tables  # noqa: E402

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
TOKEN = [""]  # an auditor's token for every account, signed with this run's key
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class Counter:
    """Counts read requests (index queries, and the BatchGetItems that fetch what keys-only indexes found) and
    the items they returned, through botocore's own events."""

    def __init__(self, client: Any) -> None:
        self.queries = 0
        self.items = 0
        client.meta.events.register("after-call.dynamodb.Query", self._count)
        client.meta.events.register("after-call.dynamodb.BatchGetItem", self._count_batch)

    def _count(self, parsed: dict[str, Any], **_: Any) -> None:
        self.queries += 1
        self.items += len(parsed.get("Items", []))

    def _count_batch(self, parsed: dict[str, Any], **_: Any) -> None:
        self.queries += 1
        self.items += sum(len(items) for items in parsed.get("Responses", {}).values())

    def take(self) -> tuple[int, int]:
        taken = (self.queries, self.items)
        self.queries = self.items = 0
        return taken


def seed(ledger: Any, rng: random.Random, accounts: int, count: int, start: datetime, span: timedelta) -> None:
    for _ in range(count):
        when = start + timedelta(milliseconds=rng.randrange(int(span.total_seconds() * 1000)))
        event_id = ulid.from_timestamp(when.timestamp()).str[:10] + "".join(rng.choice(CROCKFORD) for _ in range(16))
        event = Credited(
            entity_id=f"acct-{rng.randrange(accounts):04d}", event_id=event_id, transaction_id=event_id,
            transaction_type="credit", amount=rng.randint(1, 1000), currency="EUR",
            recorded_at=format_rfc3339(when), region="us-east-1", idempotency_key=f"bench-{event_id}",
        )  # fmt: skip
        ledger.store.commit(Commit(events=(event,)))


def page(http: Any, start: datetime, end: datetime, limit: int, cursor: str | None = None) -> dict[str, Any]:
    params = {"from": format_rfc3339(start), "to": format_rfc3339(end), "limit": limit}
    if cursor:
        params["cursor"] = cursor
    response = http.http.get(f"/events?{urlencode(params)}", headers={"Authorization": f"Bearer {TOKEN[0]}"})
    assert response.status_code == 200, response.body
    import json

    return json.loads(response.body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    ensure_installed()
    rng = random.Random(args.seed)
    with DynamoDBLocal() as database:
        settings = Settings(stage="bench", endpoint_url=database.endpoint_url, token_key=secrets.token_hex(32))
        TOKEN[0] = TokenCodec(settings.token_key).issue("bench-auditor", ["auditor"], ["*"], 3600)
        client = dynamodb_client(settings)
        ensure_tables(client, settings)
        root = Root(settings, client=client)
        ledger = root.ledger
        dense_day = START
        sparse_year = START + timedelta(days=10)
        seed(ledger, rng, args.accounts, args.events, dense_day, timedelta(days=1))
        seed(ledger, rng, args.accounts, args.events, sparse_year, timedelta(days=365))
        counter = Counter(client)
        print(f"{args.events} events over {args.accounts} accounts in one day, and {args.events} more over a year; seed {args.seed}")
        print(f"{'read':<44} {'requests':>9} {'items read':>11} {'returned':>9}")
        with Client(create_app(root)) as http:
            rows = [
                ("first page of 100, dense day", dense_day, dense_day + timedelta(days=1), 100),
                ("first page of 100, sparse year", sparse_year, sparse_year + timedelta(days=365), 100),
                ("page of 1, empty year", START - timedelta(days=366), START - timedelta(milliseconds=1), 1),
            ]
            for label, start, end, limit in rows:
                counter.take()
                body = page(http, start, end, limit)
                queries, items = counter.take()
                print(f"{label:<44} {queries:>9} {items:>11} {len(body['events']):>9}")
            counter.take()
            pages = returned = 0
            cursor = None
            while True:
                body = page(http, sparse_year, sparse_year + timedelta(days=365), 100, cursor)
                pages, returned = pages + 1, returned + len(body["events"])
                cursor = body["next_cursor"]
                if not cursor:
                    break
            queries, items = counter.take()
            print(f"{'walk of the sparse year, pages of 100':<44} {queries:>9} {items:>11} {returned:>9}  ({queries / pages:.1f} requests a page)")
        timeline = root.timeline
        counter.take()
        exported = sum(1 for _ in timeline.events(sparse_year, sparse_year + timedelta(days=365)))
        queries, items = counter.take()
        print(f"{'export of the sparse year':<44} {queries:>9} {items:>11} {exported:>9}")


if __name__ == "__main__":
    main()
