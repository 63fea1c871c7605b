"""Bearer tokens for a local `serve` (or any deployment whose key you hold): the key file and `ledger tokens issue`.

`ledger serve` is secure by default: on first start it creates a random signing
key in its data directory (`token-signing-key`, readable by its owner only) and
every route but `/openapi.json` needs a token signed with it. `ledger tokens
issue` signs tokens with the same key (or with LEDGER_TOKEN_KEY, or, with --aws,
the Secrets Manager secret named by LEDGER_TOKEN_SECRET_ARN).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import replace
from pathlib import Path

from access.grants import ROLES
from access.keys import KeyUnavailable, SigningKeys
from access.tokens import TokenCodec, new_key
from ledger.config import Settings, secrets_client

KEY_FILE = "token-signing-key"
OPERATOR_TOKEN_TTL = 12 * 3600
MAX_TTL = 90 * 24 * 3600
_TTL = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def signing_key(data_dir: Path) -> str:
    """The data directory's key, created (owner-only) on first use."""
    path = Path(data_dir) / KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    try:  # O_EXCL: two starts racing keep one key
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key


def with_local_key(settings: Settings, data_dir: Path) -> Settings:
    """Settings that verify tokens with the data dir's key, unless a key or secret is configured already."""
    if settings.token_key or settings.token_secret_arn or settings.cognito_user_pool_arn:
        return settings
    return replace(settings, token_key=signing_key(data_dir))


def operator_token(codec: TokenCodec) -> str:
    """The ready line's token: every role on every account, for the README's curl examples."""
    return codec.issue("operator", list(ROLES), ["*"], OPERATOR_TOKEN_TTL)


def ttl_seconds(text: str) -> int:
    match = _TTL.fullmatch(text.strip())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime such as 90s, 30m, 1h or 7d (at most 90d)")
    return seconds


def _listed(values: list[str]) -> list[str]:
    """Repeated flags and comma-separated values alike: `--role writer --role reader` or `--role writer,reader`."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def add_parser(commands) -> None:
    tokens = commands.add_parser("tokens", help="issue bearer tokens for the API")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    issue = token_commands.add_parser(
        "issue", help="print a signed token (JWT) for a principal, its roles and the accounts it may touch"
    )
    issue.add_argument("--principal", required=True, help="who the token speaks for (recorded on every event it writes)")
    issue.add_argument("--role", action="append", required=True, help=f"repeatable or comma-separated: {', '.join(ROLES)}")
    issue.add_argument("--accounts", action="append", required=True, help="account patterns, `*` for any run: 'acme:*' (repeatable)")
    issue.add_argument("--ttl", type=ttl_seconds, default=3600, help="lifetime: 90s, 30m, 1h (default), 7d; at most 90d")
    issue.add_argument("--aws", action="store_true", help="sign with the secret named by LEDGER_TOKEN_SECRET_ARN")
    issue.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("LEDGER_DATA_DIR", ".ledger-data")),
        help="the data directory of `ledger serve`, which holds its key (default: LEDGER_DATA_DIR, else ./.ledger-data)",
    )
    issue.set_defaults(handler=_issue)


def _issue(args: argparse.Namespace) -> int:
    from .cli import CommandError

    roles = _listed(args.role)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise CommandError(f"unknown role(s): {', '.join(unknown)}; the roles are {', '.join(ROLES)}")
    settings = Settings.from_env()
    if args.aws or settings.token_key:
        keys = SigningKeys(settings.token_key, settings.token_secret_arn, lambda: secrets_client(settings))
    else:
        path = args.data_dir / KEY_FILE
        if not path.exists():
            raise CommandError(f"no signing key in {args.data_dir} ({KEY_FILE}): start `ledger serve` there once, or set LEDGER_TOKEN_KEY")
        keys = SigningKeys(path.read_text().strip())
    try:
        codec = keys.codec()
        token = codec.issue(args.principal, roles, _listed(args.accounts), args.ttl)
    except KeyUnavailable as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:  # a bad principal or pattern
        raise CommandError(str(exc)) from None
    print(token)
    return 0
