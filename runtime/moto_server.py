"""An in-memory DynamoDB endpoint served by moto, for machines without Java.

DynamoDB Local is the engine we trust; moto is the fallback so that
``ledger serve`` and the examples still run where no JRE is installed.  It
offers the same interface as :class:`runtime.dynamodb_local.DynamoDBLocal`
(``endpoint_url``, ``start``, ``stop``, context manager) but keeps nothing on
disk.  moto is an optional extra (``dynamo-ledger[local]``), so it is imported
only when a server starts.

moto's backends are process-global: every ``MotoDynamoDB`` in one process, and
any ``mock_aws`` in it, see the same tables.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Any

from runtime.dynamodb_local import EmbeddedDynamoDBError, pick_free_port, port_is_free


class MotoDynamoDB:
    """moto's ThreadedMotoServer on a local port, serving DynamoDB and DynamoDB Streams."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port if port is not None else pick_free_port(host)
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        """The URL to pass to boto3 as ``endpoint_url``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoDynamoDB:
        """Serve on ``endpoint_url`` in a daemon thread and return once it is listening."""
        if self._server is not None:
            return self
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise EmbeddedDynamoDBError(
                "The in-memory DynamoDB fallback needs moto, which is not installed: "
                "pip install 'dynamo-ledger[local]'"
            ) from exc
        os.environ.setdefault("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")
        if not port_is_free(self.port, self.host):
            raise EmbeddedDynamoDBError(f"port {self.port} on {self.host} is already in use")

        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        # ThreadedMotoServer.start() waits forever if its thread fails to bind.
        starter = threading.Thread(target=server.start, name="moto-server-start", daemon=True)
        starter.start()
        starter.join(timeout)
        if starter.is_alive():
            raise EmbeddedDynamoDBError(
                f"moto server did not start listening on {self.endpoint_url} within {timeout} s"
            )
        self._server = server
        return self

    def stop(self) -> None:
        """Shut the server down; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> MotoDynamoDB:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
