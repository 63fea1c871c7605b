"""Fixtures for tests that run against a real DynamoDB Local.

CI has to exercise the real engine, so a machine without Java makes these
fixtures fail rather than skip, and the DynamoDB Local jar is installed on
first use instead of by a manual setup step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from runtime.dynamodb_local import DynamoDBLocal, ensure_installed, java_available
from serving import Served

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


def _client(endpoint_url: str) -> Any:
    """A boto3 DynamoDB client for a local endpoint, with throwaway credentials."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """One in-memory DynamoDB Local for the whole session; give each test its own table names."""
    if not java_available():
        pytest.fail(
            "The integration tests need DynamoDB Local, which needs Java 11 or newer, "
            "but `java -version` does not run on this machine. Install a JRE "
            "(e.g. apt-get install openjdk-17-jre-headless); these tests never skip.",
            pytrace=False,
        )
    ensure_installed()
    with DynamoDBLocal() as db:
        yield db


@pytest.fixture(scope="session")
def dynamodb_local_client(dynamodb_local: DynamoDBLocal) -> Any:
    """A boto3 DynamoDB client for the session's DynamoDB Local."""
    return _client(dynamodb_local.endpoint_url)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ensure_installed()
    return tmp_path / "ledger-data"


@pytest.fixture
def served(data_dir: Path) -> Iterator[Served]:
    server = Served(data_dir)
    yield server
    server.stop()  # escalates to SIGKILL: a test never leaves a serve or a DynamoDB Local behind
