"""Reading an HTTP request into domain values: strict JSON, the caller, query params.

JSON is parsed by hand rather than through Chalice's `json_body` so that every flaw
gets its own clear refusal: bad UTF-8, NaN or Infinity, a duplicated key (which
parsers resolve differently, a classic smuggling trick), a non-object body, or a
body over `MAX_BODY_BYTES`.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from chalice.app import Request
from pydantic import BaseModel, ValidationError

from access.grants import Grant
from ledger import errors
from ledger.service import Caller

MAX_BODY_BYTES = 16 * 1024
IDEMPOTENCY_HEADER = "idempotency-key"

Model = TypeVar("Model", bound=BaseModel)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise errors.MalformedRequest(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise errors.MalformedRequest(f"{name} is not a JSON number")


def json_media_type(value: str) -> bool:
    """True for `application/json` with at most `charset=utf-8` parameters (case-insensitive).

    Chalice accepts any header merely containing `application/json` (`text/plain,
    application/json`) or `*/*`; a ledger accepts JSON said plainly.
    """
    media, *parameters = value.split(";")
    if media.strip(" \t").lower() != "application/json":
        return False
    for parameter in parameters:
        parameter = parameter.strip(" \t")
        if not parameter:
            continue
        name, _, charset = parameter.partition("=")
        if len(charset) >= 2 and charset[0] == charset[-1] == '"':
            charset = charset[1:-1]
        if name.lower() != "charset" or charset.lower() != "utf-8":
            return False
    return True


def parse_body(request: Request, model: type[Model]) -> Model:
    """The body validated as `model`, or the precise reason it is refused."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not json_media_type(content_type):
        raise errors.UnsupportedMediaType(f"the body must be JSON (Content-Type: application/json), not {content_type[:100]!r}")
    raw = request.raw_body or b""
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_BODY_BYTES:
        raise errors.PayloadTooLarge(f"the body is {len(raw)} bytes; at most {MAX_BODY_BYTES} are accepted")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except errors.MalformedRequest:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.MalformedRequest(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than the parser's stack
        raise errors.MalformedRequest("the body nests too deeply to be a ledger request") from exc
    if not isinstance(data, dict):
        raise errors.MalformedRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise errors.InvalidRequest(
            "; ".join(f"{_where(e)}: {e['msg']}" for e in exc.errors()),
            errors=[{"field": _where(e), "message": e["msg"], "type": e["type"]} for e in exc.errors()],
        ) from exc


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "body"


def caller(request: Request, grant: Grant) -> Caller:
    """Who writes: the token's principal (keys are scoped to it) and the accounts it may touch."""
    return Caller(scope=grant.principal, idempotency_key=request.headers.get(IDEMPOTENCY_HEADER), may_touch=grant.covers)


def query_params(request: Request, allowed: set[str]) -> dict[str, str]:
    params = dict(request.query_params or {})
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise errors.InvalidQuery(f"unknown query parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return params
