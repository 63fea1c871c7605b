"""Watch every DynamoDB call the product code makes against an events table.

The events table is append-only: the only write the product may make there is a
`Put` guarded by `attribute_not_exists`, inside `TransactWriteItems` or alone (or a
PartiQL `INSERT`, which never overwrites). The
test session patches botocore's one entry point for API calls, so every client
(moto in-process, DynamoDB Local, anything) is seen. A call counts as the product's
when a frame of the product's packages is on the stack: tests that tamper with the
log on purpose (to prove the auditors notice) call the client themselves.

It also records what the two deployed functions ask of DynamoDB: each call made
under the API (`api/`) or the stream handler (`projections/handler.py`) is counted
as the IAM actions and tables it needs (`accesses`), so the least-privilege tests can
hold the functions' generated policies against what the code really does.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iam_policy import iam_requests

EVENTS_TABLE_SUFFIX = "-ledger-events"
PRODUCT_PACKAGES = ("ledger", "projections", "audit", "api", "runtime", "composition", "replication")
# Where a call comes from, by the entry point on its stack: the Lambda functions the deploy creates.
# The projector applies account groups on worker threads, whose stacks start at the pool: its own module counts.
ENTRY_POINTS = (("projector", "projections/handler.py"), ("projector", "projections/projector.py"), ("api", "api/"))
_READS = {"GetItem", "BatchGetItem", "Query", "Scan", "DescribeTable", "DescribeTimeToLive", "ListTables"}


def _is_events_table(name: Any) -> bool:
    return isinstance(name, str) and name.endswith(EVENTS_TABLE_SUFFIX)


def _guarded_put(put: dict[str, Any]) -> bool:
    return "attribute_not_exists(" in put.get("ConditionExpression", "")


_PARTIQL_WRITE = re.compile(r'^\s*(UPDATE|DELETE\s+FROM|INSERT\s+INTO)\s+"?([^"\s]+)"?', re.IGNORECASE)


def _partiql_statements(operation: str, params: dict[str, Any]) -> list[str]:
    if operation == "ExecuteStatement":
        return [params.get("Statement", "")]
    if operation == "BatchExecuteStatement":
        return [s.get("Statement", "") for s in params.get("Statements", [])]
    if operation == "ExecuteTransaction":
        return [s.get("Statement", "") for s in params.get("TransactStatements", [])]
    return []


def violations_of(operation: str, params: dict[str, Any]) -> list[str]:
    """Why this call would change or remove an existing event (empty: it cannot)."""
    found: list[str] = []
    if operation in _READS:
        return found
    if operation in ("UpdateItem", "DeleteItem", "DeleteTable", "UpdateTable") and _is_events_table(params.get("TableName")):
        found.append(f"{operation} on {params['TableName']}")
    if operation == "PutItem" and _is_events_table(params.get("TableName")) and not _guarded_put(params):
        found.append(f"unguarded PutItem on {params['TableName']}")
    if operation == "TransactWriteItems":
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                if not _is_events_table(body.get("TableName")):
                    continue
                if kind in ("Update", "Delete"):
                    found.append(f"TransactWriteItems {kind} on {body['TableName']}")
                elif kind == "Put" and not _guarded_put(body):
                    found.append(f"unguarded TransactWriteItems Put on {body['TableName']}")
    for statement in _partiql_statements(operation, params):
        match = _PARTIQL_WRITE.match(statement)
        if match and _is_events_table(match.group(2)) and not match.group(1).upper().startswith("INSERT"):
            found.append(f"{operation} {match.group(1).split()[0].upper()} on {match.group(2)}")
    if operation == "BatchWriteItem":
        for table, requests in params.get("RequestItems", {}).items():
            if _is_events_table(table):
                # A batch put cannot carry a condition, so it could overwrite an event.
                found.extend(f"BatchWriteItem {next(iter(r))} on {table}" for r in requests)
    return found


@dataclass
class EventLogGuard:
    root: Path
    violations: list[str] = field(default_factory=list)
    appends: int = 0  # guarded puts of events seen: proof the guard watched something
    calls: Counter = field(default_factory=Counter)
    # (entry point, IAM action, `table/NAME[/index/INDEX]`) -> calls, for the API and the projector
    accesses: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _from_product(self) -> tuple[str | None, str | None]:
        """Where in the product the call was made (innermost frame), and its entry point, if a deployed function's."""
        frame = sys._getframe(2)
        product_dirs = tuple(str(self.root / package) + "/" for package in PRODUCT_PACKAGES)
        entries = tuple((name, str(self.root / path) + ("/" if path.endswith("/") else "")) for name, path in ENTRY_POINTS)
        where = entry = None
        while frame is not None:
            filename = frame.f_code.co_filename
            if where is None and filename.startswith(product_dirs):
                where = f"{Path(filename).relative_to(self.root)}:{frame.f_lineno}"
            for name, path in entries:
                if entry is None and filename.startswith(path):
                    entry = name
            frame = frame.f_back
        return where, entry

    def observe(self, operation: str, params: dict[str, Any]) -> None:
        where, entry = self._from_product()
        if where is None:
            return
        found = violations_of(operation, params)
        with self._lock:
            self.calls[operation] += 1
            if entry is not None:
                for action, resource in iam_requests(operation, params):
                    self.accesses[(entry, action, resource)] += 1
            self.violations.extend(f"{v} (from {where})" for v in found)
            if operation == "TransactWriteItems":
                self.appends += sum(
                    1 for item in params.get("TransactItems", []) if _is_events_table(item.get("Put", {}).get("TableName"))
                )
            elif operation == "PutItem" and _is_events_table(params.get("TableName")):
                self.appends += 1

    def dumps(self) -> str:
        """What this process saw, for pytest-xdist's controller (a worker's findings reach it this way only)."""
        return json.dumps(
            {
                "violations": self.violations,
                "appends": self.appends,
                "calls": dict(self.calls),
                "accesses": [[*key, count] for key, count in self.accesses.items()],
            }
        )

    def merge(self, dumped: str | None) -> None:
        if not dumped:
            return
        seen = json.loads(dumped)
        with self._lock:
            self.violations.extend(seen["violations"])
            self.appends += seen["appends"]
            self.calls.update(seen["calls"])
            for entry, action, resource, count in seen["accesses"]:
                self.accesses[(entry, action, resource)] += count
