"""The canonical form and digest chain the README documents, pinned to literal bytes."""

from __future__ import annotations

import hashlib

from audit.canonical import GENESIS_DIGEST, canonical_line, chain, digest_of
from ledger.events import Credited, Debited

CREDIT = Credited(
    entity_id="alice",
    event_id="01JD0000000000000000000001",
    transaction_id="01JD0000000000000000000001",
    transaction_type="credit",
    currency="EUR",
    recorded_at="2026-11-22T10:00:00.000Z",
    region="eu-west-1",
    idempotency_key="k-1",
    amount=500,
    description="Café",
)
DEBIT = Debited(
    entity_id="alice",
    event_id="01JD0000000000000000000002",
    transaction_id="01JD0000000000000000000002",
    transaction_type="debit",
    currency="EUR",
    recorded_at="2026-11-22T10:00:01.000Z",
    region="eu-west-1",
    idempotency_key="k-2",
    amount=20,
    metadata={"b": "2", "a": "1"},
)


def test_the_canonical_line_is_sorted_compact_utf8_json_with_one_newline():
    assert canonical_line(CREDIT) == (
        '{"amount":500,"currency":"EUR","description":"Café","entity_id":"alice",'
        '"event_id":"01JD0000000000000000000001","idempotency_key":"k-1","metadata":{},'
        '"recorded_at":"2026-11-22T10:00:00.000Z","region":"eu-west-1","schema_version":1,'
        '"transaction_id":"01JD0000000000000000000001","transaction_type":"credit","type":"account.credited"}\n'
    ).encode("utf-8")
    assert b'"metadata":{"a":"1","b":"2"}' in canonical_line(DEBIT)


def test_the_digest_is_a_sha256_chain_over_hex_and_lines_that_anyone_can_recompute():
    first = hashlib.sha256(b"0" * 64 + canonical_line(CREDIT)).hexdigest()
    second = hashlib.sha256(first.encode() + canonical_line(DEBIT)).hexdigest()
    assert digest_of([CREDIT, DEBIT]) == (second, 2)
    assert digest_of([]) == (GENESIS_DIGEST, 0)


def test_a_digest_continues_from_a_stored_one_and_notices_any_change():
    middle, _ = digest_of([CREDIT])
    assert digest_of([DEBIT], start=middle)[0] == digest_of([CREDIT, DEBIT])[0]
    edited = DEBIT.model_copy(update={"amount": 21})
    assert digest_of([CREDIT, edited]) != digest_of([CREDIT, DEBIT])
    assert digest_of([DEBIT, CREDIT]) != digest_of([CREDIT, DEBIT])
    assert chain(GENESIS_DIGEST, canonical_line(CREDIT)) == middle
