"""What a caller may ask the ledger to do, validated strictly, and its fingerprint.

Request models forbid unknown fields and accept amounts only as JSON integers
(`strict=True` refuses 1.0, "1" and true). `fingerprint` hashes the validated,
canonical form, so key order and omitted defaults do not make two equal requests
look different to the idempotency check.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from .events import Amount
from .ids import is_account_id
from .money import is_currency

MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 256
MAX_DESCRIPTION = 256


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


def _currency(value: str) -> str:
    if not is_currency(value):
        raise ValueError("must be an active ISO 4217 code in upper case, such as EUR")
    return value


def _account_id(value: str) -> str:
    if not is_account_id(value):
        raise ValueError("must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")
    return value


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_ENTRIES:
        raise ValueError(f"at most {MAX_METADATA_ENTRIES} entries")
    for key, item in value.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY or not key.isprintable():
            raise ValueError(f"keys are 1 to {MAX_METADATA_KEY} printable characters")
        if len(item) > MAX_METADATA_VALUE or not item.isprintable():
            raise ValueError(f"values are at most {MAX_METADATA_VALUE} printable characters")
    return value


Currency = Annotated[str, Field(strict=True), AfterValidator(_currency)]
AccountId = Annotated[str, Field(strict=True), AfterValidator(_account_id)]
Description = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=MAX_DESCRIPTION), AfterValidator(_printable)
]
Metadata = Annotated[dict[Annotated[str, Field(strict=True)], Annotated[str, Field(strict=True)]], AfterValidator(_metadata)]


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


RegionName = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")]


class OpenAccountRequest(_Request):
    account_id: AccountId
    currency: Currency
    allow_overdraft: bool = False
    metadata: Metadata = Field(default_factory=dict)
    home_region: RegionName | None = None  # default: the region that takes the request


class MovementRequest(_Request):
    """A credit or a debit of one account; the account comes from the path."""

    amount: Amount
    currency: Currency
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)


class TransferRequest(_Request):
    from_account: AccountId
    to_account: AccountId
    amount: Amount
    currency: Currency
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)


class ReversalRequest(_Request):
    """A reversal of a recorded transaction; the transaction comes from the path."""

    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)


class StatusChangeRequest(_Request):
    """Freezing or unfreezing an account (from the path): why, for the record."""

    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)


MAX_BATCH_OPERATIONS = 100


class CreditOperation(MovementRequest):
    """A credit of a batch: the account is named in the operation."""

    type: Literal["credit"]
    account_id: AccountId


class DebitOperation(MovementRequest):
    type: Literal["debit"]
    account_id: AccountId


class TransferOperation(TransferRequest):
    type: Literal["transfer"]


BatchOperation = Annotated[Union[CreditOperation, DebitOperation, TransferOperation], Field(discriminator="type")]


class BatchRequest(_Request):
    """Up to 100 credits, debits and transfers under one Idempotency-Key.

    `atomic`: all are recorded in one transaction, or none is. `independent`: each is
    recorded or refused on its own, in order.
    """

    mode: Literal["atomic", "independent"] = "atomic"  # all or none unless asked otherwise
    operations: Annotated[list[BatchOperation], Field(min_length=1, max_length=MAX_BATCH_OPERATIONS)]


def fingerprint(operation: str, target: str | None, request: BaseModel) -> str:
    """SHA-256 over the canonical JSON of what is asked: same meaning, same hash."""
    canonical = json.dumps(
        {"operation": operation, "target": target, "request": request.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
