"""The OpenAPI document: served, kept in the repository, and complete (every route, every problem code)."""

from __future__ import annotations

import json
from pathlib import Path

from api import openapi
from api.app import create_app
from composition.root import Root
from ledger.config import Settings
from api.problems import STATUS_BY_ERROR

ROOT = Path(__file__).resolve().parents[2]


def test_the_repository_file_is_the_document_the_code_generates():
    assert (ROOT / "openapi.json").read_text() == openapi.rendered(), "run: python -m api.openapi > openapi.json"


def test_every_route_and_method_of_the_app_is_documented():
    paths = openapi.document()["paths"]

    app = create_app(Root(Settings()))  # builds no client: nothing is asked of it

    for path, methods in app.routes.items():
        for method in methods:
            assert method.lower() in paths.get(path, {}), f"{method} {path} is missing from the OpenAPI document"


def test_every_problem_code_is_documented_with_its_status_on_some_route():
    document = openapi.document()
    documented: dict[str, set[str]] = {}
    for operations in document["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                for code in response.get("x-problem-codes", []):
                    documented.setdefault(code, set()).add(status)

    for error, status in STATUS_BY_ERROR.items():
        assert document["x-problem-statuses"][error.code] == status
        assert error.code in document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        assert str(status) in documented.get(error.code, set()), f"no route documents {error.code} ({status})"


def test_writes_document_their_idempotency_and_retry_headers():
    operation = openapi.document()["paths"]["/transfers"]["post"]

    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in operation["parameters"])
    assert set(operation["responses"]["201"]["headers"]) == {"Location", "Idempotent-Replayed"}
    assert "Retry-After" in operation["responses"]["503"]["headers"]


def test_the_document_is_served(api):
    response = api.get("/openapi.json")

    assert response.status == 200
    assert response.json == json.loads(openapi.rendered())
    assert response.json["openapi"] == "3.1.0"
