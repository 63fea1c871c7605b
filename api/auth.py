"""Authentication and authorization at the API's edge: one authorizer, then per-route roles and account scope.

The authorizer is Chalice's built-in one, so the same function runs as API
Gateway's Lambda authorizer on AWS and inside the local gateway of `ledger
serve` and the tests. It never raises: a refused token becomes a `refusal` in the
authorizer context, and the view answers it with a 401 problem document whose
`WWW-Authenticate` says why (expired, bad signature). API Gateway's own 401
(no Authorization header at all) is the only one made elsewhere: by the deploy
template's gateway response, and by the local server.

With `LEDGER_COGNITO_USER_POOL_ARN` set, API Gateway checks Cognito's tokens
itself and the views read the same claims (`custom:roles`, `custom:accounts`).

Every route names the roles that may call it. Account scope is checked for every
account a request touches: reads here, writes in the domain (`Caller.may_touch`),
so a batch or a reversal cannot reach past it. An account outside the token's
patterns answers exactly as an account that does not exist (404): a tenant learns
nothing of another's accounts, not even which ids are taken.
"""

from __future__ import annotations

import time
from datetime import datetime

from chalice import AuthResponse, Chalice, CognitoUserPoolAuthorizer
from chalice.app import Request

from access.grants import Grant, InvalidGrant
from access.keys import KeyUnavailable
from access.tokens import LEEWAY_SECONDS, InvalidToken, bearer
from composition.root import Root
from ledger import errors

AUTHORIZER_NAME = "token_authorizer"


def install_authorizer(app: Chalice, root: Root):
    """The authorizer every protected route uses: Cognito's when configured, else the ledger's own."""
    if root.settings.cognito_user_pool_arn:
        return CognitoUserPoolAuthorizer("cognito", provider_arns=[root.settings.cognito_user_pool_arn])

    @app.authorizer(name=AUTHORIZER_NAME)
    def token_authorizer(auth_request):
        try:
            grant = root.signing_keys.codec().verify(bearer(auth_request.token))
        except InvalidToken as refused:
            return AuthResponse(routes=["*"], principal_id="anonymous", context={"refusal": str(refused)})
        except KeyUnavailable as unavailable:
            return AuthResponse(routes=["*"], principal_id="anonymous", context={"unavailable": str(unavailable)})
        return AuthResponse(routes=["*"], principal_id=grant.principal, context=grant.to_context())

    return token_authorizer


def grant_of(request: Request, *, now: float | None = None) -> Grant:
    """The verified grant of this request, or why there is none."""
    context = (request.context or {}).get("authorizer") or {}
    try:
        if "claims" in context:  # Cognito: API Gateway verified the signature
            claims = dict(context["claims"])
            claims["exp"] = _epoch(claims.get("exp"))
            grant = Grant.from_claims(claims, prefix="custom:")
        elif "refusal" in context:
            raise errors.Unauthenticated(str(context["refusal"]))
        elif "unavailable" in context:
            raise errors.AuthorizationUnavailable("the key that checks tokens could not be read; retry shortly")
        elif "principalId" in context and "roles" in context:
            grant = Grant.from_context(str(context["principalId"]), context)
        else:
            raise errors.Unauthenticated("send Authorization: Bearer <token>", token_sent=False)
    except InvalidGrant as exc:
        raise errors.Unauthenticated(f"the token's claims are not valid: {exc}") from None
    # API Gateway caches an authorizer's answer per token (5 minutes): expiry is checked here too.
    if grant.expires_at + LEEWAY_SECONDS < (time.time() if now is None else now):
        raise errors.Unauthenticated("the token has expired")
    return grant


def _epoch(value: object) -> object:
    """Cognito's `exp` reaches the view as API Gateway prints it (`Thu Dec 03 10:00:00 UTC 2026`) or a number."""
    if isinstance(value, str) and not value.isdigit():
        try:
            return int(datetime.strptime(value, "%a %b %d %H:%M:%S %Z %Y").timestamp())
        except ValueError:
            return None
    return value


def require_role(grant: Grant, roles: tuple[str, ...]) -> None:
    if not any(grant.has(role) for role in roles):
        held = ", ".join(sorted(grant.roles)) or "none"
        raise errors.Forbidden(f"this needs the role {' or '.join(roles)}; the token's roles: {held}")


def require_account(grant: Grant, account_id: str) -> None:
    """404 for an account outside the token's patterns, exactly as for one that does not exist."""
    if not grant.covers(account_id):
        raise errors.AccountNotFound(f"account {account_id!r} does not exist", account_id=account_id)
