"""The shapes of the API's answers, as pydantic models: the OpenAPI document is generated from them.

Requests are the domain's own command models (`ledger.commands`); events are the
domain's event models. These add what only HTTP shows: pages, watermarks, the
account as the API shows it, and problem documents. The fuzzing suite checks every
answer the app gives against these shapes, so they cannot drift from the code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ledger.events import Event


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventOut(RootModel[Event]):
    """One event: `account.opened`, `account.credited`, `account.debited`, `account.home_moved` or `account.status_changed`."""


class AccountOut(_Out):
    account_id: str
    currency: str
    allow_overdraft: bool
    status: Literal["open", "frozen", "closed"]
    metadata: dict[str, str]
    home_region: str
    write_epoch: int
    opened_at: str
    opened_event_id: str


class TransactionOut(_Out):
    """Every leg of one transaction; a write answers with the legs it recorded."""

    transaction_id: str
    type: Literal["open", "credit", "debit", "transfer", "reversal", "move", "freeze", "unfreeze"]
    reverses: str | None = Field(None, description="on a reversal: the transaction it negates")
    reversed_by: str | None = Field(None, description="the reversal of this transaction, once reversed")
    events: list[EventOut]


class AsOf(_Out):
    event_id: str
    recorded_at: str


class _Money(_Out):
    account_id: str
    currency: str
    balance: int
    credits: int
    debits: int
    balance_str: str = Field(description="`balance` as a decimal string: exact in JavaScript beyond 2^53")
    credits_str: str
    debits_str: str
    event_count: int
    as_of: AsOf | None = Field(description="the newest event the figures include")


class BalanceOut(_Money):
    consistency: Literal["eventual", "strong"]
    region: str = Field(description="the region that answered")
    available: int | None = Field(description="what a no-overdraft debit may take: the account's guard as this region holds it")
    in_flight: int = Field(description="credits in the balance that are not available yet (recorded in another home, not settled there)")
    replication_watermark: str | None = Field(
        description="this region holds every other region's writes recorded up to this instant (null: one region)"
    )


class PointInTimeOut(_Money):
    at: str


class DigestOut(_Out):
    account_id: str
    to: str
    event_count: int
    digest: str
    last_event_id: str | None
    settled_until: str | None = Field(description="the account's newest committed event; nothing after it is included")
    algorithm: Literal["sha256-chain-v1"]


class HistoryPageOut(_Out):
    account_id: str
    events: list[EventOut]
    next_cursor: str | None
    settled_until: str | None = Field(
        description="the account's newest committed event: the page is complete up to it, and any event that "
        "commits later has a greater id; tail with `after=<settled_until>`"
    )


class TimelinePageOut(_Out):
    events: list[EventOut]
    next_cursor: str | None
    settled_until: str = Field(
        description="every event recorded up to this instant is in the timeline; later ones may still appear"
    )


class Problem(_Out):
    """An RFC 9457 problem document; `code` is stable and machine-readable."""

    model_config = ConfigDict(extra="allow")  # problem-specific members, such as account_id or errors

    type: str
    title: str
    status: int
    detail: str
    code: str


class RecordedOperation(TransactionOut):
    """One operation of a batch, recorded: its transaction, as its own write would answer it."""

    status: Literal[201]
    replayed: bool | None = Field(None, description="independent batches: true when this operation was recorded by an earlier request with the same key")


class RefusedOperation(_Out):
    """One operation of an independent batch, refused (nothing of it recorded): why, as a problem document."""

    status: int
    problem: Problem


class AtomicBatchOut(_Out):
    mode: Literal["atomic"]
    results: list[RecordedOperation] = Field(description="one per operation, in order; all recorded together")


class IndependentBatchOut(_Out):
    mode: Literal["independent"]
    results: list[RecordedOperation | RefusedOperation] = Field(description="one per operation, in order")
