"""The OpenAPI 3.1 document of the ledger's API, generated from its request and response models.

Served at `GET /openapi.json` and kept in the repository as `openapi.json`
(`python -m api.openapi > openapi.json` writes it; a test fails when the file and
the code disagree, when a route is missing, or when a problem code the code can
answer is not in it). Every route lists its parameters, its headers
(`Idempotency-Key` in, `Location`, `Idempotent-Replayed` and `Retry-After` out),
its success shape and the problem codes it can answer, by status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ledger import errors
from ledger.ids import ACCOUNT_ID_PATTERN, ULID_PATTERN
from ledger.commands import BatchRequest, MovementRequest, OpenAccountRequest, ReversalRequest, StatusChangeRequest, TransferRequest
from ledger.commands import MAX_BATCH_OPERATIONS
from ledger.service import MAX_IDEMPOTENCY_KEY, MAX_PAGE, MAX_TRANSACTION_ITEMS

from . import schemas
from .problems import RETRY_AFTER_SECONDS, STATUS_BY_ERROR

# Codes the HTTP layers answer themselves (Chalice, the local server) rather than a LedgerError.
TRANSPORT_PROBLEMS: dict[str, int] = {
    "not_found": 404,
    "method_not_allowed": 405,
    "not_implemented": 501,
    "request_timeout": 408,
    "length_required": 411,
    "uri_too_long": 414,
    "unsupported_media_type": 415,
    "misdirected_request": 421,
    "headers_too_large": 431,
    "internal_error": 500,
    "server_busy": 503,
    "http_version_not_supported": 505,
}

_REF = "#/components/schemas/{model}"
_MODELS: list[type[BaseModel]] = [
    OpenAccountRequest, MovementRequest, TransferRequest, ReversalRequest, StatusChangeRequest, BatchRequest,
    schemas.AtomicBatchOut, schemas.IndependentBatchOut, schemas.AccountOut, schemas.TransactionOut, schemas.BalanceOut, schemas.PointInTimeOut, schemas.DigestOut,
    schemas.HistoryPageOut, schemas.TimelinePageOut, schemas.Problem, schemas.EventOut,
]  # fmt: skip

_AUTH_CODES = ["unauthorized", "forbidden", "authorization_unavailable"]
_WRITE_CODES = [
    *_AUTH_CODES, "malformed_request", "idempotency_key_missing", "idempotency_key_invalid", "payload_too_large",
    "unsupported_media_type", "validation_error", "idempotency_key_reused", "idempotency_in_flight",
    "store_unavailable", "region_fenced",
]  # fmt: skip
_MOVE_CODES = [
    *_WRITE_CODES, "invalid_identifier", "account_not_found", "account_not_open", "currency_mismatch",
    "wrong_region", "account_moving", "duplicate_event",
]  # fmt: skip
_READ_CODES = [*_AUTH_CODES, "invalid_identifier", "invalid_query", "store_unavailable"]


def _code_status() -> dict[str, int]:
    statuses = {error.code: status for error, status in STATUS_BY_ERROR.items()}
    return {**TRANSPORT_PROBLEMS, **statuses}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "1 to 255 printable ASCII characters; a retry with the same key and request replays the first answer",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": "^[ -~]+$"},
}
_WRITTEN_HEADERS = {
    "Location": _header("where the recorded resource is read"),
    "Idempotent-Replayed": _header("`true` when this is the stored answer to an earlier request with the same key", {"const": "true"}),
}


def _path(name: str, description: str, pattern: str) -> dict[str, Any]:
    schema = {"type": "string", "pattern": pattern}
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, description: str, schema: dict[str, Any] | None = None, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema or {"type": "string"}}


_ACCOUNT = _path("account_id", "1 to 64 of A-Z a-z 0-9 . _ : -", ACCOUNT_ID_PATTERN.pattern)
_TRANSACTION = _path("transaction_id", "a 26-character ULID", ULID_PATTERN.pattern)
_LIMIT = _query("limit", f"events per page, 1 to {MAX_PAGE} (default 100)", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE})
_CURSOR = _query("cursor", "`next_cursor` of the previous page of the same query")
_TIME = {"type": "string", "format": "date-time"}


def _problems(codes: Iterable[str]) -> dict[str, Any]:
    """One response per status, naming its codes; every answer is a problem document."""
    status_of = _code_status()
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys(codes):
        by_status.setdefault(status_of[code], []).append(code)
    responses = {}
    for status, codes_here in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": "problem: " + ", ".join(f"`{code}`" for code in codes_here),
            "content": {"application/problem+json": {"schema": _ref(schemas.Problem)}},
            "x-problem-codes": codes_here,
        }
        if any(code in RETRY_AFTER_SECONDS or code == "server_busy" for code in codes_here):
            response["headers"] = {"Retry-After": _header("seconds to wait before retrying the same request", {"type": "integer"})}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": _header("`Bearer realm=\"dynamo-ledger\"`, and why a sent token was refused")}
        responses[str(status)] = response
    return responses


def _operation(
    operation_id: str,
    summary: str,
    ok: tuple[int, dict[str, Any]],
    codes: Iterable[str],
    parameters: list[dict[str, Any]] = (),  # type: ignore[assignment]
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    written: bool = False,
) -> dict[str, Any]:
    status, schema = ok
    success: dict[str, Any] = {"description": "done", "content": _json_content(schema)}
    if written:
        success["headers"] = _WRITTEN_HEADERS
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": list(parameters) + ([_IDEMPOTENCY_KEY] if written else []),
        "responses": {str(status): success, **_problems(codes)},
    }
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json_content(_ref(body))}
    return operation


def _with_independent_answer(operation: dict[str, Any]) -> dict[str, Any]:
    """An independent batch answers 200: each operation's own result, recorded (201) or refused (a problem)."""
    answer = {"description": "independent: a result per operation", "content": _json_content(_ref(schemas.IndependentBatchOut))}
    answer["headers"] = {"Idempotent-Replayed": _WRITTEN_HEADERS["Idempotent-Replayed"]}
    operation["responses"] = {"200": answer, **operation["responses"]}
    return operation


def _paths() -> dict[str, Any]:
    transaction = _ref(schemas.TransactionOut)
    return {
        "/accounts": {
            "post": _operation(
                "openAccount", "Open an account (also appends an account.opened event)", (201, _ref(schemas.AccountOut)),
                [*_WRITE_CODES, "account_exists", "duplicate_event"], body=OpenAccountRequest, written=True,
            ),
        },
        "/accounts/{account_id}": {
            "get": _operation("getAccount", "The account", (200, _ref(schemas.AccountOut)), [*_READ_CODES, "account_not_found"], [_ACCOUNT]),
        },
        "/accounts/{account_id}/freeze": {
            "post": _operation(
                "freezeAccount", "Freeze the account (operator): an account.status_changed event; no movement until unfrozen",
                (201, transaction), [*_WRITE_CODES, "invalid_identifier", "account_not_found", "account_not_open", "wrong_region",
                                     "account_moving", "duplicate_event"],
                [_ACCOUNT], body=StatusChangeRequest, body_required=False, written=True,
            ),
        },
        "/accounts/{account_id}/unfreeze": {
            "post": _operation(
                "unfreezeAccount", "Unfreeze the account (operator): an account.status_changed event",
                (201, transaction), [*_WRITE_CODES, "invalid_identifier", "account_not_found", "account_not_frozen", "wrong_region",
                                     "account_moving", "duplicate_event"],
                [_ACCOUNT], body=StatusChangeRequest, body_required=False, written=True,
            ),
        },
        "/accounts/{account_id}/credits": {
            "post": _operation(
                "credit", "Credit the account: one account.credited event", (201, transaction), _MOVE_CODES,
                [_ACCOUNT], body=MovementRequest, written=True,
            ),
        },
        "/accounts/{account_id}/debits": {
            "post": _operation(
                "debit", "Debit the account: one account.debited event", (201, transaction),
                [*_MOVE_CODES, "insufficient_funds"], [_ACCOUNT], body=MovementRequest, written=True,
            ),
        },
        "/transfers": {
            "post": _operation(
                "transfer", "Move money between two accounts atomically: a debit and a credit under one transaction id",
                (201, transaction), [*_MOVE_CODES, "insufficient_funds", "same_account"], body=TransferRequest, written=True,
            ),
        },
        "/batches": {
            "post": _with_independent_answer(_operation(
                "batch",
                f"Up to {MAX_BATCH_OPERATIONS} credits, debits and transfers under one key: `atomic` (one transaction, all or "
                f"none: at most {MAX_TRANSACTION_ITEMS} items, one per event, one per account and the key's record; 201) or "
                "`independent` (each recorded or refused on its own, in order; 200 with a result per operation)",
                (201, _ref(schemas.AtomicBatchOut)),
                [*_MOVE_CODES, "insufficient_funds", "same_account", "batch_too_large"], body=BatchRequest, written=True,
            )),
        },
        "/transactions/{transaction_id}": {
            "get": _operation(
                "getTransaction", "Every leg of a transaction", (200, transaction),
                [*_READ_CODES, "transaction_not_found"], [_TRANSACTION],
            ),
        },
        "/transactions/{transaction_id}/reversal": {
            "post": _operation(
                "reverse", "Negate every leg of a transaction, once", (201, transaction),
                [*_MOVE_CODES, "transaction_not_found", "already_reversed", "not_reversible", "insufficient_funds"],
                [_TRANSACTION], body=ReversalRequest, body_required=False, written=True,
            ),
        },
        "/accounts/{account_id}/balance": {
            "get": _operation(
                "getBalance", "The balance: the projected view, a strong fold of the log, or the balance at an instant",
                (200, {"oneOf": [_ref(schemas.BalanceOut), _ref(schemas.PointInTimeOut)]}),
                [*_READ_CODES, "account_not_found", "not_yet_replicated"],
                [
                    _ACCOUNT,
                    _query("consistency", "eventual (the projected view, one read) or strong (a fold of the log)", {"enum": ["eventual", "strong"]}),
                    _query("at", "an instant in the past (RFC 3339 with a zone): the balance then", _TIME),
                    _query("min_as_of", "an event id: answer only once this region's balance includes it (read your writes across regions)"),
                ],
            ),
        },
        "/accounts/{account_id}/digest": {
            "get": _operation(
                "getDigest", "The event count and SHA-256 chain digest of the account's log up to an instant",
                (200, _ref(schemas.DigestOut)), [*_READ_CODES, "account_not_found"],
                [_ACCOUNT, _query("to", "an instant in the past (default: now)", _TIME)],
            ),
        },
        "/accounts/{account_id}/events": {
            "get": _operation(
                "getAccountEvents", "The account's history in commit order, paged, up to where it is settled",
                (200, _ref(schemas.HistoryPageOut)), [*_READ_CODES, "invalid_cursor", "account_not_found"],
                [
                    _ACCOUNT, _LIMIT, _CURSOR,
                    _query("from", "first instant (inclusive)", _TIME),
                    _query("to", "last instant (inclusive)", _TIME),
                    _query("order", "asc (default) or desc", {"enum": ["asc", "desc"]}),
                    _query("after", "an event id: ascending pages after it (to tail the history from `settled_until`)"),
                ],
            ),
        },
        "/events": {
            "get": _operation(
                "getTimeline", "Every event of a window across accounts, in id order, paged",
                (200, _ref(schemas.TimelinePageOut)), [*_READ_CODES, "invalid_cursor"],
                [
                    _query("from", "first instant (inclusive)", _TIME, required=True),
                    _query("to", "last instant (inclusive; default: the settled now); at most 366 days after from", _TIME),
                    _LIMIT, _CURSOR,
                ],
            ),
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document (needs no token)",
                "security": [],
                "responses": {"200": {"description": "the OpenAPI document", "content": _json_content({"type": "object"})}},
            },
        },
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    _, definitions = models_json_schema([(model, "validation") for model in _MODELS], ref_template=_REF)
    components = definitions.get("$defs", {})
    status_of = _code_status()
    components["Problem"]["properties"]["code"]["enum"] = sorted(status_of)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dynamo-ledger",
            "version": "1",
            "description": "An event-sourced ledger on DynamoDB. Every refusal is an RFC 9457 problem document "
            "with a stable `code`; `x-problem-statuses` maps each code to its status.",
        },
        "paths": _paths(),
        "security": [{"bearer": []}],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token naming a principal (`sub`), its `roles` (writer, reader, auditor, operator) "
                    "and the account patterns it may touch (`accounts`, such as `acme:*`), with an expiry (`exp`). "
                    "An account outside the patterns answers as one that does not exist (404).",
                }
            },
        },
        "x-problem-statuses": dict(sorted(status_of.items())),
    }


def rendered() -> str:
    """The document as the repository keeps it."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(rendered(), end="")
