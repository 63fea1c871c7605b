"""A grant: what one verified token allows (a principal, its roles, the account patterns it may touch).

Patterns are account ids where `*` stands for any run of characters (`acme:*`,
`*`); nothing else is special, so an account id can never widen a pattern.
A grant travels from the authorizer to the views as API Gateway's authorizer
context, whose values must be strings or numbers: `to_context` and
`from_context` are that wire form. Cognito-issued tokens reach the views as
claims instead (`from_claims`), with the same meaning under `custom:` names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property

ROLES = ("writer", "reader", "auditor", "operator")
MAX_PRINCIPAL = 128
MAX_PATTERNS = 64


class InvalidGrant(ValueError):
    """The claims do not make a grant (missing principal, malformed roles or patterns)."""


@dataclass(frozen=True)
class Grant:
    principal: str
    roles: frozenset[str]
    accounts: tuple[str, ...]
    expires_at: int  # seconds since the epoch

    def __post_init__(self) -> None:
        if not isinstance(self.principal, str) or not 1 <= len(self.principal) <= MAX_PRINCIPAL:
            raise InvalidGrant(f"the principal must be 1 to {MAX_PRINCIPAL} characters")
        if not all(" " < ch <= "~" for ch in self.principal):
            raise InvalidGrant("the principal must be printable ASCII without spaces")
        if len(self.accounts) > MAX_PATTERNS or not all(isinstance(p, str) and 0 < len(p) <= 256 for p in self.accounts):
            raise InvalidGrant(f"accounts must be at most {MAX_PATTERNS} non-empty patterns")

    def has(self, role: str) -> bool:
        return role in self.roles

    @cached_property
    def _matchers(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL) for pattern in self.accounts)

    def covers(self, account_id: str) -> bool:
        """May this grant touch `account_id` at all (in any role)?"""
        return any(matcher.fullmatch(account_id) for matcher in self._matchers)

    @property
    def covers_everything(self) -> bool:
        return "*" in self.accounts

    # API Gateway's authorizer context: flat strings and numbers.
    def to_context(self) -> dict[str, str | int]:
        return {"roles": ",".join(sorted(self.roles)), "accounts": json.dumps(list(self.accounts)), "expires_at": self.expires_at}

    @classmethod
    def from_context(cls, principal: str, context: dict) -> Grant:
        try:
            accounts = json.loads(str(context["accounts"]))
            roles = str(context["roles"])
            expires_at = int(context["expires_at"])
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidGrant(f"the authorizer context is incomplete: {exc}") from exc
        if not isinstance(accounts, list):
            raise InvalidGrant("the authorizer context's accounts are not a list")
        return cls(principal, _roles(roles.split(",")), tuple(accounts), expires_at)

    @classmethod
    def from_claims(cls, claims: dict, *, prefix: str = "") -> Grant:
        """From a token's claims: `sub`, `roles`, `accounts`, `exp` (Cognito: `custom:roles`, `custom:accounts`)."""
        roles = claims.get(f"{prefix}roles", [])
        accounts = claims.get(f"{prefix}accounts", [])
        if isinstance(roles, str):  # Cognito custom attributes are strings: comma-separated
            roles = [r.strip() for r in roles.split(",")]
        if isinstance(accounts, str):
            accounts = [a.strip() for a in accounts.split(",")]
        if not isinstance(roles, list) or not isinstance(accounts, list):
            raise InvalidGrant("roles and accounts must be lists")
        try:
            expires_at = int(claims["exp"])
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidGrant("the token has no expiry (exp)") from exc
        principal = claims.get("sub")
        if not isinstance(principal, str):
            raise InvalidGrant("the token names no principal (sub)")
        return cls(principal, _roles(roles), tuple(a for a in accounts if a), expires_at)


def _roles(names: list) -> frozenset[str]:
    """The known roles named; an unknown one grants nothing (a typo must never widen access)."""
    return frozenset(name for name in names if name in ROLES)
