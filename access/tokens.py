"""Bearer tokens: JWTs signed with HS256 by a key the deployment holds (`ledger serve`'s data dir, or a secret).

Verification pins the algorithm (no `none`, no RS/HS confusion), requires `exp`,
`iat` and `sub`, and checks the issuer, so a token minted for another service
with the same key is refused. The refusal says why in words a client can act on
(expired, bad signature, malformed), never echoing the token.
"""

from __future__ import annotations

import secrets
import time

import jwt

from .grants import ROLES, Grant, InvalidGrant

ALGORITHM = "HS256"
ISSUER = "dynamo-ledger"
MIN_KEY_BYTES = 32
LEEWAY_SECONDS = 30  # clock skew between the issuer and this region


class InvalidToken(Exception):
    """The bearer token is missing, malformed, expired, or not signed by this deployment's key."""


def new_key() -> str:
    """A fresh signing key: 256 random bits, hex."""
    return secrets.token_hex(32)


class TokenCodec:
    def __init__(self, key: str | bytes) -> None:
        key_bytes = key.encode() if isinstance(key, str) else key
        if len(key_bytes) < MIN_KEY_BYTES:
            raise ValueError(f"a signing key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key_bytes

    def issue(self, principal: str, roles: list[str], accounts: list[str], ttl_seconds: int, *, now: float | None = None) -> str:
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s): {', '.join(unknown)}; known: {', '.join(ROLES)}")
        issued = int(time.time() if now is None else now)
        grant = Grant(principal, frozenset(roles), tuple(accounts), issued + ttl_seconds)  # validates
        claims = {
            "iss": ISSUER,
            "sub": grant.principal,
            "roles": sorted(grant.roles),
            "accounts": list(grant.accounts),
            "iat": issued,
            "exp": grant.expires_at,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str, *, now: float | None = None) -> Grant:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": now is None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        if now is not None and int(claims["exp"]) + LEEWAY_SECONDS < now:
            raise InvalidToken("the token has expired")
        try:
            return Grant.from_claims(claims)
        except InvalidGrant as exc:
            raise InvalidToken(f"the token's claims are not valid: {exc}") from None


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        raise InvalidToken("send Authorization: Bearer <token>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header must be `Bearer <token>`")
    return token.strip()
