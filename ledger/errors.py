"""Every way a ledger operation can be refused, rooted at `LedgerError`.

Each class has a stable machine-readable `code`; the HTTP layer maps classes to
status codes in one table (`api/problems.py`). Nothing here knows about HTTP.
"""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Base of every refusal the ledger reports to a caller."""

    code = "ledger_error"
    title = "Ledger error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(LedgerError):
    """The request is well-formed JSON but breaks a field rule."""

    code = "validation_error"
    title = "The request is not valid"


class MalformedRequest(LedgerError):
    """The body is not JSON, not an object, or not decodable."""

    code = "malformed_request"
    title = "The request body is not a JSON object"


class PayloadTooLarge(LedgerError):
    """The body is larger than the ledger accepts."""

    code = "payload_too_large"
    title = "The request body is too large"


class UnsupportedMediaType(LedgerError):
    """The body is declared as something other than JSON."""

    code = "unsupported_media_type"
    title = "The request body must be JSON"


class InvalidIdentifier(LedgerError):
    """An id in the path or query is not of the allowed form."""

    code = "invalid_identifier"
    title = "An identifier is not valid"


class InvalidCursor(LedgerError):
    """A pagination cursor was altered or belongs to another query."""

    code = "invalid_cursor"
    title = "The cursor is not valid for this query"


class IdempotencyKeyMissing(LedgerError):
    """A write came without an Idempotency-Key header."""

    code = "idempotency_key_missing"
    title = "The Idempotency-Key header is required"


class IdempotencyKeyInvalid(LedgerError):
    """The Idempotency-Key header is empty, too long or not printable."""

    code = "idempotency_key_invalid"
    title = "The Idempotency-Key header is not valid"


class IdempotencyKeyReused(LedgerError):
    """The key was already used for a different request."""

    code = "idempotency_key_reused"
    title = "The Idempotency-Key was used for a different request"


class IdempotencyInFlight(LedgerError):
    """Another request with the same key is being recorded right now."""

    code = "idempotency_in_flight"
    title = "A request with this Idempotency-Key is in progress"


class AccountNotFound(LedgerError):
    """No account has this id."""

    code = "account_not_found"
    title = "The account does not exist"


class AccountAlreadyExists(LedgerError):
    """An account with this id was opened before."""

    code = "account_exists"
    title = "The account already exists"


class AccountNotOpen(LedgerError):
    """The account exists but does not accept movements."""

    code = "account_not_open"
    title = "The account is not open"


class AccountNotFrozen(LedgerError):
    """An unfreeze of an account that is not frozen."""

    code = "account_not_frozen"
    title = "The account is not frozen"


class CurrencyMismatch(LedgerError):
    """The movement's currency differs from the account's."""

    code = "currency_mismatch"
    title = "The currency does not match the account's"


class InsufficientFunds(LedgerError):
    """The debit would take a no-overdraft account below zero."""

    code = "insufficient_funds"
    title = "Insufficient funds"


class BatchTooLarge(LedgerError):
    """An atomic batch needs more items than one transaction holds."""

    code = "batch_too_large"
    title = "The atomic batch does not fit in one transaction"


class SameAccountTransfer(LedgerError):
    """A transfer names the same account on both sides."""

    code = "same_account"
    title = "A transfer needs two different accounts"


class WrongRegion(LedgerError):
    """The account is homed in another region, which must take its writes."""

    code = "wrong_region"
    title = "The account is written in another region"


class AccountMoving(LedgerError):
    """The account's home is moving here (a fail-over); it takes writes once the move is complete."""

    code = "account_moving"
    title = "The account's home is moving to this region; retry shortly"


class RegionFenced(LedgerError):
    """This region has not heard from any peer for its lease time, so it takes no guarded writes."""

    code = "region_fenced"
    title = "This region is cut off from its peers and takes no writes; retry, or write in another region"


class TransactionNotFound(LedgerError):
    """No event carries this transaction id."""

    code = "transaction_not_found"
    title = "The transaction does not exist"


class StoreUnavailable(LedgerError):
    """DynamoDB kept throttling or conflicting after every retry."""

    code = "store_unavailable"
    title = "The ledger is busy; retry with the same Idempotency-Key"


class NotYetReplicated(LedgerError):
    """The read asked for an event this region does not hold yet (it was recorded in another region)."""

    code = "not_yet_replicated"
    title = "This region does not hold that event yet; retry shortly"


class DuplicateEvent(LedgerError):
    """An event with this (entity_id, event_id) is already stored; nothing was written."""

    code = "duplicate_event"
    title = "The event already exists"


class InvalidQuery(LedgerError):
    """A query-string parameter is unknown or out of range."""

    code = "invalid_query"
    title = "A query parameter is not valid"


class AlreadyReversed(LedgerError):
    """The transaction was reversed before; a transaction is reversed at most once."""

    code = "already_reversed"
    title = "The transaction is already reversed"


class NotReversible(LedgerError):
    """The transaction cannot be reversed (an account opening, or a reversal itself)."""

    code = "not_reversible"
    title = "The transaction cannot be reversed"


class Unauthenticated(LedgerError):
    """No bearer token, or one that is malformed, expired or not signed by this deployment."""

    code = "unauthorized"
    title = "A valid bearer token is required"


class Forbidden(LedgerError):
    """The token is valid but lacks the role this operation needs."""

    code = "forbidden"
    title = "The token does not allow this"


class AuthorizationUnavailable(LedgerError):
    """The key that verifies tokens could not be loaded (its secret store did not answer)."""

    code = "authorization_unavailable"
    title = "Tokens cannot be checked right now"
