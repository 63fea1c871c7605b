"""One `ledger package` build per test run, shared by every pytest-xdist worker.

Building takes about ten seconds (pip's downloads are cached in ~/.cache/pip), so the
first worker that needs it builds it (`ledger package`, as the README runs it) under a file lock in the run's shared temporary
directory and the others wait for it and read the same files.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STAGE = "ci"
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")


@dataclass(frozen=True)
class PackageBuild:
    out: Path
    stage: str
    regions: tuple[str, ...]
    measured: dict[str, Any]

    def template(self, name: str) -> dict[str, Any]:
        return json.loads((self.out / name).read_text())


def shared_build(tmp_path_factory: pytest.TempPathFactory) -> PackageBuild:
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the run's workers
    out = base / "ledger-package"
    with open(base / "ledger-package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = out / "measured.json"
        if not done.exists():
            from runtime.cli import main  # the documented command, as a user runs it

            started = time.monotonic()
            code = main(["package", "--out", str(out / "dist"), "--stage", STAGE, "--regions", ",".join(REGIONS)])
            assert code == 0, "ledger package failed (see the captured output)"
            done.write_text(
                json.dumps({"seconds": time.monotonic() - started, "zip_bytes": (out / "dist" / "deployment.zip").stat().st_size})
            )
    return PackageBuild(out / "dist", STAGE, REGIONS, json.loads(done.read_text()))
