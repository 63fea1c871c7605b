"""Session-wide: no product code path may update or delete an event, and the deployed functions stay inside their roles.

See event_log_guard: every DynamoDB call the product makes is watched. Under
pytest-xdist each worker hands what it saw to the controller, which checks and reports.
"""

from __future__ import annotations

from pathlib import Path

import botocore.client
import pytest

from event_log_guard import EventLogGuard
from iam_policy import outside_policies
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
    if hasattr(config, "workeroutput"):
        return
    entries = sum(GUARD.accesses.values())
    terminalreporter.write_line(
        f"event log guard: {GUARD.appends} guarded appends and {sum(GUARD.calls.values())} product DynamoDB calls "
        f"observed, {len(GUARD.violations)} updates or deletes of events; {entries} calls by the API and the "
        f"projector, {len(outside_policies(GUARD.accesses))} kinds outside their roles' generated policies"
    )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist's controller: a worker finished; take what its guard saw."""
    GUARD.merge(getattr(node, "workeroutput", {}).get("event_log_guard"))


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller checks everything at once
        workeroutput["event_log_guard"] = GUARD.dumps()
        return
    refused = outside_policies(GUARD.accesses)
    if GUARD.violations or refused:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for violation in sorted(set(GUARD.violations)):
        print(f"\nEVENT LOG VIOLATION: {violation}")
    for call in refused:
        print(f"\nOUTSIDE THE FUNCTION'S ROLE: {call}")
