"""The account: a currency, an overdraft rule, and the region that takes its writes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AccountStatus = Literal["open", "frozen", "closed"]


class Account(BaseModel):
    """An account as stored; `available` and `last_event_id` are the write path's guards, not the read model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account_id: str
    currency: str
    allow_overdraft: bool
    status: AccountStatus = "open"
    metadata: dict[str, str] = Field(default_factory=dict)
    home_region: str
    write_epoch: int = 1
    opened_at: str
    opened_event_id: str
    available: int = 0
    # The newest event committed on this account in its home region. Every guarded write
    # checks that its event id is greater and sets it, so id order is commit order.
    last_event_id: str | None = None
    # Set while a fail-over moves the home here from this region: the new home takes no
    # guarded write until it holds the old home's log and has recomputed `available` from it.
    moving_from: str | None = None

    def public(self) -> dict:
        """The account as the API shows it."""
        return self.model_dump(exclude={"available", "last_event_id", "moving_from"})
