"""A hardened HTTP/1.1 server for the ledger's Chalice app, for `ledger serve`.

Chalice's local server (`chalice.local.create_local_server`, built on
`http.server`) is a development tool: one unbounded thread per connection, no
deadline on a request, HTML error pages, a `Server` header naming the Python
version, and an unknown route answered `403 Missing Authentication Token` with
the caller's Authorization header pasted unescaped into the body. This module
keeps what matters from it (every request still goes through
`chalice.local.LocalGateway.handle_request`, so Chalice's local authorizers
keep working) and replaces the HTTP layer. Each defence, and why:

- **Problem documents everywhere.** Every refusal of the server itself is an RFC
  9457 `application/problem+json` body with the app's shape and a stable `code`,
  so a client branches on one format whoever refused.
- **Unknown route: `404 not_found`.** The route is matched before the gateway is
  called; nothing of the request (headers, path) is echoed back. A known path
  with a method it lacks is left to the app (Chalice's 405, which `api.app`
  turns into a problem document).
- **Strict request parsing** (own parser, not `http.server`'s lenient one):
  methods outside GET/POST/PUT/PATCH/DELETE/HEAD/OPTIONS (TRACE, ...) are `501
  not_implemented` (the server does not implement them for any resource; 405 is
  the app's for a known route). A request line over 8 KiB is `414 uri_too_long`;
  more than 100 header fields or 32 KiB of header section is `431
  headers_too_large`. Garbage request lines, HTTP/0.9 requests (answered with a
  full HTTP/1.1 response, not dropped), absolute-form targets, obsolete header
  folding, header names with spaces, control characters, a malformed
  `Content-Length` and a second Host, Content-Length, Content-Type,
  Transfer-Encoding, Authorization or Idempotency-Key are `400
  malformed_request`: lenient parsers are what request smuggling is made of. Any version but HTTP/1.x is `505
  http_version_not_supported`.
- **Bodies are bounded and framed by Content-Length only.** A body announced over
  64 KiB is `413 payload_too_large`, answered without reading it.
  `Transfer-Encoding` (chunked) is not supported: alone it is `411
  length_required`, together with Content-Length `400 malformed_request` (the
  classic CL/TE desync). After any refusal the connection is closed, because the
  start of the next request can no longer be trusted; it is closed "lingering"
  (write side first, then a bounded drain) so the client reads the answer rather
  than a TCP reset.
- **Slowloris.** Connections are served by a bounded pool (`max_workers`, 32 by
  default); a connection beyond it gets `503 server_busy` with `Retry-After: 1`
  at once, from the accepting thread, which never blocks on a client. Each
  request has one deadline (`request_timeout`, 10 s) for its whole head and body,
  counted from the accept (first request) or from its first byte (later ones):
  trickling a byte at a time does not extend it. A request cut by the deadline
  gets `408 request_timeout`. An idle keep-alive connection is closed quietly
  after `idle_timeout` (5 s), and writes have a deadline too, so a client that
  never reads cannot hold a worker.
- **`Server: dynamo-ledger`**, no versions: app-supplied `Server`, `Date`,
  `Connection` and framing headers are replaced by the server's own, and a
  response header with CR/LF in it (response splitting) is a 500.
- **Host allowlist against DNS rebinding.** Bound to a loopback address, the
  server accepts only `Host: 127.0.0.1`, `localhost` or `[::1]` (and the bound
  literal), each optionally with the server's own port; anything else is `421
  misdirected_request`, so a web page on `attacker.example` that rebinds its name
  to 127.0.0.1 cannot drive the API from a browser. An explicit `allowed_hosts`
  (host names, case-insensitive, same port rule) replaces that default; bound to
  any other address with `allowed_hosts=None`, every Host is accepted. A missing
  or duplicate Host on HTTP/1.1 is `400 malformed_request`.
- **Strict Content-Type** for POST/PUT/PATCH: absent (the app reads JSON) or
  exactly `application/json`, optionally with `charset=utf-8`. Chalice itself
  accepts any header merely containing `application/json` (`text/plain,
  application/json`) or `*/*`; here those are `415 unsupported_media_type`
  before the app sees anything.
- **`TCP_NODELAY`** on every accepted socket (`configure_connection`), and each
  response goes out in one write, so keep-alive requests never wait ~40 ms for
  Nagle against delayed ACK.
- **Crashes:** an exception escaping the gateway is `500 internal_error`; the
  traceback goes to the JSON log (stderr), never into the body. Chalice's authorizer refusals
  become `401 unauthorized` and `403 forbidden` problem documents.
- **Thread safety:** like chalice's server, the app's class is swapped for one
  whose `current_request` is thread-local, so concurrent requests cannot see
  each other's request.
"""

from __future__ import annotations

import base64
import ipaddress
import io
import logging
import math
import re
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger
from chalice import Chalice
from chalice.config import Config
from chalice.local import (
    ForbiddenError,
    LocalChalice,
    LocalGateway,
    LocalGatewayException,
    NotAuthorizedError,
    RouteMatcher,
)

from api.problems import PROBLEM_CONTENT_TYPE
from api.problems import problem_body as api_problem_body
from api.requests import json_media_type

__all__ = ["LedgerHTTPServer", "create_server", "default_allowed_hosts", "host_allowed", "json_media_type"]

# Failures inside a request are logged as JSON on stderr (stdout carries the ready line and metrics).
class _Stderr(logging.StreamHandler):
    """Whatever `sys.stderr` is when a line is written (a test's capture, a redirected stream)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


logger = Logger(service="ledger-http", logger_handler=_Stderr())

SERVER_NAME = "dynamo-ledger"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 100
MAX_BODY_BYTES = 64 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 256 * 1024
_SINGLETON_FIELDS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "authorization", "idempotency-key"}
)
_HOP_BY_HOP = frozenset({"server", "date", "connection", "keep-alive", "content-length", "transfer-encoding"})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/@\s]+)(?::([0-9]{1,5}))?")


class Refusal(Exception):
    """The server answers a problem document; `keep` says whether the connection can go on."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
                 keep: bool = False) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.keep = status, code, detail, headers or {}, keep


class _Closed(Exception):
    """The client went away mid-request."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def problem_body(status: int, code: str, detail: str) -> bytes:
    """The app's own problem document (`api.problems`), titled with the status's reason phrase."""
    return api_problem_body(status, code, _reason(status), detail).encode("utf-8")


def _host_form(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host.lower()


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str, allowed_hosts: Iterable[str] | None) -> frozenset[str] | None:
    """The Host names to accept: explicit ones, else loopback names on loopback, else None (any)."""
    if allowed_hosts is not None:
        return frozenset(_host_form(h) for h in allowed_hosts)
    if _is_loopback(bind_host):
        return LOOPBACK_HOSTS | {_host_form(bind_host)}
    return None


def host_allowed(value: str, allowed: frozenset[str] | None, port: int) -> bool:
    """Whether a Host header names this server: an allowed name, and our port if it gives one."""
    if allowed is None:
        return True
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    return match.group(1).lower() in allowed and (match.group(2) is None or int(match.group(2)) == port)


class _DeadlineSocketReader(io.RawIOBase):
    """Socket reads that fail with TimeoutError once `deadline` (time.monotonic) has passed."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(None if remaining == math.inf else remaining)
        return self._sock.recv_into(buffer)


class _Request:
    def __init__(self, method: str, target: str, version: tuple[int, int], headers: dict[str, str]) -> None:
        self.method, self.target, self.version, self.headers = method, target, version, headers
        connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        self.keep_alive = version >= (1, 1) and "close" not in connection  # HTTP/1.0: one request


def _head_bytes(status: int, fields: list[tuple[str, str]], length: int | None, keep: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Server: {SERVER_NAME}", f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{name}: {value}" for name, value in fields]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append(f"Connection: {'keep-alive' if keep else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _refusal_bytes(refusal: Refusal, *, head_only: bool = False) -> bytes:
    body = problem_body(refusal.status, refusal.code, refusal.detail)
    fields = [("Content-Type", PROBLEM_CONTENT_TYPE), *refusal.headers.items()]
    return _head_bytes(refusal.status, fields, len(body), refusal.keep) + (b"" if head_only else body)


def _thread_local_requests(app: Chalice) -> None:
    """What `create_local_server` does: make `app.current_request` thread-local."""
    if not isinstance(app, LocalChalice):
        app.__class__ = type(f"Local{type(app).__name__}", (LocalChalice, type(app)), {})


class _Connection:
    """One client connection: requests in sequence (keep-alive) until close, refusal or timeout."""

    def __init__(self, server: LedgerHTTPServer, sock: socket.socket, accepted_at: float) -> None:
        self.server, self.sock, self.accepted_at = server, sock, accepted_at
        self.reader = _DeadlineSocketReader(sock)
        self.rfile = io.BufferedReader(self.reader, buffer_size=16 * 1024)

    def run(self) -> None:
        first, linger = True, False
        try:
            while True:
                keep, linger = self._exchange(first)
                if not keep:
                    break
                first = False
        except (OSError, _Closed):
            linger = False  # the client is gone or unreachable
        finally:
            self._close(linger)

    def _exchange(self, first: bool) -> tuple[bool, bool]:
        """Serve one request; return (keep the connection, close it lingering)."""
        timeout = self.server.request_timeout
        self.reader.deadline = self.accepted_at + timeout if first else time.monotonic() + self.server.idle_timeout
        try:
            if not self.rfile.peek(1):
                return False, False  # closed between requests
        except TimeoutError:
            return False, False  # idle: no request started, so no 408 to race with one
        if not first:
            self.reader.deadline = time.monotonic() + timeout
        request: _Request | None = None
        try:
            request = self._read_head()
            body = self._read_body(request)
            status, fields, payload = self._dispatch(request, body)
        except TimeoutError:
            self._send(_refusal_bytes(Refusal(408, "request_timeout",
                                              f"the request was not received within {timeout:g} s")))
            return False, True
        except Refusal as refusal:
            refusal.keep = refusal.keep and request is not None and request.keep_alive
            self._send(_refusal_bytes(refusal, head_only=request is not None and request.method == "HEAD"))
            return refusal.keep, not refusal.keep
        assert request is not None
        no_body = status < 200 or status in (204, 304)
        self._send(_head_bytes(status, fields, None if no_body else len(payload), request.keep_alive)
                   + (b"" if request.method == "HEAD" or no_body else payload))
        return request.keep_alive, False

    def _line(self, limit: int, too_long: Refusal) -> bytes:
        line = self.rfile.readline(limit + 1)
        if len(line) > limit:
            raise too_long
        if not line.endswith(b"\n"):
            raise _Closed()
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def _read_head(self) -> _Request:
        too_long = Refusal(414, "uri_too_long", f"the request line is longer than {MAX_REQUEST_LINE} bytes")
        line = self._line(MAX_REQUEST_LINE, too_long)
        if not line:  # one empty line before a request is tolerated (RFC 9112 2.2)
            line = self._line(MAX_REQUEST_LINE, too_long)
        parts = line.split(b" ")
        if len(parts) == 2 and _TOKEN.fullmatch(parts[0]):
            raise Refusal(400, "malformed_request", "HTTP/0.9 requests are not supported; use HTTP/1.1")
        if len(parts) != 3:
            raise Refusal(400, "malformed_request", "the request line is not 'METHOD /path HTTP/1.1'")
        method, target, version_text = parts
        version = _VERSION.fullmatch(version_text)
        if version is None or not _TOKEN.fullmatch(method):
            raise Refusal(400, "malformed_request", "the request line is not 'METHOD /path HTTP/1.1'")
        if version.group(1) != b"1":
            raise Refusal(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported")
        if method.decode("ascii") not in METHODS:
            raise Refusal(501, "not_implemented", "the method is not implemented; use one of "
                          + ", ".join(sorted(METHODS)))
        if not _TARGET.fullmatch(target):
            raise Refusal(400, "malformed_request", "the request target must be a path starting with /")
        request = _Request(method.decode("ascii"), target.decode("ascii"),
                           (1, int(version.group(2))), self._read_fields())
        self._check_host(request)
        return request

    def _read_fields(self) -> dict[str, str]:
        too_large = Refusal(431, "headers_too_large",
                            f"at most {MAX_HEADER_FIELDS} header fields and {MAX_HEADER_BYTES} bytes are accepted")
        fields: dict[str, str] = {}
        count = used = 0
        while True:
            if used >= MAX_HEADER_BYTES:
                raise too_large
            line = self._line(MAX_HEADER_BYTES - used, too_large)
            used += len(line) + 2
            if not line:
                return fields
            count += 1
            if count > MAX_HEADER_FIELDS:
                raise too_large
            name, colon, value = line.partition(b":")
            value = value.strip(b" \t")
            if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
                raise Refusal(400, "malformed_request", "a header field is malformed")
            key = name.decode("ascii").lower()
            if key in fields:
                if key in _SINGLETON_FIELDS:
                    raise Refusal(400, "malformed_request", f"the {key} header appears more than once")
                fields[key] += ", " + value.decode("latin-1")
            else:
                fields[key] = value.decode("latin-1")

    def _check_host(self, request: _Request) -> None:
        host = request.headers.get("host")
        if host is None:
            if request.version >= (1, 1):
                raise Refusal(400, "malformed_request", "an HTTP/1.1 request needs a Host header")
        elif not host_allowed(host, self.server.allowed_hosts, self.server.port):
            raise Refusal(421, "misdirected_request", "this server does not serve that Host")

    def _read_body(self, request: _Request) -> bytes | None:
        try:
            self.server.routes.match_route(request.target)
        except ValueError:
            raise Refusal(404, "not_found", "there is no resource at this path") from None
        headers = request.headers
        if "transfer-encoding" in headers:
            if "content-length" in headers:
                raise Refusal(400, "malformed_request", "send Content-Length or Transfer-Encoding, not both")
            raise Refusal(411, "length_required", "Transfer-Encoding is not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not _CONTENT_LENGTH.fullmatch(length_text):
            raise Refusal(400, "malformed_request", "Content-Length must be a non-negative integer")
        length = int(length_text)
        if length > self.server.max_body_bytes:
            raise Refusal(413, "payload_too_large", f"the body is limited to {self.server.max_body_bytes} bytes")
        content_type = headers.get("content-type")
        if request.method in BODY_METHODS and content_type is not None and not json_media_type(content_type):
            raise Refusal(415, "unsupported_media_type", "send Content-Type: application/json (charset utf-8)")
        if length == 0:
            return None
        if request.version >= (1, 1) and headers.get("expect", "").lower() == "100-continue":
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length)
        if len(body) < length:
            raise _Closed()
        return body

    def _dispatch(self, request: _Request, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            response = self.server.gateway.handle_request(request.method, request.target, dict(request.headers), body)
            return _response_parts(response)
        except ForbiddenError:
            raise Refusal(403, "forbidden", "the authorizer denied access to this resource", keep=True) from None
        except NotAuthorizedError:
            raise Refusal(401, "unauthorized", "send Authorization: Bearer <token>", keep=True,
                          headers={"WWW-Authenticate": 'Bearer realm="dynamo-ledger"'}) from None
        except Exception as exc:  # LocalGatewayException (bad authorizer) or a crash in the app
            kind = "authorizer" if isinstance(exc, LocalGatewayException) else "app"
            logger.exception("request failed", extra={"failed_in": kind, "method": request.method, "target": request.target[:200]})
            raise Refusal(500, "internal_error", "the server failed to handle the request", keep=True) from None

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self.server.request_timeout)
        self.sock.sendall(data)

    def _close(self, linger: bool) -> None:
        """Close; lingering (write side first, bounded drain) when the client may still be sending."""
        try:
            if linger:
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + min(_LINGER_SECONDS, self.server.request_timeout)
                drained = 0
                while drained < _LINGER_BYTES and (remaining := deadline - time.monotonic()) > 0:
                    self.sock.settimeout(remaining)
                    chunk = self.sock.recv(64 * 1024)
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:
            pass
        finally:
            self.sock.close()


def _response_parts(response: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """A Chalice response dict as status, validated header fields and body bytes."""
    status = int(response["statusCode"])
    body = response.get("body")
    if body is None:
        payload = b""
    elif response.get("isBase64Encoded"):
        payload = base64.b64decode(body)
    else:
        payload = body if isinstance(body, bytes) else str(body).encode("utf-8")
    merged = {**(response.get("headers") or {}), **(response.get("multiValueHeaders") or {})}
    fields: list[tuple[str, str]] = []
    if not any(name.lower() == "content-type" for name in merged):
        fields.append(("Content-Type", "application/json"))
    for name, values in merged.items():
        if name.lower() in _HOP_BY_HOP:
            continue
        for value in values if isinstance(values, list) else [values]:
            value = str(value)
            if not _TOKEN.fullmatch(name.encode("latin-1")) or not _FIELD_VALUE.fullmatch(value.encode("latin-1")):
                raise ValueError(f"the app returned an invalid header field {name!r}")
            fields.append((name, value))
    return status, fields, payload


class LedgerHTTPServer(socketserver.TCPServer):
    """The ledger's HTTP server: `serve_forever()` in a thread, then `shutdown()` and `server_close()`."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        app: Chalice,
        config: Config,
        host: str,
        port: int,
        *,
        request_timeout: float = 10.0,
        idle_timeout: float = 5.0,
        max_workers: int = 32,
        max_body_bytes: int = MAX_BODY_BYTES,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _thread_local_requests(app)
        self.app = app
        self.gateway = LocalGateway(app, config)
        self.routes = RouteMatcher(list(app.routes))
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_workers = max_workers
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = default_allowed_hosts(host, allowed_hosts)
        self._slots = threading.BoundedSemaphore(max_workers)
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="ledger-http")
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__((host, port), socketserver.BaseRequestHandler)
        self.port: int = self.server_address[1]

    @property
    def active_connections(self) -> int:
        """Connections accepted and not yet closed (each holds a worker)."""
        with self._lock:
            return len(self._open)

    def configure_connection(self, sock: socket.socket) -> None:
        """Set per-connection socket options; TCP_NODELAY against Nagle + delayed ACK stalls."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def process_request(self, request: Any, client_address: Any) -> None:
        accepted_at = time.monotonic()
        try:
            self.configure_connection(request)
        except OSError:  # the client is already gone
            request.close()
            return
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        with self._lock:
            self._open.add(request)
        try:
            self._pool.submit(self._serve_connection, request, accepted_at)
        except RuntimeError:  # the pool is shut down: we are closing
            self._forget(request)
            request.close()

    def _serve_connection(self, sock: socket.socket, accepted_at: float) -> None:
        try:
            _Connection(self, sock, accepted_at).run()
        except Exception:  # a bug here must not kill the worker silently
            logger.exception("connection failed")
            sock.close()
        finally:
            self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        self._slots.release()

    def _refuse_busy(self, sock: socket.socket) -> None:
        """503 from the accepting thread without ever blocking on the client."""
        refusal = Refusal(503, "server_busy", "all workers are busy; retry shortly", headers={"Retry-After": "1"})
        try:
            sock.setblocking(False)
            sock.send(_refusal_bytes(refusal))
            sock.shutdown(socket.SHUT_WR)
            for _ in range(16):  # drain what already arrived, so close() sends FIN rather than RST
                if not sock.recv(64 * 1024):
                    break
        except OSError:
            pass
        finally:
            sock.close()

    def server_close(self) -> None:
        """Stop listening, end every open connection and wait for the workers."""
        super().server_close()
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for sock in self._open:  # submitted but cancelled before they ran
                sock.close()
            self._open.clear()


def create_server(app: Chalice, config: Config, host: str, port: int, **options: Any) -> LedgerHTTPServer:
    """A bound, listening `LedgerHTTPServer`; `options` are its keyword arguments."""
    return LedgerHTTPServer(app, config, host, port, **options)
