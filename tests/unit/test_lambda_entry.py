"""What Lambda calls by name: the API, the projector, and the built-in authorizer's function."""

from __future__ import annotations

import importlib
import json
import time

from access.tokens import TokenCodec

KEY = "k" * 32


def test_the_authorizer_lambda_handler_is_the_module_attribute_chalice_names(monkeypatch):
    monkeypatch.setenv("LEDGER_TOKEN_KEY", KEY)
    monkeypatch.delenv("LEDGER_COGNITO_USER_POOL_ARN", raising=False)
    module = importlib.import_module("app")
    module = importlib.reload(module)  # built from this environment
    [config] = module.app.builtin_auth_handlers
    assert config.handler_string == "app.token_authorizer"

    token = TokenCodec(KEY).issue("acme-app", ["reader"], ["acme:*"], 600)
    arn = "arn:aws:execute-api:us-east-1:123456789012:abc/api/GET/accounts/acme:a"
    allowed = module.token_authorizer({"type": "TOKEN", "authorizationToken": f"Bearer {token}", "methodArn": arn}, None)
    assert allowed["principalId"] == "acme-app"
    assert allowed["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert json.loads(allowed["context"]["accounts"]) == ["acme:*"] and allowed["context"]["expires_at"] > time.time()

    refused = module.token_authorizer({"type": "TOKEN", "authorizationToken": "Bearer nope", "methodArn": arn}, None)
    assert refused["principalId"] == "anonymous" and "refusal" in refused["context"]
