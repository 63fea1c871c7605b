"""Session-wide: no product code path may update or delete an event (see event_log_guard)."""

from __future__ import annotations

from pathlib import Path

import botocore.client
import pytest

from event_log_guard import EventLogGuard
from package_build import PackageBuild, shared_build
import profiles  # noqa: F401 - registers and loads the Hypothesis profile

ROOT = Path(__file__).resolve().parent.parent
GUARD = EventLogGuard(ROOT)


@pytest.fixture(scope="session", autouse=True)
def event_log_guard():
    """Observe every botocore API call made in this process for the whole session."""
    original = botocore.client.BaseClient._make_api_call

    def observed(client, operation_name, api_params):
        GUARD.observe(operation_name, api_params)
        return original(client, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = observed
    try:
        yield GUARD
    finally:
        botocore.client.BaseClient._make_api_call = original


@pytest.fixture(scope="session")
def ledger_package(tmp_path_factory: pytest.TempPathFactory) -> PackageBuild:
    """`ledger package` built once for the whole run (see package_build)."""
    return shared_build(tmp_path_factory)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(
        f"event log guard: {GUARD.appends} guarded appends and {sum(GUARD.calls.values())} product DynamoDB calls "
        f"observed, {len(GUARD.violations)} updates or deletes of events"
    )


def pytest_sessionfinish(session, exitstatus):
    if GUARD.violations:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        for violation in sorted(set(GUARD.violations)):
            print(f"\nEVENT LOG VIOLATION: {violation}")
