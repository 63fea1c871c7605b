"""Property: whatever the sequence of writes, retries and key reuse, each key records once.

Hypothesis draws a sequence of credits and debits on one no-overdraft account,
reusing a handful of keys with the same or a different request. A model tracks
what a correct ledger must answer; the log must hold exactly one transaction per
key that succeeded, and every replay must return the stored bytes.
"""

from __future__ import annotations

import os
import uuid

from profiles import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from composition.root import Root
from ledger import errors
from ledger.commands import MovementRequest, OpenAccountRequest
from ledger.config import Settings, dynamodb_client
from ledger.service import Caller
from runtime.tables import ensure_tables

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")

operations = st.lists(
    st.tuples(
        st.sampled_from(["k1", "k2", "k3", "k4"]),
        st.sampled_from(["credit", "debit"]),
        st.integers(min_value=1, max_value=40),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_each_key_records_at_most_once_and_replays_are_byte_identical(steps) -> None:
    with mock_aws():
        config = Settings(stage=f"p{uuid.uuid4().hex[:8]}")
        client = dynamodb_client(config)
        ensure_tables(client, config)
        ledger = Root(config, client=client).ledger
        ledger.open_account(Caller("prop", "open"), OpenAccountRequest(account_id="acct", currency="EUR"))

        stored: dict[str, tuple[tuple[str, int], str]] = {}  # key -> (request, response body)
        balance = 0
        for key, kind, amount in steps:
            request = MovementRequest(amount=amount, currency="EUR")
            record = getattr(ledger, kind)
            try:
                outcome = record(Caller("prop", key), "acct", request)
            except errors.IdempotencyKeyReused:
                assert key in stored and stored[key][0] != (kind, amount)
                continue
            except errors.InsufficientFunds:
                assert key not in stored and kind == "debit" and balance < amount
                continue
            if key in stored:
                assert stored[key][0] == (kind, amount)
                assert outcome.replayed and outcome.body == stored[key][1]
            else:
                assert not outcome.replayed
                stored[key] = ((kind, amount), outcome.body)
                balance += amount if kind == "credit" else -amount

        events = ledger.history("acct", limit=1000).events[1:]
        assert sorted(e.idempotency_key for e in events) == sorted(stored)
        assert sum(e.signed_amount for e in events) == balance >= 0
