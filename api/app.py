"""The HTTP surface of the ledger (Chalice). Parsing in, domain calls, responses out.

No business rule lives here: requests become domain values (`api.requests`), the
`Ledger` decides, and errors become problem details (`api.problems`). The domain
returns domain results; status codes, headers and the JSON of reads are made here.

`create_app(root)` builds one Chalice app over one region's composition root
(`composition.root.Root`): Lambda's `app.py` builds it from the environment, a test
or `ledger serve --regions` builds one per region. Views are plain functions of a
`View` (the root and the current request) and their path parameters, registered on
each app the factory makes.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError
from chalice import Chalice, Response
from chalice.app import Request

from audit.checkpoints import Fold
from composition.root import Root
from ledger import errors
from ledger.accounts import Account
from ledger.commands import BatchRequest, MovementRequest, OpenAccountRequest, ReversalRequest, StatusChangeRequest, TransferRequest
from ledger.events import Event
from ledger.ids import format_rfc3339, parse_rfc3339, ulid_time
from ledger.service import DEFAULT_PAGE, MAX_PAGE, Outcome
from projections.queries import BalanceView

from access.grants import Grant
from observability import telemetry as figures

from . import openapi
from .auth import grant_of, install_authorizer, require_account, require_role
from .problems import problem_for, problem_from_chalice
from .requests import caller, parse_body, query_params

logger = Logger(service="ledger-api")


@dataclass(frozen=True)
class View:
    """What a view works with: this region's parts, the request being answered, and what its token grants."""

    root: Root
    request: Request
    grant: Grant | None = None

    @property
    def caller(self):
        """The writer: its principal scopes the Idempotency-Key and its patterns bound the accounts."""
        assert self.grant is not None
        return caller(self.request, self.grant)

    def sees(self, account_id: str) -> None:
        assert self.grant is not None
        require_account(self.grant, account_id)


_ROUTES: list[tuple[str, list[str], tuple[str, ...], Callable[..., Response]]] = []
PUBLIC: tuple[str, ...] = ()


def route(path: str, methods: list[str], roles: tuple[str, ...]) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Declare a view and the roles that may call it (`PUBLIC`: no token needed).

    `create_app` registers it on every app behind the authorizer, answering
    refusals as problem documents.
    """

    def declare(view: Callable[..., Response]) -> Callable[..., Response]:
        _ROUTES.append((path, methods, roles, view))
        return view

    return declare


def create_app(root: Root) -> Chalice:
    """The ledger's API over one region's root."""
    # Chalice appends " aws-chalice/<version>" to AWS_EXECUTION_ENV for every app it makes, and
    # botocore puts that in every request's User-Agent: one app per region or test would grow it
    # until servers refuse the headers (431). Only the first app of a process marks it.
    marked = "aws-chalice/" in os.environ.get("AWS_EXECUTION_ENV", "")
    app = Chalice(app_name="dynamo-ledger", env={} if marked else os.environ)
    app.register_middleware(_problem_details, "http")
    app.register_middleware(_flushing(root), "http")
    authorizer = install_authorizer(app, root)
    app.ledger_authorizer = authorizer  # app.py names it for Lambda (`app.token_authorizer`)
    for path, methods, roles, view in _ROUTES:
        guarded = {"authorizer": authorizer} if roles else {}
        app.route(path, methods=methods, name=view.__name__, **guarded)(_bound(app, root, roles, view))
    return app


def _bound(app: Chalice, root: Root, roles: tuple[str, ...], view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def answer(**path_params: str) -> Response:
        try:
            request = app.current_request
            grant = None
            if roles:
                grant = grant_of(request)
                require_role(grant, roles)
            response = view(View(root, request, grant), **path_params)
            if response.status_code == 201:
                root.api_telemetry.count(figures.REPLAYED if "Idempotent-Replayed" in response.headers else figures.RECORDED)
            if root.lease is not None and root.lease.fenced():
                # Reads go on while cut off from every peer; they say the other regions' writes may be missing.
                response.headers["Region-Fenced"] = "true"
            return response
        except errors.WrongRegion as elsewhere:
            home_url = root.region_urls.get(elsewhere.extra.get("home_region", ""))
            if home_url:  # a router, or the client, retries there
                elsewhere.extra["home_url"] = home_url
            return problem_for(elsewhere)
        except errors.LedgerError as error:
            _count_refusal(root, error)
            return problem_for(error)
        except (BotoCoreError, ClientError) as failure:
            # DynamoDB failed (throttled past botocore's retries, 5xx, unreachable, an
            # unknown error): a fast, retryable 503, never a 500.
            logger.exception("store failure", extra={"error_code": _error_code(failure), "region": root.settings.region})
            root.api_telemetry.count(figures.STORE_UNAVAILABLE)
            return problem_for(errors.StoreUnavailable("the ledger's store did not answer; retry with the same Idempotency-Key"))

    return answer


def _count_refusal(root: Root, error: errors.LedgerError) -> None:
    telemetry = root.api_telemetry
    telemetry.count(figures.REFUSALS)
    if isinstance(error, errors.IdempotencyKeyReused):
        telemetry.count(figures.KEY_MISMATCHES)
    elif isinstance(error, errors.StoreUnavailable):
        telemetry.count(figures.STORE_UNAVAILABLE)


def _flushing(root: Root) -> Callable[[Request, Callable[[Request], Response]], Response]:
    """After every request, one EMF line with what it counted (none when it counted nothing)."""

    def flush(event: Request, get_response: Callable[[Request], Response]) -> Response:
        try:
            return get_response(event)
        finally:
            root.api_telemetry.flush()

    return flush


def _problem_details(event: Request, get_response: Callable[[Request], Response]) -> Response:
    """Every refusal, ours or Chalice's, leaves as a problem document; crashes too."""
    logger.set_correlation_id((event.context or {}).get("requestId"))
    response = get_response(event)
    if response.status_code >= 400 and isinstance(response.body, dict) and "Code" in response.body:
        return problem_from_chalice(response)
    return response


def _error_code(failure: Exception) -> str:
    if isinstance(failure, ClientError):
        return str(failure.response.get("Error", {}).get("Code", ""))
    return type(failure).__name__


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status_code=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _written(outcome: Outcome) -> Response:
    """201 Created, with where to read it; a replay says so (and is byte for byte the first answer)."""
    headers = {"Content-Type": "application/json", "Location": outcome.resource}
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        logger.info("recorded", extra={"resource": outcome.resource})  # `location` is Powertools' own key
    return Response(body=outcome.body, status_code=201, headers=headers)


def _events(events: list[Event]) -> list[dict[str, Any]]:
    return [event.model_dump(mode="json", exclude_none=True) for event in events]


@route("/accounts", methods=["POST"], roles=("operator",))
def open_account(view: View) -> Response:
    return _written(view.root.ledger.open_account(view.caller, parse_body(view.request, OpenAccountRequest)))


@route("/accounts/{account_id}", methods=["GET"], roles=("reader", "auditor", "operator"))
def get_account(view: View, account_id: str) -> Response:
    view.sees(account_id)
    return _json(200, view.root.ledger.get_account(account_id).public())


@route("/accounts/{account_id}/freeze", methods=["POST"], roles=("operator",))
def freeze_account(view: View, account_id: str) -> Response:
    return _written(view.root.ledger.freeze(view.caller, account_id, _optional_body(view.request, StatusChangeRequest)))


@route("/accounts/{account_id}/unfreeze", methods=["POST"], roles=("operator",))
def unfreeze_account(view: View, account_id: str) -> Response:
    return _written(view.root.ledger.unfreeze(view.caller, account_id, _optional_body(view.request, StatusChangeRequest)))


def _optional_body(request: Request, model):
    """No body (or `{}`) is the model's defaults."""
    return parse_body(request, model) if request.raw_body else model()


@route("/accounts/{account_id}/balance", methods=["GET"], roles=("reader", "auditor"))
def get_balance(view: View, account_id: str) -> Response:
    view.sees(account_id)
    params = query_params(view.request, {"consistency", "at", "min_as_of"})
    if "at" in params:
        if "consistency" in params or "min_as_of" in params:
            raise errors.InvalidQuery("at reads the log itself; it takes no consistency or min_as_of")
        return _json(200, with_exact_money(_point_in_time(view.root, account_id, _past_time(params, "at"))))
    consistency = params.get("consistency", "eventual")
    if consistency not in ("eventual", "strong"):
        raise errors.InvalidQuery("consistency is eventual (the projected view) or strong (a fold of the log)")
    balance = view.root.balances.balance(account_id, consistency, params.get("min_as_of"))  # type: ignore[arg-type]
    return _json(200, with_exact_money(_balance_json(balance)))


def _balance_json(balance: BalanceView) -> dict[str, Any]:
    return {
        "account_id": balance.account_id,
        "currency": balance.currency,
        "balance": balance.balance,
        "credits": balance.credits,
        "debits": balance.debits,
        "event_count": balance.event_count,
        "as_of": balance.as_of,
        "consistency": balance.consistency,
        "region": balance.region,
        "available": balance.available,
        "in_flight": balance.in_flight,
        "replication_watermark": balance.replication_watermark,
    }


def with_exact_money(body: dict[str, Any]) -> dict[str, Any]:
    """Each sum of money also as a decimal string (`balance_str`, ...), like Twitter's `id_str`.

    A balance is a sum of amounts and may exceed 2^53, past which JavaScript's
    numbers round (9907919180215090100 reads as ...089152). The numbers stay exact
    JSON numbers; the strings are what a JavaScript client should read.
    """
    return {**body, **{f"{name}_str": str(body[name]) for name in ("balance", "credits", "debits")}}


def _settled_fold(root: Root, account_id: str, moment: datetime) -> tuple[Account, Fold]:
    """The fold of the account's log up to `moment`, leaving out anything after its newest committed event."""
    account = root.ledger.get_account(account_id)
    return account, root.checkpoints.fold_at(account_id, moment, settled_until=account.last_event_id)


def _point_in_time(root: Root, account_id: str, moment: datetime) -> dict[str, Any]:
    account, fold = _settled_fold(root, account_id, moment)
    as_of = None
    if fold.last_event_id:
        as_of = {"event_id": fold.last_event_id, "recorded_at": format_rfc3339(ulid_time(fold.last_event_id))}
    return {
        "account_id": account_id,
        "currency": account.currency,
        "balance": fold.balance,
        "credits": fold.credits,
        "debits": fold.debits,
        "event_count": fold.event_count,
        "as_of": as_of,
        "at": format_rfc3339(moment),
    }


@route("/accounts/{account_id}/digest", methods=["GET"], roles=("auditor",))
def get_digest(view: View, account_id: str) -> Response:
    view.sees(account_id)
    params = query_params(view.request, {"to"})
    moment = _past_time(params, "to")
    account, fold = _settled_fold(view.root, account_id, moment)
    return _json(
        200,
        {
            "account_id": account_id,
            "to": format_rfc3339(moment),
            "event_count": fold.event_count,
            "digest": fold.digest,
            "last_event_id": fold.last_event_id,
            "settled_until": account.last_event_id,
            "algorithm": "sha256-chain-v1",
        },
    )


def _past_time(params: dict[str, str], name: str) -> datetime:
    """An instant not in the future; absent, now (the answer then covers every committed event)."""
    now = datetime.now(timezone.utc)
    moment = _time_param(params, name)
    if moment is None:
        return now
    if moment > now:
        raise errors.InvalidQuery(f"{name} is in the future; the ledger cannot answer for it yet")
    return moment


@route("/accounts/{account_id}/credits", methods=["POST"], roles=("writer",))
def credit(view: View, account_id: str) -> Response:
    return _written(view.root.ledger.credit(view.caller, account_id, parse_body(view.request, MovementRequest)))


@route("/accounts/{account_id}/debits", methods=["POST"], roles=("writer",))
def debit(view: View, account_id: str) -> Response:
    return _written(view.root.ledger.debit(view.caller, account_id, parse_body(view.request, MovementRequest)))


@route("/transfers", methods=["POST"], roles=("writer",))
def transfer(view: View) -> Response:
    return _written(view.root.ledger.transfer(view.caller, parse_body(view.request, TransferRequest)))


@route("/batches", methods=["POST"], roles=("writer",))
def batch(view: View) -> Response:
    """Atomic: 201 with every operation's transaction, or one problem for the whole batch. Independent: 200 with
    a result per operation, each recorded (201) or refused (its problem document)."""
    recorded = view.root.ledger.batch(view.caller, parse_body(view.request, BatchRequest))
    if isinstance(recorded, Outcome):
        headers = {"Content-Type": "application/json"}
        if recorded.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(body=recorded.body, status_code=201, headers=headers)
    results: list[dict[str, Any]] = []
    for result in recorded:
        if isinstance(result, Outcome):
            results.append({"status": 201, **json.loads(result.body), **({"replayed": True} if result.replayed else {})})
        else:
            _count_refusal(view.root, result)
            refusal = problem_for(result)
            results.append({"status": refusal.status_code, "problem": json.loads(refusal.body)})
    replayed = all(isinstance(r, Outcome) and r.replayed for r in recorded)
    return _json(200, {"mode": "independent", "results": results}, {"Idempotent-Replayed": "true"} if replayed else None)


@route("/transactions/{transaction_id}", methods=["GET"], roles=("reader", "auditor"))
def get_transaction(view: View, transaction_id: str) -> Response:
    ledger = view.root.ledger
    events = ledger.transaction(transaction_id)
    assert view.grant is not None
    if not any(view.grant.covers(event.entity_id) for event in events):  # as if it did not exist
        raise errors.TransactionNotFound(f"no transaction {transaction_id}", transaction_id=transaction_id)
    shown = [event for event in events if view.grant.covers(event.entity_id)]  # another tenant's leg stays theirs
    body: dict[str, Any] = {"transaction_id": transaction_id, "type": events[0].transaction_type}
    if events[0].reverses:
        body["reverses"] = events[0].reverses
    reversed_by = ledger.reversed_by(transaction_id)
    if reversed_by:
        body["reversed_by"] = reversed_by
    return _json(200, {**body, "events": _events(shown)})


@route("/transactions/{transaction_id}/reversal", methods=["POST"], roles=("writer",))
def reverse_transaction(view: View, transaction_id: str) -> Response:
    request = view.request
    # The body is optional: no body (or `{}`) reverses with a default description.
    return _written(view.root.ledger.reverse(view.caller, transaction_id, _optional_body(request, ReversalRequest)))


@route("/accounts/{account_id}/events", methods=["GET"], roles=("reader", "auditor"))
def account_events(view: View, account_id: str) -> Response:
    view.sees(account_id)
    params = query_params(view.request, {"limit", "cursor", "from", "to", "order", "after"})
    order = params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise errors.InvalidQuery("order is asc or desc")
    page = view.root.ledger.history(
        account_id,
        limit=_int_param(params, "limit", DEFAULT_PAGE),
        cursor=params.get("cursor"),
        start=_time_param(params, "from"),
        end=_time_param(params, "to"),
        order=order,  # type: ignore[arg-type]
        after=params.get("after"),
    )
    body = {"account_id": account_id, "events": _events(page.events), "next_cursor": page.next_cursor}
    return _json(200, {**body, "settled_until": page.settled_until})


@route("/events", methods=["GET"], roles=("auditor",))
def timeline(view: View) -> Response:
    assert view.grant is not None
    if not view.grant.covers_everything:  # the timeline crosses every tenant
        raise errors.Forbidden("the cross-account timeline needs an auditor of every account (accounts: '*')")
    params = query_params(view.request, {"limit", "cursor", "from", "to"})
    start, end = _time_param(params, "from"), _time_param(params, "to")
    if start is None:
        raise errors.InvalidQuery("from is required: the window's start, an RFC 3339 time with a zone (to defaults to the settled now)")
    limit = _int_param(params, "limit", DEFAULT_PAGE)
    page = view.root.timeline.page(start, end, limit, params.get("cursor"))
    body = {"events": _events(page.events), "next_cursor": page.next_cursor}
    return _json(200, {**body, "settled_until": format_rfc3339(page.settled_until)})


@route("/openapi.json", methods=["GET"], roles=PUBLIC)
def openapi_document(view: View) -> Response:
    query_params(view.request, set())
    return Response(body=_openapi_text(), status_code=200, headers={"Content-Type": "application/json"})


@functools.lru_cache(maxsize=1)
def _openapi_text() -> str:
    return openapi.rendered()


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not (0 < len(value) <= 7 and value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        raise errors.InvalidQuery(f"{name} must be a whole number from 1 to {MAX_PAGE}")
    return int(value)


def _time_param(params: dict[str, str], name: str):
    value = params.get(name)
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise errors.InvalidQuery(f"{name} must be an RFC 3339 time with a zone, such as 2026-11-22T10:00:00Z") from exc
