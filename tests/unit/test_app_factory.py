"""The app factory can be called many times in one process (one app per region, per test)."""

from __future__ import annotations

import os

from api.app import create_app
from composition.root import Root
from ledger.config import Settings


def test_making_many_apps_does_not_grow_the_execution_env_that_botocore_sends():
    create_app(Root(Settings()))
    before = os.environ.get("AWS_EXECUTION_ENV", "")

    for _ in range(50):
        create_app(Root(Settings()))

    assert os.environ.get("AWS_EXECUTION_ENV", "") == before
