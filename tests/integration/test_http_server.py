"""`runtime.http_server` over real sockets on 127.0.0.1: each defence of its docstring.

Most tests share one server around a tiny Chalice app that records what reaches
it; tests that need other limits start their own. Malformed requests go over raw
sockets (the server closes after a refusal, so a reply is read to EOF), normal
ones through http.client. Nothing sleeps in place of a condition: waits are for
a condition, with a deadline.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from chalice import AuthResponse, Chalice
from chalice.config import Config

from runtime.http_server import LedgerHTTPServer, create_server, default_allowed_hosts, host_allowed, json_media_type

PROBLEM = "application/problem+json"


def _tiny_app(calls: list[tuple[str, bytes | None]]) -> Chalice:
    app = Chalice("t")

    @app.route("/ping")
    def ping() -> dict[str, bool]:
        calls.append(("GET /ping", None))
        return {"pong": True}

    @app.route("/echo", methods=["POST"])
    def echo() -> dict[str, Any]:
        body = app.current_request.raw_body
        calls.append(("POST /echo", body))
        return {"received": len(body or b"")}

    both_arrived = threading.Barrier(2, timeout=5)

    @app.route("/whoami")
    def whoami() -> dict[str, str]:
        both_arrived.wait()  # two requests in flight: each must still see its own request
        return {"me": app.current_request.query_params["me"]}

    @app.authorizer()
    def token(auth_request: Any) -> AuthResponse:
        allowed = ["/secret"] if auth_request.token == "let-me-in" else []
        return AuthResponse(routes=allowed, principal_id="tester")

    @app.route("/secret", authorizer=token)
    def secret() -> dict[str, str]:
        return {"principal": app.current_request.context["authorizer"]["principalId"]}

    return app


@dataclass
class Live:
    server: LedgerHTTPServer
    calls: list[tuple[str, bytes | None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port


@contextmanager
def running(server_class: type[LedgerHTTPServer] = LedgerHTTPServer, app: Chalice | None = None,
            **options: Any) -> Iterator[Live]:
    calls: list[tuple[str, bytes | None]] = []
    server = server_class(app or _tiny_app(calls), Config(), "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield Live(server, calls)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    calls: list[tuple[str, bytes | None]] = []
    server = create_server(_tiny_app(calls), Config(), "127.0.0.1", 0, request_timeout=5.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield Live(server, calls)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def fresh(live: Live) -> Live:
    live.calls.clear()
    return live


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_reply(data: bytes) -> Reply:
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"not an HTTP response: {data[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1"), status_line
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    return Reply(int(status), headers, body)


def read_to_eof(sock: socket.socket) -> Reply:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return parse_reply(b"".join(chunks))


def exchange(port: int, data: bytes, timeout: float = 5.0) -> Reply:
    """Send raw bytes and read the reply until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_to_eof(sock)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def assert_problem(status: int, headers: Any, body: bytes, expected_status: int, code: str) -> dict[str, Any]:
    assert status == expected_status, body
    assert headers["Content-Type"] == PROBLEM
    assert headers["Server"] == "dynamo-ledger"
    document = json.loads(body)
    assert list(document) == ["type", "title", "status", "detail", "code"]
    assert document["type"] == f"urn:problem-type:dynamo-ledger:{code}"
    assert (document["status"], document["code"]) == (expected_status, code)
    assert body == json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()  # compact
    return document


def assert_reply_problem(reply: Reply, status: int, code: str) -> dict[str, Any]:
    headers = {"Content-Type": reply.header("content-type"), "Server": reply.header("server")}
    return assert_problem(reply.status, headers, reply.body, status, code)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.005)


def _get(path: str = "/ping", host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


# -- 1. through Chalice's LocalGateway: routes and authorizers ------------------------------------------------------


def test_requests_reach_the_app_through_the_local_gateway(fresh: Live) -> None:
    assert fresh.port > 0

    response, body = request(fresh.port, "GET", "/ping")
    assert (response.status, json.loads(body)) == (200, {"pong": True})
    response, body = request(fresh.port, "POST", "/echo", b'{"a":1}', {"Content-Type": "application/json"})
    assert (response.status, json.loads(body)) == (200, {"received": 7})
    assert fresh.calls == [("GET /ping", None), ("POST /echo", b'{"a":1}')]


def test_authorizer_refusals_are_problem_documents(fresh: Live) -> None:
    response, body = request(fresh.port, "GET", "/secret")
    assert_problem(response.status, response.headers, body, 401, "unauthorized")
    response, body = request(fresh.port, "GET", "/secret", headers={"Authorization": "wrong"})
    assert_problem(response.status, response.headers, body, 403, "forbidden")
    assert b"wrong" not in body
    response, body = request(fresh.port, "GET", "/secret", headers={"Authorization": "let-me-in"})
    assert (response.status, json.loads(body)) == (200, {"principal": "tester"})


def test_concurrent_requests_each_see_their_own_request(fresh: Live) -> None:
    answers: dict[str, bytes] = {}

    def ask(name: str) -> None:
        answers[name] = request(fresh.port, "GET", f"/whoami?me={name}")[1]

    threads = [threading.Thread(target=ask, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert {name: json.loads(body) for name, body in answers.items()} == {"ann": {"me": "ann"}, "bob": {"me": "bob"}}


# -- 2. unknown routes, and a known path with another method ------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, '<script>alert(1)</script>", "x": "'])
def test_an_unknown_route_is_404_and_echoes_no_header(fresh: Live, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response, body = request(fresh.port, "GET", "/no/such/route?q=1", headers=headers)
    assert_problem(response.status, response.headers, body, 404, "not_found")
    assert b"script" not in body and b"Authorization" not in body
    assert fresh.calls == []


def test_a_known_path_with_another_method_stays_the_apps_405_problem() -> None:
    from api.app import create_app
    from composition.root import Root
    from ledger.config import Settings

    ledger_app = create_app(Root(Settings()))
    original = type(ledger_app)
    try:
        with running(app=ledger_app) as served:
            response, body = request(served.port, "DELETE", "/accounts")
    finally:
        ledger_app.__class__ = original
    assert_problem(response.status, response.headers, body, 405, "method_not_allowed")
    assert response.getheader("Allow") == "POST"


# -- 3. methods, request line, headers, framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "FOO", "CONNECT", "get"])
def test_methods_the_server_does_not_implement_are_501(fresh: Live, method: str) -> None:
    reply = exchange(fresh.port, f"{method} /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert_reply_problem(reply, 501, "not_implemented")
    assert fresh.calls == []


def test_the_standard_methods_pass_the_method_filter(fresh: Live) -> None:
    response, _ = request(fresh.port, "OPTIONS", "/ping")
    assert response.status == 200  # Chalice's own preflight answer
    response, _ = request(fresh.port, "DELETE", "/ping")
    assert response.status == 405  # the app's answer, not the server's 501
    response, body = request(fresh.port, "HEAD", "/no/such/route")
    assert (response.status, body) == (404, b"")


MALFORMED = {
    "content-length not a number": b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
    "negative content-length": b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    "content-length list": b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2, 2\r\n\r\n{}",
    "two content-lengths": b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    "garbage request line": b"HELLO\r\n\r\n",
    "binary request line": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    "HTTP/0.9": b"GET /ping\r\n",
    "four words": b"GET /ping HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n",
    "target without slash": b"GET ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "absolute-form target": b"GET http://127.0.0.1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "not a version": b"GET /ping HTTQ/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "header without colon": b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nnonsense\r\n\r\n",
    "space before colon": b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length : 0\r\n\r\n",
    "obsolete line folding": b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n  folded\r\n\r\n",
    "control character": b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n",
    "two idempotency keys":
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\nContent-Length: 0\r\n\r\n",
    "transfer-encoding with content-length":
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_400_problems(fresh: Live, data: bytes) -> None:
    assert_reply_problem(exchange(fresh.port, data), 400, "malformed_request")
    assert fresh.calls == []


def test_another_http_major_version_is_505(fresh: Live) -> None:
    reply = exchange(fresh.port, b"GET /ping HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert_reply_problem(reply, 505, "http_version_not_supported")


def test_a_request_line_over_8_kib_is_414(fresh: Live) -> None:
    reply = exchange(fresh.port, _get("/ping?" + "a" * 9000))
    assert_reply_problem(reply, 414, "uri_too_long")


@pytest.mark.parametrize("extra", ["".join(f"X-H{i}: v\r\n" for i in range(101)), "X-Big: " + "b" * 40_000 + "\r\n"],
                         ids=["101 fields", "40 KB field"])
def test_too_many_or_too_large_headers_are_431(fresh: Live, extra: str) -> None:
    reply = exchange(fresh.port, _get(extra=extra))
    assert_reply_problem(reply, 431, "headers_too_large")
    assert fresh.calls == []


def test_a_body_over_64_kib_is_refused_without_being_read(fresh: Live) -> None:
    # Only the head is sent. The shared server waits 5 s for a body; the client gives up
    # after 2 s: the 413 can only arrive in time if the server never tries to read it.
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 65537\r\n\r\n"
    assert_reply_problem(exchange(fresh.port, head, timeout=2.0), 413, "payload_too_large")
    # A client that sends its whole body before reading (curl does) still gets the answer,
    # not a reset: the server closes lingering, draining what was sent.
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200000\r\n\r\n"
    assert_reply_problem(exchange(fresh.port, head + b"x" * 200_000), 413, "payload_too_large")
    assert fresh.calls == []

    body = b'"' + b"a" * (64 * 1024 - 2) + b'"'
    response, answer = request(fresh.port, "POST", "/echo", body)
    assert (response.status, json.loads(answer)) == (200, {"received": 64 * 1024})


def test_a_chunked_body_without_content_length_is_411(fresh: Live) -> None:
    reply = exchange(fresh.port, b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"2\r\n{}\r\n0\r\n\r\n")
    assert_reply_problem(reply, 411, "length_required")
    assert fresh.calls == []


def test_expect_100_continue_is_answered_before_the_body(fresh: Live) -> None:
    with socket.create_connection(("127.0.0.1", fresh.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
                     b"Connection: close\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        reply = read_to_eof(sock)
    assert (reply.status, json.loads(reply.body)) == (200, {"received": 2})


# -- 4. slowloris: bounded workers, a deadline per request, idle keep-alive -----------------------------------------------


def test_a_half_sent_request_times_out_while_other_requests_are_served() -> None:
    with running(request_timeout=1.0, max_workers=4) as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as slow:
            slow.sendall(b"GET /ping HT")
            response, _ = request(served.port, "GET", "/ping")
            assert response.status == 200
            assert select.select([slow], [], [], 0)[0] == [], "the request was served only after the slow one ended"
            reply = read_to_eof(slow)  # within the 5 s socket timeout
    assert_reply_problem(reply, 408, "request_timeout")


def test_trickling_a_byte_at_a_time_does_not_extend_the_deadline() -> None:
    with running(request_timeout=0.5) as served:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as slow:
            slow.sendall(b"GET /")
            started = time.monotonic()
            while not select.select([slow], [], [], 0.1)[0]:  # one byte per 0.1 s until the server answers
                assert time.monotonic() - started < 4, "the server keeps waiting for a trickling client"
                slow.sendall(b"a")
            reply = read_to_eof(slow)
    assert_reply_problem(reply, 408, "request_timeout")


def test_connections_beyond_the_workers_get_503_with_retry_after() -> None:
    with running(max_workers=1, request_timeout=5.0) as served:
        hog = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        wait_until(lambda: served.server.active_connections == 1)

        reply = exchange(served.port, _get())
        assert_reply_problem(reply, 503, "server_busy")
        assert reply.header("retry-after") == "1"

        hog.close()
        wait_until(lambda: served.server.active_connections == 0)
        response, _ = request(served.port, "GET", "/ping")
        assert response.status == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    with running(idle_timeout=0.3) as served:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
        conn.request("GET", "/ping")
        response = conn.getresponse()
        response.read()
        assert (response.status, response.getheader("Connection")) == (200, "keep-alive")
        assert conn.sock is not None
        conn.sock.settimeout(3)
        assert conn.sock.recv(1) == b"", "the server closed the idle connection"
        conn.close()


# -- 5. Server header --------------------------------------------------------------------------------------------------


def test_the_server_header_names_no_version(fresh: Live) -> None:
    response, _ = request(fresh.port, "GET", "/ping")
    assert response.headers.get_all("Server") == ["dynamo-ledger"]
    reply = exchange(fresh.port, b"BREW /pot HTTP/1.1\r\n\r\n")
    assert reply.all("server") == ["dynamo-ledger"]
    assert not any("python" in v.lower() or "chalice" in v.lower() for _, v in response.getheaders() + reply.headers)


# -- 6. Host allowlist ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LocalHost:{port}", "[::1]:{port}"])
def test_loopback_hosts_with_our_port_are_served(fresh: Live, host: str) -> None:
    reply = exchange(fresh.port, _get(host=host.format(port=fresh.port)))
    assert reply.status == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1:{other}",
                                  "localhost.attacker.example", "127.0.0.1.nip.io", "localhost:", "",
                                  "user@localhost", "[::1]x"])
def test_other_hosts_are_421_misdirected(fresh: Live, host: str) -> None:
    reply = exchange(fresh.port, _get(host=host.format(port=fresh.port, other=fresh.port + 1)))
    assert_reply_problem(reply, 421, "misdirected_request")
    assert fresh.calls == []


def test_host_is_required_once_on_http_1_1(fresh: Live) -> None:
    reply = exchange(fresh.port, b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert_reply_problem(reply, 400, "malformed_request")
    reply = exchange(fresh.port, b"GET /ping HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\n\r\n")
    assert_reply_problem(reply, 400, "malformed_request")
    assert exchange(fresh.port, b"GET /ping HTTP/1.0\r\n\r\n").status == 200


def test_explicit_allowed_hosts_replace_the_loopback_default() -> None:
    with running(allowed_hosts=["Ledger.Example"]) as served:
        assert exchange(served.port, _get(host=f"ledger.example:{served.port}")).status == 200
        assert_reply_problem(exchange(served.port, _get(host="localhost")), 421, "misdirected_request")


def test_a_non_loopback_bind_accepts_any_host_unless_told_otherwise() -> None:
    assert default_allowed_hosts("0.0.0.0", None) is None
    assert host_allowed("anything.example:1", None, 8000)
    assert default_allowed_hosts("10.0.0.5", ["Ledger.Example", "::1"]) == {"ledger.example", "[::1]"}
    assert "localhost" in (default_allowed_hosts("localhost", None) or ())


# -- 7. strict Content-Type -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["*/*", "text/plain, application/json", "text/html; application/json",
                                          "application/json; charset=latin-1", "application/jsonx", "text/plain",
                                          "application/json, application/json", "application/json; boundary=x", ""])
def test_bodies_other_than_json_are_415_and_never_reach_the_app(fresh: Live, content_type: str) -> None:
    response, body = request(fresh.port, "POST", "/echo", b"{}", {"Content-Type": content_type})
    assert_problem(response.status, response.headers, body, 415, "unsupported_media_type")
    assert fresh.calls == []


@pytest.mark.parametrize("content_type", [None, "application/json", "Application/JSON", "application/json; charset=utf-8",
                                          "application/json;charset=UTF-8", 'application/json; charset="utf-8"'])
def test_json_bodies_are_accepted(fresh: Live, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response, body = request(fresh.port, "POST", "/echo", b"{}", headers)
    assert (response.status, json.loads(body)) == (200, {"received": 2})
    assert json_media_type(content_type or "application/json")


# -- 8. TCP_NODELAY and keep-alive ----------------------------------------------------------------------------------


class _Observed(LedgerHTTPServer):
    """Records TCP_NODELAY as it is on each accepted socket once the server configured it."""

    nodelay: list[int]

    def configure_connection(self, sock: socket.socket) -> None:
        super().configure_connection(sock)
        self.nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_twenty_keep_alive_requests_share_one_nodelay_connection() -> None:
    _Observed.nodelay = []
    with running(_Observed) as served:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
        statuses = []
        for i in range(20):
            if i % 2:
                conn.request("POST", "/echo", body=b"{}", headers={"Content-Type": "application/json"})
            else:
                conn.request("GET", "/ping")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
    assert statuses == [200] * 20
    assert len(_Observed.nodelay) == 1, "keep-alive: one connection for all requests"
    assert _Observed.nodelay[0] != 0, "TCP_NODELAY is set on the accepted socket"


# -- 9. crashes ----------------------------------------------------------------------------------------------------------


class _Exploding:
    def handle_request(self, *args: Any) -> Any:
        raise RuntimeError("secret-internal-state")


class _Splitting:
    """A response header with CR/LF in it (Chalice refuses those itself; this gateway does not)."""

    def handle_request(self, *args: Any) -> Any:
        return {"statusCode": 200, "headers": {"X-Note": "a\r\nSet-Cookie: session=evil"},
                "multiValueHeaders": {}, "body": "{}"}


def test_a_crash_is_500_without_traceback_in_the_body(capsys: pytest.CaptureFixture[str]) -> None:
    with running() as served:
        served.server.gateway = _Splitting()  # type: ignore[assignment]
        response, body = request(served.port, "GET", "/ping")
        assert_problem(response.status, response.headers, body, 500, "internal_error")
        assert response.getheader("Set-Cookie") is None

        served.server.gateway = _Exploding()  # type: ignore[assignment]
        response, body = request(served.port, "GET", "/ping")
        assert_problem(response.status, response.headers, body, 500, "internal_error")
    assert b"secret-internal-state" not in body and b"Traceback" not in body
    logged = capsys.readouterr().err
    assert "Traceback" in logged and "RuntimeError: secret-internal-state" in logged
