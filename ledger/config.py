"""Configuration from the environment, and the one place that builds boto3 clients.

The same code runs against DynamoDB Local, moto or AWS: only `endpoint_url` differs.
Clients are built lazily by callers (the API on first request, the CLI per command),
never at import time, so tests can point everything elsewhere by configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

import boto3
from botocore.config import Config

from .cursors import development_key
from .schema import LedgerTables

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True)
class Settings:
    """Where the ledger's tables live and which region this process writes for."""

    stage: str = "dev"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    idempotency_ttl_seconds: int = 24 * 3600
    cursor_secret: str | None = None
    # Every region of the deployment (accounts may be homed in any); this process writes for `region`.
    regions: tuple[str, ...] = ()
    # Who signs bearer tokens: the key itself (`ledger serve` keeps one in its data dir), a Secrets
    # Manager secret holding it (AWS), or a Cognito user pool whose tokens API Gateway checks.
    token_key: str | None = field(default=None, repr=False)
    token_secret_arn: str | None = None
    cognito_user_pool_arn: str | None = None
    tables: LedgerTables = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", LedgerTables.for_stage(self.stage))
        if self.region not in self.regions:
            object.__setattr__(self, "regions", (*self.regions, self.region))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """LEDGER_STAGE, LEDGER_REGION (else AWS_REGION), LEDGER_REGIONS, LEDGER_ENDPOINT_URL, LEDGER_IDEMPOTENCY_TTL_SECONDS,
        LEDGER_CURSOR_SECRET, LEDGER_TOKEN_KEY, LEDGER_TOKEN_SECRET_ARN, LEDGER_COGNITO_USER_POOL_ARN."""
        env = os.environ if environ is None else environ
        return cls(
            stage=env.get("LEDGER_STAGE", "dev"),
            region=env.get("LEDGER_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=env.get("LEDGER_ENDPOINT_URL") or None,
            idempotency_ttl_seconds=int(env.get("LEDGER_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)),
            cursor_secret=env.get("LEDGER_CURSOR_SECRET") or None,
            regions=tuple(r.strip() for r in env.get("LEDGER_REGIONS", "").split(",") if r.strip()),
            token_key=env.get("LEDGER_TOKEN_KEY") or None,
            token_secret_arn=env.get("LEDGER_TOKEN_SECRET_ARN") or None,
            cognito_user_pool_arn=env.get("LEDGER_COGNITO_USER_POOL_ARN") or None,
        )

    @property
    def cursor_key(self) -> bytes:
        """The key that signs pagination cursors (a public development key when none is set)."""
        return self.cursor_secret.encode() if self.cursor_secret else development_key(self.stage)

    @property
    def is_local_endpoint(self) -> bool:
        return bool(self.endpoint_url) and urlparse(self.endpoint_url).hostname in _LOOPBACK_HOSTS


# The request path's budget. botocore is the one retry layer for throttling, 5xx and
# dropped connections: 3 attempts, its backoff (at most 1 s, then 2 s, for throttling),
# and short timeouts, so a dead or hung DynamoDB is a 503 in well under API Gateway's
# 29 s: at worst 3 x (1 s connect + 2 s read) + 3 s of backoff.
REQUEST_PATH = Config(
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=1,
    read_timeout=2,
    max_pool_connections=64,
)
# Operators' commands (rebuild, verify, export) scan and fold whole logs: more patience.
OPERATOR = Config(retries={"mode": "standard", "total_max_attempts": 5}, connect_timeout=2, read_timeout=10, max_pool_connections=16)


def dynamodb_client(settings: Settings, config: Config = REQUEST_PATH):
    """A DynamoDB client for these settings.

    A loopback endpoint (DynamoDB Local, moto) gets placeholder credentials when the
    environment has none: those servers accept any, and a new user has none set.
    """
    return _client("dynamodb", settings, config)


def streams_client(settings: Settings):
    """A DynamoDB Streams client for the local stream poller.

    Short timeouts: a call in flight cannot be interrupted, so they bound how long
    stopping the poller can take.
    """
    return _client(
        "dynamodbstreams",
        settings,
        Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5),
    )


def secrets_client(settings: Settings):
    """Secrets Manager, for the key that signs bearer tokens (never through a local DynamoDB endpoint)."""
    return boto3.session.Session(region_name=settings.region).client(
        "secretsmanager", config=Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=1, read_timeout=2)
    )


def _client(service: str, settings: Settings, config: Config):
    session = boto3.session.Session(region_name=settings.region)
    credentials: dict[str, str] = {}
    if settings.is_local_endpoint and session.get_credentials() is None:
        credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    return session.client(service, endpoint_url=settings.endpoint_url, config=config, **credentials)
