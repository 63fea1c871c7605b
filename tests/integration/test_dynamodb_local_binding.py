"""DynamoDB Local must only be reachable from this machine.

It accepts any credentials, so a DynamoDB Local listening on a network
interface lets anyone who can reach the machine rewrite balances and events
past every guard.  The jar has no bind-address option; ``DynamoDBLocal``
starts it through ``LoopbackDynamoDBLocal.java``, which binds it to 127.0.0.1,
and refuses to start it when it cannot do that.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from runtime import dynamodb_local
from runtime.dynamodb_local import DynamoDBLocal, EmbeddedDynamoDBError

LAUNCHER_SOURCE = Path(dynamodb_local.__file__).with_name("LoopbackDynamoDBLocal.java")


def list_tables(host: str, port: int) -> list[str]:
    client = boto3.client(
        "dynamodb",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    return list(client.list_tables()["TableNames"])


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode an address from /proc/net/tcp{,6}: 32-bit words in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of every TCP socket in LISTEN state on ``port``, per /proc/net."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.append(_proc_address(address))
    return found


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    for probe in ("10.255.255.255", "192.0.2.1", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.connect((probe, 9))  # no packet is sent; this only picks a route
            except OSError:
                continue
            address = udp.getsockname()[0]
            if not ipaddress.ip_address(address).is_loopback and address != "0.0.0.0":
                return str(address)
    ip = shutil.which("ip")
    if ip is not None:
        out = subprocess.run([ip, "-4", "-o", "addr"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = line.split()
            if "inet" in fields:
                address = fields[fields.index("inet") + 1].split("/")[0]
                if not ipaddress.ip_address(address).is_loopback:
                    return address
    return None


def jre_can_run_source_files() -> bool:
    java = shutil.which("java")
    if java is None:
        return False
    modules = subprocess.run([java, "--list-modules"], capture_output=True, text=True).stdout
    return "jdk.compiler@" in modules


@pytest.fixture(
    params=[
        "as-chosen",
        pytest.param(
            "source-file-mode",
            marks=pytest.mark.skipif(
                not jre_can_run_source_files(), reason="this java has no jdk.compiler module"
            ),
        ),
    ]
)
def started(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoDBLocal]:
    """An in-memory DynamoDB Local, started as a JDK would (javac) and as a bare JRE would."""
    if request.param == "source-file-mode":
        monkeypatch.setattr(dynamodb_local, "_launcher_compiler", lambda java: "source")
    with DynamoDBLocal() as db:
        yield db


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_dynamodb_local_listens_on_127_0_0_1_only(started: DynamoDBLocal) -> None:
    assert isinstance(list_tables("127.0.0.1", started.port), list)

    addresses = listening_addresses(started.port)

    assert addresses, f"nothing listens on port {started.port}"
    assert all(address == ipaddress.ip_address("127.0.0.1") for address in addresses), addresses


def test_dynamodb_local_refuses_connections_on_a_non_loopback_address(
    started: DynamoDBLocal,
) -> None:
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the /proc test still checks)")
    assert isinstance(list_tables("127.0.0.1", started.port), list)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            probe.connect((address, started.port))


def test_start_refuses_to_run_exposed_when_the_launcher_cannot_be_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dynamodb_local, "_launcher_compiler", lambda java: None)
    db = DynamoDBLocal()

    with pytest.raises(EmbeddedDynamoDBError, match="listen on every interface") as refused:
        db.start()

    assert "allow_exposed=True" in str(refused.value)
    assert db.pid is None
    assert listening_addresses(db.port) == []


FAKE_SERVER_RUNNER = """
package software.amazon.dynamodb.services.local.main;

public class ServerRunner {
    public static Proxy createServerFromCommandLineArgs(String[] args) {
        return new Proxy();
    }

    /** A "future" DynamoDB Local whose Jetty server field is no longer called `server`. */
    public static class Proxy {
        private final Object jetty = new Object();

        public void start() throws Exception {
            System.out.println("FAKE STARTED");
            new java.net.ServerSocket(0).close();
        }

        public void join() {}
    }
}
"""


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs javac to build a fake jar")
def test_the_launcher_exits_non_zero_without_starting_when_the_jar_has_changed(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src/software/amazon/dynamodb/services/local/main/ServerRunner.java"
    source.parent.mkdir(parents=True)
    source.write_text(FAKE_SERVER_RUNNER)
    fake_classes = tmp_path / "fake"
    launcher_classes = tmp_path / "launcher"
    javac = shutil.which("javac")
    assert javac is not None
    subprocess.run([javac, "-d", str(fake_classes), str(source)], check=True)
    subprocess.run([javac, "-d", str(launcher_classes), str(LAUNCHER_SOURCE)], check=True)

    result = subprocess.run(
        [
            "java", "-cp", f"{launcher_classes}:{fake_classes}",
            "LoopbackDynamoDBLocal", "-inMemory", "-port", "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "FAKE STARTED" not in result.stdout
    assert "cannot bind DynamoDB Local to 127.0.0.1" in result.stderr
    assert "refusing to start it listening on every interface" in result.stderr

