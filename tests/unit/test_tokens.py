"""Bearer tokens: what `ledger tokens issue` signs is what the authorizer accepts, and nothing else."""

from __future__ import annotations

import stat
import time

import pytest

from access.keys import KeyUnavailable, SigningKeys
from access.tokens import InvalidToken, TokenCodec, bearer
from runtime.cli import main
from runtime.tokens import KEY_FILE, signing_key, ttl_seconds

KEY = "k" * 32


def test_a_token_carries_its_principal_roles_patterns_and_expiry():
    grant = TokenCodec(KEY).verify(TokenCodec(KEY).issue("acme-app", ["writer", "reader"], ["acme:*"], 600))
    assert (grant.principal, grant.roles, grant.accounts) == ("acme-app", {"writer", "reader"}, ("acme:*",))
    assert 590 <= grant.expires_at - time.time() <= 600


def test_an_expired_token_is_refused_after_the_leeway_only():
    token = TokenCodec(KEY).issue("p", ["reader"], ["*"], 60, now=time.time() - 85)
    TokenCodec(KEY).verify(token)  # 25 s past expiry: within the 30 s allowed for clock skew
    with pytest.raises(InvalidToken, match="expired"):
        TokenCodec(KEY).verify(TokenCodec(KEY).issue("p", ["reader"], ["*"], 60, now=time.time() - 100))


def test_short_keys_unknown_roles_and_bad_headers_are_refused():
    with pytest.raises(ValueError):
        TokenCodec("short")
    with pytest.raises(ValueError, match="unknown role"):
        TokenCodec(KEY).issue("p", ["admin"], ["*"], 60)
    for header in (None, "", "Basic abc", "Bearer ", "Bearer"):
        with pytest.raises(InvalidToken):
            bearer(header)
    assert bearer("bearer  abc.def.ghi ") == "abc.def.ghi"


def test_no_key_configured_is_unavailable_never_open():
    with pytest.raises(KeyUnavailable):
        SigningKeys().codec()


def test_a_secret_is_read_once_and_kept_when_a_refresh_fails():
    calls = []

    class Secrets:
        def get_secret_value(self, SecretId):
            calls.append(SecretId)
            if len(calls) > 1:
                raise ConnectionError("down")
            return {"SecretString": KEY + "\n"}

    keys = SigningKeys(secret_arn="arn:secret", secrets=Secrets)
    token = keys.codec().issue("p", ["reader"], ["*"], 60)
    keys._read_at -= 10_000  # due for a refresh, which fails: the key held goes on verifying
    assert keys.codec().verify(token).principal == "p"
    assert calls == ["arn:secret", "arn:secret"]


def test_the_data_dir_key_is_created_once_owner_only(tmp_path):
    key = signing_key(tmp_path)
    assert signing_key(tmp_path) == key and len(key) == 64
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800), ("120", 120)])
def test_lifetimes(text, seconds):
    assert ttl_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0", "1y", "-1h", "91d", "h"])
def test_bad_lifetimes(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        ttl_seconds(text)


def test_ledger_tokens_issue_signs_with_the_serve_s_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LEDGER_TOKEN_KEY", raising=False)
    key = signing_key(tmp_path)
    code = main(["tokens", "issue", "--principal", "acme-app", "--role", "writer", "--role", "reader",
                 "--accounts", "acme:*", "--ttl", "1h", "--data-dir", str(tmp_path)])
    assert code == 0
    grant = TokenCodec(key).verify(capsys.readouterr().out.strip())
    assert (grant.principal, grant.roles, grant.accounts) == ("acme-app", {"writer", "reader"}, ("acme:*",))


def test_ledger_tokens_issue_says_what_is_wrong(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LEDGER_TOKEN_KEY", raising=False)
    assert main(["tokens", "issue", "--principal", "p", "--role", "writer", "--accounts", "*", "--data-dir", str(tmp_path)]) == 2
    assert "no signing key" in capsys.readouterr().err
    signing_key(tmp_path)
    assert main(["tokens", "issue", "--principal", "p", "--role", "admin", "--accounts", "*", "--data-dir", str(tmp_path)]) == 2
    assert "unknown role" in capsys.readouterr().err
