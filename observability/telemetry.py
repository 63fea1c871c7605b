"""Counting what the service does: CloudWatch metrics (EMF, with a region dimension) and local totals.

One `Telemetry` per service (`ledger-api`, `ledger-projector`) per region, built
by the composition root. Each figure goes two ways: into a Powertools
`EphemeralMetrics` set that is flushed as one EMF line per request or batch (what
CloudWatch turns into metrics on AWS; `POWERTOOLS_METRICS_DISABLED=true` keeps it
quiet locally), and into in-process totals that `ledger serve` writes to its
data dir for `ledger status`. Ephemeral, not the shared `Metrics`: `serve
--regions` runs several regions in one process, each with its own dimension.

The names are the ones the deploy template's alarms watch.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "DynamoLedger"
API_SERVICE = "ledger-api"
PROJECTOR_SERVICE = "ledger-projector"

# API
RECORDED = "WritesRecorded"
REPLAYED = "WritesReplayed"
KEY_MISMATCHES = "IdempotencyKeyMismatches"
CONFLICTS_RETRIED = "ConflictsRetried"
REDRAFTS = "Redrafts"
STORE_UNAVAILABLE = "StoreUnavailable"
REFUSALS = "Refusals"
# Projector
PROJECTED = "EventsProjected"
DUPLICATES = "DuplicatesSkipped"
LAG = "ProjectionLagMilliseconds"
INTEGRITY_ALARMS = "IntegrityAlarms"
DEAD_LETTERS = "DeadLetters"

_LAG_SAMPLES = 2048


def _disabled() -> bool:
    return os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true")


class Telemetry:
    def __init__(self, service: str, region: str) -> None:
        self.service, self.region = service, region
        self._metrics = EphemeralMetrics(namespace=NAMESPACE, service=service)
        self._metrics.set_default_dimensions(region=region)
        self._lock = threading.Lock()
        self._totals: Counter[str] = Counter()
        self._lags: deque[float] = deque(maxlen=_LAG_SAMPLES)
        self._started = time.time()

    def count(self, name: str, value: int = 1) -> None:
        if value <= 0:
            return
        with self._lock:
            self._totals[name] += value
            self._metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

    def lag(self, milliseconds: float) -> None:
        """Projection lag: now minus the event's time, as the projector applies it."""
        with self._lock:
            self._lags.append(milliseconds)
            self._metrics.add_metric(name=LAG, unit=MetricUnit.Milliseconds, value=milliseconds)

    def flush(self) -> None:
        """One EMF line for what was counted since the last flush (nothing when nothing was)."""
        with self._lock:
            if not self._metrics.metric_set:
                return
            if _disabled():
                self._metrics.clear_metrics()
            else:
                self._metrics.flush_metrics()

    def snapshot(self) -> dict[str, Any]:
        """Totals since start, and the recent projection lag (p50, p99, max over the last samples)."""
        with self._lock:
            lags = sorted(self._lags)
            totals = dict(self._totals)
        figures: dict[str, Any] = {"service": self.service, "region": self.region, "since": self._started, "totals": totals}
        if lags:
            figures["lag_ms"] = {
                "p50": round(lags[len(lags) // 2], 1),
                "p99": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 1),
                "max": round(lags[-1], 1),
                "samples": len(lags),
            }
        return figures
