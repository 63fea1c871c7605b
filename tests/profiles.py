"""Hypothesis profiles: `ci` (the default: what CI runs) and `thorough` (ten times the examples).

Select with HYPOTHESIS_PROFILE=thorough. Every profile prints the blob that
replays a failing example (`@reproduce_failure`), and the seed of a failing run is
printed by Hypothesis itself; `--hypothesis-seed=N` replays a whole run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
SCALE = {"ci": 1, "thorough": 10}.get(PROFILE, 1)

settings.register_profile("ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(PROFILE if PROFILE in ("ci", "thorough") else "ci")


def examples(ci: int) -> int:
    """How many examples a property test runs: `ci` in CI, ten times that in the thorough profile."""
    return ci * SCALE
