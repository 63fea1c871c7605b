"""Pagination cursors: small, signed, and bound to the query that issued them.

A cursor is `base64url(JSON of string fields) . base64url(HMAC-SHA256 truncated to 16 bytes)`.
The signature is checked before the JSON is parsed, so a forged or altered cursor
is refused without its content ever being read (a hostile cursor of 2,000 nested
`[` once crashed the parser), and the fields are checked again against the query
the caller repeats: a cursor resumes only the query it came from.

The key comes from configuration (`LEDGER_CURSOR_SECRET`); every API process of a
deployment must share it, or a cursor from one is refused by another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from . import errors

MAX_CURSOR_CHARS = 512
_SIGNATURE_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Seals and opens cursors with one secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a cursor key needs at least 16 bytes")
        self._secret = secret

    def seal(self, fields: dict[str, str]) -> str:
        payload = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def open(self, cursor: str, names: set[str]) -> dict[str, str]:
        """The cursor's fields (exactly `names`, all strings), or `InvalidCursor`."""
        refused = errors.InvalidCursor("the cursor is not one this service issued for this query")
        if not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR_CHARS or cursor.count(".") != 1:
            raise refused
        payload_text, signature_text = cursor.split(".")
        try:
            payload, signature = _unb64(payload_text), _unb64(signature_text)
        except (binascii.Error, ValueError) as exc:
            raise refused from exc
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise refused
        try:
            fields = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # signed by us, so never; but never a 500 either
            raise refused from exc
        if not isinstance(fields, dict) or set(fields) != names or not all(isinstance(v, str) for v in fields.values()):
            raise refused
        return fields

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def development_key(stage: str) -> bytes:
    """The key when none is configured: stable per stage, so every process agrees, but public."""
    return hashlib.sha256(f"dynamo-ledger cursor key for stage {stage}; set LEDGER_CURSOR_SECRET".encode()).digest()
