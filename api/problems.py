"""Domain errors to HTTP: one table of status codes, one RFC 9457 problem shape.

Every refusal leaves with `type`, `title`, `status`, `detail` and a stable `code`
that clients can branch on; extra members (such as `account_id` or `errors`) add
what a caller needs to fix the request.
"""

from __future__ import annotations

import json
from typing import Any

from chalice import Response

from ledger import errors

PROBLEM_CONTENT_TYPE = "application/problem+json"

STATUS_BY_ERROR: dict[type[errors.LedgerError], int] = {
    errors.MalformedRequest: 400,
    errors.InvalidIdentifier: 400,
    errors.InvalidQuery: 400,
    errors.InvalidCursor: 400,
    errors.IdempotencyKeyMissing: 400,
    errors.IdempotencyKeyInvalid: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.AccountNotFound: 404,
    errors.TransactionNotFound: 404,
    errors.AccountAlreadyExists: 409,
    errors.AccountNotOpen: 409,
    errors.AccountNotFrozen: 409,
    errors.IdempotencyInFlight: 409,
    errors.DuplicateEvent: 409,
    errors.AlreadyReversed: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.WrongRegion: 421,
    errors.InvalidRequest: 422,
    errors.IdempotencyKeyReused: 422,
    errors.CurrencyMismatch: 422,
    errors.InsufficientFunds: 422,
    errors.SameAccountTransfer: 422,
    errors.BatchTooLarge: 422,
    errors.NotReversible: 422,
    errors.StoreUnavailable: 503,
    errors.NotYetReplicated: 503,
    errors.AccountMoving: 503,
    errors.RegionFenced: 503,
    errors.AuthorizationUnavailable: 503,
}

# Refusals that a retry of the very same request can turn into a success, and when to retry.
RETRY_AFTER_SECONDS = {
    "idempotency_in_flight": "1",
    "store_unavailable": "1",
    "not_yet_replicated": "1",
    "account_moving": "1",
    "region_fenced": "5",
    "authorization_unavailable": "1",
}


def problem_body(status: int, code: str, title: str, detail: str, **extra: Any) -> str:
    """The RFC 9457 document, compact JSON like every other body."""
    body = {"type": f"urn:problem-type:dynamo-ledger:{code}", "title": title, "status": status, "detail": detail}
    body.update({"code": code, **extra})
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
    if code in RETRY_AFTER_SECONDS:
        headers["Retry-After"] = RETRY_AFTER_SECONDS[code]
    return Response(body=problem_body(status, code, title, detail, **extra), status_code=status, headers=headers)


def problem_for(error: errors.LedgerError) -> Response:
    status = STATUS_BY_ERROR.get(type(error), 400)
    extra = dict(error.extra)
    token_sent = extra.pop("token_sent", True)
    reply = problem(status, error.code, error.title, error.detail, **extra)
    if status == 401:
        reply.headers["WWW-Authenticate"] = www_authenticate(error.detail if token_sent else None)
    return reply


def www_authenticate(description: str | None = None) -> str:
    """RFC 6750's challenge; with a description when a token was sent and refused."""
    if description is None:
        return 'Bearer realm="dynamo-ledger"'
    safe = "".join(ch for ch in description if ch not in '"\\' and " " <= ch <= "~")
    return f'Bearer realm="dynamo-ledger", error="invalid_token", error_description="{safe}"'


_CHALICE_PROBLEMS = {
    "UnsupportedMediaType": ("unsupported_media_type", "The request body must be JSON"),
    "MethodNotAllowedError": ("method_not_allowed", "The method is not allowed on this resource"),
    "BadRequestError": ("malformed_request", "The request body is not a JSON object"),
    "NotFoundError": ("not_found", "No such resource"),
    "InternalServerError": ("internal_error", "Internal error"),
}


def problem_from_chalice(response: Response) -> Response:
    """Chalice's own refusals (415, 405, ...) in the same problem shape as ours."""
    body = response.body if isinstance(response.body, dict) else {}
    chalice_code = str(body.get("Code", "Error"))
    code, title = _CHALICE_PROBLEMS.get(chalice_code, ("http_error", "The request was refused"))
    detail = str(body.get("Message", "the request was refused"))
    if code == "unsupported_media_type":
        detail += "; send Content-Type: application/json"
    extra_headers = {k: v for k, v in response.headers.items() if k.lower() == "allow"}
    reply = problem(response.status_code, code, title, detail)
    reply.headers.update(extra_headers)
    return reply
