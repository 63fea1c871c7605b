"""Request models and the idempotency fingerprint (pure, no IO)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ledger.commands import MovementRequest, OpenAccountRequest, TransferRequest, fingerprint


def movement(**fields) -> MovementRequest:
    return MovementRequest.model_validate({"amount": 100, "currency": "EUR", **fields})


def transfer(**fields) -> TransferRequest:
    return TransferRequest.model_validate(
        {"from_account": "alice", "to_account": "bob", "amount": 100, "currency": "EUR", **fields}
    )


# -- fingerprint ------------------------------------------------------------------


def test_the_fingerprint_is_the_same_for_the_same_meaning_whatever_the_key_order():
    one = MovementRequest.model_validate(
        {"amount": 100, "currency": "EUR", "description": "rent", "metadata": {"a": "1", "b": "2"}}
    )
    other = MovementRequest.model_validate(
        {"metadata": {"b": "2", "a": "1"}, "description": "rent", "currency": "EUR", "amount": 100}
    )

    assert fingerprint("credit", "alice", one) == fingerprint("credit", "alice", other)


def test_the_fingerprint_ignores_spelled_out_defaults():
    assert fingerprint("credit", "alice", movement()) == fingerprint(
        "credit", "alice", movement(metadata={}, description=None)
    )
    assert fingerprint("open_account", None, OpenAccountRequest(account_id="a", currency="EUR")) == fingerprint(
        "open_account", None, OpenAccountRequest(account_id="a", currency="EUR", allow_overdraft=False, metadata={})
    )


def test_the_fingerprint_is_a_sha256_hex_digest():
    value = fingerprint("credit", "alice", movement())

    assert len(value) == 64
    assert set(value) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "changed",
    [
        ("debit", "alice", movement()),
        ("credit", "bob", movement()),
        ("credit", None, movement()),
        ("credit", "alice", movement(amount=101)),
        ("credit", "alice", movement(currency="USD")),
        ("credit", "alice", movement(description="rent")),
        ("credit", "alice", movement(metadata={"ref": "1"})),
    ],
    ids=["operation", "target", "no target", "amount", "currency", "description", "metadata"],
)
def test_the_fingerprint_differs_when_operation_target_or_request_differ(changed):
    assert fingerprint(*changed) != fingerprint("credit", "alice", movement())


def test_a_transfer_and_its_reverse_have_different_fingerprints():
    forward = transfer()
    backward = transfer(from_account="bob", to_account="alice")

    assert fingerprint("transfer", None, forward) != fingerprint("transfer", None, backward)


def test_metadata_values_that_only_look_alike_do_not_collide():
    # Canonical JSON, not string concatenation: {"ab": "c"} and {"a": "bc"} differ.
    assert fingerprint("credit", "alice", movement(metadata={"ab": "c"})) != fingerprint(
        "credit", "alice", movement(metadata={"a": "bc"})
    )


# -- strict validation --------------------------------------------------------------


@pytest.mark.parametrize("amount", [1.0, 1.5, "100", True, 0, -1, 2**53, None])
def test_a_movement_amount_must_be_a_positive_json_integer_below_2_to_the_53(amount):
    with pytest.raises(ValidationError):
        movement(amount=amount)


@pytest.mark.parametrize("amount", [1, 2**53 - 1])
def test_the_smallest_and_largest_amounts_are_accepted(amount):
    assert movement(amount=amount).amount == amount


@pytest.mark.parametrize("currency", ["eur", "XXX", "ABC", "EURO", "", 978])
def test_a_currency_must_be_an_active_upper_case_iso_4217_code(currency):
    with pytest.raises(ValidationError):
        movement(currency=currency)


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError):
        movement(memo="hi")


def test_requests_are_immutable():
    request = movement()

    with pytest.raises(ValidationError):
        request.amount = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 257},
        {"": "v"},
        {"k": 1},
        {"k\x00": "v"},
        {"k": "v\n"},
    ],
    ids=[
        "17 entries", "65-char key", "257-char value", "empty key", "non-string value", "control key", "control value"
    ],
)
def test_metadata_beyond_its_limits_is_refused(metadata):
    with pytest.raises(ValidationError):
        movement(metadata=metadata)


def test_metadata_at_its_limits_is_accepted():
    metadata = {f"{i:02d}" + "k" * 62: "v" * 256 for i in range(16)}

    assert movement(metadata=metadata).metadata == metadata
