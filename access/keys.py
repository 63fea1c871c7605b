"""Where the token signing key comes from: configuration, or a Secrets Manager secret read on first use.

The secret is read again after `REFRESH_SECONDS` so a rotated key takes effect
without a deploy; a failed refresh keeps the key already held, so only a cold
start with Secrets Manager down leaves tokens uncheckable (a retryable 503).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .tokens import TokenCodec

REFRESH_SECONDS = 300


class KeyUnavailable(Exception):
    """No signing key is configured, or its secret could not be read."""


class SigningKeys:
    def __init__(self, key: str | None = None, secret_arn: str | None = None, secrets: Callable[[], Any] | None = None) -> None:
        self._static = TokenCodec(key) if key else None
        self._secret_arn = secret_arn
        self._secrets = secrets
        self._held: TokenCodec | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def codec(self) -> TokenCodec:
        if self._static is not None:
            return self._static
        if not self._secret_arn or self._secrets is None:
            raise KeyUnavailable("no token signing key is configured (LEDGER_TOKEN_KEY or LEDGER_TOKEN_SECRET_ARN)")
        with self._lock:
            if self._held is None or time.monotonic() - self._read_at > REFRESH_SECONDS:
                try:
                    value = self._secrets().get_secret_value(SecretId=self._secret_arn)["SecretString"]
                    self._held, self._read_at = TokenCodec(value.strip()), time.monotonic()
                except Exception as exc:  # botocore, a missing or short secret: keep what is held
                    if self._held is None:
                        raise KeyUnavailable(f"the token signing key could not be read: {type(exc).__name__}") from exc
            return self._held
