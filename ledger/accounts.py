"""The account: a currency, an overdraft rule, and the region that takes its writes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AccountStatus = Literal["open", "frozen", "closed"]


class Account(BaseModel):
    """An account as stored; `available` is the guard the write path keeps, not the read model."""

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

    def public(self) -> dict:
        """The account as the API shows it."""
        return self.model_dump(exclude={"available"})
