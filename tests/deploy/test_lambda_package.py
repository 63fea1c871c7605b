"""The Lambda package alone runs both functions: unpacked into an empty folder, nothing else on sys.path.

`ledger package` is built once per run (tests/package_build.py). Its zip is unpacked
into a fresh directory, as Lambda does into /var/task, and `lambda_driver.py` runs
there under `python -I -S` (no site-packages, no PYTHONPATH, not even its own folder on
the path), against a moto server in a subprocess: the API handler answers API Gateway
proxy events and the projector a DynamoDB stream event, and every module it loaded
came from the package or the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from ledger.config import Settings
from runtime.dynamodb_local import pick_free_port
from runtime.tables import ensure_tables

DRIVER = Path(__file__).with_name("lambda_driver.py")


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server in its own process (nothing shared with the in-process mocks of other tests)."""
    port = pick_free_port("127.0.0.1")
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start (see {log.name})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture
def task_dir(ledger_package, tmp_path: Path) -> Path:
    """The package unpacked into an empty directory, as Lambda unpacks it."""
    task = tmp_path / "task"
    with zipfile.ZipFile(ledger_package.out / "deployment.zip") as archive:
        archive.extractall(task)
    return task


def test_the_package_holds_the_project_its_pinned_dependencies_and_pydantics_compiled_core(ledger_package):
    with zipfile.ZipFile(ledger_package.out / "deployment.zip") as archive:
        names = set(archive.namelist())
    tops = {name.split("/")[0] for name in names}

    assert {"app.py", "chalice", "api", "ledger", "projections", "audit", "composition", "failover"} <= tops
    assert {"pydantic", "pydantic_core", "aws_lambda_powertools", "boto3", "botocore", "ulid"} <= tops
    assert "deploy" not in tops  # the build tool stays behind
    assert any(n.startswith("pydantic_core/_pydantic_core.cpython-311-x86_64-linux-gnu") for n in names)
    lock = (ledger_package.out / "requirements.lock").read_text().split()
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in _distributions()}
    for pin in (line for line in lock if "==" in line):
        name, version = pin.split("==")
        assert installed[name] == version, pin  # the versions this environment runs
        assert any(n.startswith(f"{name.replace('-', '_')}-{version}.dist-info/") for n in names), pin


def _distributions():
    import importlib.metadata

    return importlib.metadata.distributions()


def test_both_handlers_run_from_the_unpacked_package_alone(task_dir, moto_server, tmp_path):
    stage = "pkgtest"
    settings = Settings(stage=stage, region="us-east-1", endpoint_url=moto_server)
    client = boto3.client(
        "dynamodb", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )
    ensure_tables(client, settings)
    result = tmp_path / "result.json"
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),  # no ~/.aws of anyone's
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "LEDGER_STAGE": stage,
        "LEDGER_ENDPOINT_URL": moto_server,
        "LEDGER_TOKEN_KEY": "deploy-test-signing-key-" + "0" * 32,  # on AWS: LEDGER_TOKEN_SECRET_ARN
        "POWERTOOLS_SERVICE_NAME": "dynamo-ledger",
    }
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    driver = tmp_path / DRIVER.name  # run from outside the repository
    shutil.copy(DRIVER, driver)

    done = subprocess.run(
        [python, "-I", "-S", str(driver), str(task_dir), str(result)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(result.read_text())
    assert seen["flags"] == {"isolated": 1, "no_site": 1}
    assert seen["modules"]["elsewhere"] == []  # nothing from the repository, the venv or site-packages
    assert seen["modules"]["package"] > 100 and seen["modules"]["stdlib"] > 0
    assert seen["sys_path"][0] == str(task_dir.resolve())  # like /var/task
    assert all(entry.startswith(sys.base_prefix + "/") for entry in seen["sys_path"][1:])  # the standard library only
    assert seen["pydantic_core"].startswith(str(task_dir) + "/")

    assert [seen[k]["status"] for k in ("open_alice", "open_bob", "credit", "debit", "replay", "transfer")] == [201] * 6
    assert seen["replay"]["headers"].get("Idempotent-Replayed") == "true"
    assert seen["overdraft"]["status"] == 422 and seen["overdraft"]["body"]["code"] == "insufficient_funds"
    assert seen["overdraft"]["headers"]["Content-Type"] == "application/problem+json"
    assert seen["unknown_route"]["status"] == 404
    assert seen["authorizer_allowed"]["principalId"] == "deploy-test"  # the built-in authorizer, from the package
    assert (seen["no_token"]["status"], seen["no_token"]["body"]["code"]) == (401, "unauthorized")
    assert seen["no_token"]["headers"]["WWW-Authenticate"].startswith('Bearer realm="dynamo-ledger", error="invalid_token"')
    assert (seen["other_tenant"]["status"], seen["other_tenant"]["body"]["code"]) == (404, "account_not_found")
    assert len(seen["transaction"]["body"]["events"]) == 2
    assert seen["balance_before"]["body"]["balance"] == 0  # nothing projected yet
    assert seen["strong"]["body"]["balance"] == 550

    assert seen["records"] == 6  # two openings, a credit, a debit, two legs of the transfer
    assert seen["projected"] == {"batchItemFailures": []}
    assert seen["projected_again"] == {"batchItemFailures": []}
    assert seen["balance_alice"]["body"]["balance"] == 550
    assert seen["balance_alice"]["body"]["event_count"] == 4
    assert seen["balance_bob"]["body"]["balance"] == 500
