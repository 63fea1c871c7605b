"""A thin JSON client over Chalice's test client, with fresh Idempotency-Keys."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from chalice.test import Client

from access.grants import ROLES
from access.tokens import TokenCodec

_AUTO = object()
_keys = itertools.count(1)

# The key every test's Settings verify tokens with (`Settings(..., token_key=TEST_TOKEN_KEY)`).
TEST_TOKEN_KEY = "test-signing-key-" + "0" * 32


def token(principal: str = "test-operator", roles: tuple[str, ...] = ROLES, accounts: tuple[str, ...] = ("*",),
          ttl: int = 3600, key: str = TEST_TOKEN_KEY, now: float | None = None) -> str:
    """A signed bearer token; by default every role on every account."""
    return TokenCodec(key).issue(principal, list(roles), list(accounts), ttl, now=now)


def fresh_key() -> str:
    """An Idempotency-Key no other request of this session uses."""
    return f"test-key-{next(_keys):06d}"


@dataclass(frozen=True)
class ApiResponse:
    """What the client saw: status, headers (names lower-cased), raw body, parsed JSON."""

    status: int
    headers: dict[str, str]
    body: bytes
    json: Any

    @property
    def code(self) -> str | None:
        """The problem document's `code`, if the body is one."""
        return self.json.get("code") if isinstance(self.json, dict) else None


class Api:
    """A thin helper over Chalice's test client that speaks JSON and Idempotency-Keys."""

    def __init__(self, client: Client, bearer: str | None = None) -> None:
        self._client = client
        self._http = client.http
        self._auth = {"Authorization": f"Bearer {bearer or token()}"}

    def as_(self, bearer: str | None) -> Api:
        """The same app, called with another token (`None`: no Authorization header at all)."""
        other = Api(self._client, bearer)
        if bearer is None:
            other._auth = {}
        return other

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        key: Any = _AUTO,
        raw: bytes | str | None = None,
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> ApiResponse:
        """POST `body` as JSON (or `raw` bytes as given); `key=None` sends no Idempotency-Key."""
        sent: dict[str, str] = dict(self._auth)
        if content_type is not None:
            sent["Content-Type"] = content_type
        if key is _AUTO:
            key = fresh_key()
        if key is not None:
            sent["Idempotency-Key"] = key
        sent.update(headers or {})
        if raw is not None:
            payload = raw.encode() if isinstance(raw, str) else raw
        elif body is None:
            payload = b""
        else:
            payload = json.dumps(body).encode()
        return self._wrap(self._http.post(path, headers=sent, body=payload))

    def request(self, method: str, path: str, body: Any = None) -> ApiResponse:
        """Any method, JSON body, a fresh Idempotency-Key: for routes and methods that do not exist."""
        headers = {**self._auth, "Content-Type": "application/json", "Idempotency-Key": fresh_key()}
        payload = b"" if body is None else json.dumps(body).encode()
        return self._wrap(self._http.request(method, path, headers=headers, body=payload))

    def get(self, path: str, params: dict[str, Any] | None = None) -> ApiResponse:
        if params:
            path = f"{path}?{urlencode(params)}"
        return self._wrap(self._http.get(path, headers=dict(self._auth)))

    @staticmethod
    def _wrap(response: Any) -> ApiResponse:
        try:
            parsed = json.loads(response.body) if response.body else None
        except ValueError:
            parsed = None
        return ApiResponse(
            status=response.status_code,
            headers={name.lower(): value for name, value in response.headers.items()},
            body=response.body,
            json=parsed,
        )


def api_over(root) -> Api:
    """An Api over the app built on `root` (another region, or parts a test swapped in)."""
    from api.app import create_app

    return Api(Client(create_app(root)))
