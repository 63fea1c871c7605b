"""The events of the ledger: immutable facts, past-tense, each carrying its identity.

An event is keyed by `entity_id` (the account) and `event_id` (a ULID). `amount` is
always a positive integer of minor units; the event's type gives the direction, and
`signed_amount` is the one place that turns a type into a sign. A balance is the
fold of `signed_amount` over an account's events (`ledger.fold.Totals`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .money import MAX_AMOUNT, MIN_AMOUNT

SCHEMA_VERSION = 1

Amount = Annotated[int, Field(strict=True, ge=MIN_AMOUNT, le=MAX_AMOUNT)]
TransactionType = Literal["open", "credit", "debit", "transfer", "reversal", "move", "freeze", "unfreeze"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    entity_id: str
    event_id: str
    transaction_id: str
    transaction_type: TransactionType
    currency: str
    recorded_at: str
    region: str
    idempotency_key: str
    # Who recorded it: Idempotency-Keys are scoped per caller (absent on events from before callers).
    caller: str | None = None
    schema_version: int = SCHEMA_VERSION
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    reverses: str | None = None  # on a reversal's legs: the transaction they negate
    # The account's write epoch when this event was recorded (absent on events from before epochs).
    write_epoch: int | None = None
    # True on a credit recorded outside the account's home region (the credit leg of a transfer
    # between homes): its home's projector adds it to the account's available balance.
    available_pending: bool | None = None
    # On the events of a batch (`POST /batches`): the index of their operation. A batch's operations share
    # its Idempotency-Key, so (caller, key, batch_operation) names one operation's write.
    batch_operation: int | None = None

    @property
    def signed_amount(self) -> int:
        return 0


class AccountOpened(_Event):
    """An account came into being with its currency and overdraft rule."""

    type: Literal["account.opened"] = "account.opened"
    allow_overdraft: bool


class Credited(_Event):
    """Money came into the account."""

    type: Literal["account.credited"] = "account.credited"
    amount: Amount
    counterparty: str | None = None

    @property
    def signed_amount(self) -> int:
        return self.amount


class Debited(_Event):
    """Money left the account."""

    type: Literal["account.debited"] = "account.debited"
    amount: Amount
    counterparty: str | None = None

    @property
    def signed_amount(self) -> int:
        return -self.amount


class HomeMoved(_Event):
    """The account's home moved to this event's region under a new write epoch (a fail-over).

    Recorded by the new home when it opens the account, in the same transaction; from
    then on only it takes the account's guarded writes. `forced`: the old home could not
    be reached, so its last writes may arrive after this event.
    """

    type: Literal["account.home_moved"] = "account.home_moved"
    from_region: str
    forced: bool = False


class StatusChanged(_Event):
    """An operator froze the account (it takes no credit, debit or transfer until unfrozen) or unfroze it."""

    type: Literal["account.status_changed"] = "account.status_changed"
    status: Literal["open", "frozen"]


Event = Annotated[Union[AccountOpened, Credited, Debited, HomeMoved, StatusChanged], Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: dict) -> Event:
    """Build the right event class from its stored or wire form."""
    return EVENT_ADAPTER.validate_python(data)
