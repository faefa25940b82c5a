"""``httpwire``: the request line and headers, the answer's framing, and what a connection goes through.

The request and header parsers are pure functions (table tests). Framing, keep-alive and errors are tested on
real loopback sockets against a scripted peer: each request it reads gets the next scripted reply, sent as
bytes exactly as written (an API server does not send a malformed answer on demand; the real one is in
``tests/integration/test_wire.py``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from devkit.procs import wait_for
from kubestream.apierrors import classify_exception
from kubestream.httpwire import MAX_HEAD, Endpoint, WireError, WirePool, parse_head, request_head

CLOSE = object()  # in a script: close the connection instead of answering
SILENT = object()  # in a script: read the request and never answer


@dataclass(frozen=True)
class Last:
    """In a script: send ``reply``, then close the connection."""

    reply: bytes


@dataclass
class Peer:
    """A loopback server answering each request it reads with the next item of ``script``."""

    script: list[object]
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    conns: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while self.script:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                reply = self.script.pop(0)
                if reply is CLOSE:
                    conn.close()
                    return
                if reply is SILENT:
                    continue
                if isinstance(reply, Last):
                    conn.sendall(reply.reply)
                    conn.close()
                    return
                assert isinstance(reply, bytes)
                conn.sendall(reply)
        except OSError:
            return

    def close_all(self) -> None:
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # a FIN now, even with a thread blocked reading it
            except OSError:
                pass
            conn.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer([])
    threading.Thread(target=server.serve, daemon=True).start()
    yield server
    server.sock.close()
    server.close_all()


def pool_for(peer: Peer, maxsize: int = 4) -> WirePool:
    return WirePool(Endpoint("127.0.0.1", peer.port, f"127.0.0.1:{peer.port}"), maxsize)


def ok(body: bytes = b"{}", *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


TIMEOUT = (5.0, 10.0)


# -- pure parts ------------------------------------------------------------------------------------------------


def test_the_request_head_has_host_headers_and_a_length_only_with_a_body() -> None:
    head = request_head("POST", "/api/v1/namespaces/a/pods?x=1", "h:6443", {"Accept": "application/json"}, 12)
    assert head == (b"POST /api/v1/namespaces/a/pods?x=1 HTTP/1.1\r\nHost: h:6443\r\nAccept: application/json\r\n"
                    b"Content-Length: 12\r\n\r\n")
    assert b"Content-Length" not in request_head("GET", "/api", "h", {}, None)


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("GET", "/api/v1/namespaces/a\r\nX-Evil: 1/pods", {}),  # a namespace smuggling a header
    ("GET", "/api v1", {}),
    ("GET", "api/v1", {}),
    ("G ET", "/api", {}),
    ("G\u00c9T", "/api", {}),
    ("GET", "/api", {"Authorization": "Bearer t\r\nX-Evil: 1"}),
    ("GET", "/api", {"X-A\nB": "1"}),
])
def test_a_request_that_would_break_its_framing_is_a_value_error(method: str, target: str,
                                                                 headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        request_head(method, target, "h", headers, None)
    assert classify_exception(ValueError("x")).kind == "permanent"


def test_a_head_parses_to_status_reason_and_headers_with_repeats_joined() -> None:
    status, reason, headers, lower, http10 = parse_head(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nWarning: a\r\nwarning: b\r\nX-Empty:")
    assert (status, reason, http10) == (429, "Too Many Requests", False)
    assert headers == {"Retry-After": "3", "Warning": "a", "warning": "b", "X-Empty": ""}
    assert lower["warning"] == "a, b" and lower["retry-after"] == "3"
    assert parse_head(b"HTTP/1.0 200 OK")[4] is True


@pytest.mark.parametrize("head", [
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2x0 OK", b"SSH-2.0-OpenSSH", b"",
    b"HTTP/1.1 200 OK\r\nNo-Colon-Here", b"HTTP/1.1 200 OK\r\n folded: value", b"HTTP/1.1 200 OK\r\nBad Name: 1",
    b"HTTP/1.1 200 OK\r\n: no name",
])
def test_a_head_that_is_not_http_1_is_a_wire_error(head: bytes) -> None:
    with pytest.raises(WireError):
        parse_head(head)


# -- on sockets: framing and keep-alive ------------------------------------------------------------------------


def test_answers_by_length_are_read_exactly_and_the_connection_is_kept(peer: Peer) -> None:
    peer.script += [ok(b'{"a":1}'), ok(b'{"b":2}'), ok(b"")]
    pool = pool_for(peer)
    assert pool.request("POST", "/x", {"Accept": "application/json"}, b'{"in":1}', timeout=TIMEOUT).body == b'{"a":1}'
    assert pool.request("GET", "/y", {}, timeout=TIMEOUT).body == b'{"b":2}'
    assert pool.request("GET", "/z", {}, timeout=TIMEOUT).body == b""
    assert pool.opened == 1 and peer.accepted == 1  # accepted before its first answer was sent
    assert peer.requests[0].startswith(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:") and peer.requests[0].endswith(
        b'Content-Length: 8\r\n\r\n{"in":1}')


def test_a_chunked_answer_with_extensions_and_trailers_is_joined_and_the_connection_kept(peer: Peer) -> None:
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"ki\r\n" b"A\r\nnd\":\"Pod\"}\r\n" b"0\r\nX-Trailer: t\r\n\r\n")
    peer.script += [chunked, ok()]
    pool = pool_for(peer)
    answer = pool.request("POST", "/p", {}, b"{}", timeout=TIMEOUT)
    assert (answer.status, answer.reason, answer.body) == (201, "Created", b'{"kind":"Pod"}')
    pool.request("GET", "/q", {}, timeout=TIMEOUT)
    assert pool.opened == 1


@pytest.mark.parametrize(("reply", "kept"), [
    (ok(b"{}", "Connection: close"), False),
    (Last(b"HTTP/1.1 200 OK\r\n\r\nto the end"), False),  # no length: the body ends with the connection
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", False),  # not chunked: to the end too
    (ok(b"{}") + b"HTTP/1.1 200 OK\r\n", False),  # bytes nobody asked for: never read as the next answer
])
def test_a_connection_is_kept_only_after_a_complete_answer_that_allows_it(peer: Peer, reply: bytes | Last,
                                                                          kept: bool) -> None:
    if isinstance(reply, bytes) and b"gzip" in reply:
        reply = Last(reply)
    peer.script += [reply, ok(b"next")]
    pool = pool_for(peer)
    answer = pool.request("GET", "/a", {}, timeout=TIMEOUT)
    assert answer.status in (200, 204)
    assert len(pool._idle) == (1 if kept else 0)
    if isinstance(reply, Last):
        assert answer.body in (b"to the end", b"zzz")
    if kept:
        assert pool.request("GET", "/b", {}, timeout=TIMEOUT).body == b"next" and pool.opened == 1


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(peer: Peer) -> None:
    peer.script += [ok(b"1"), ok(b"2")]
    pool = pool_for(peer)
    assert pool.request("GET", "/a", {}, timeout=TIMEOUT).body == b"1"
    peer.close_all()  # as a load balancer drops an idle connection
    wait_for(lambda: not pool._idle[0].idle_and_clean(), timeout=10, what="the FIN at the client")
    assert pool.request("GET", "/b", {}, timeout=TIMEOUT).body == b"2"
    assert pool.opened == 2
    wait_for(lambda: peer.accepted == 2, timeout=10, what="the peer accepting the second connection")


@pytest.mark.parametrize(("reply", "words"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", "5 bytes before the end"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not a chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "does not end with CRLF"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nab", "not a Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "not a Content-Length"),  # a digit, not ASCII
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "over"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", "over"),
    (b"garbage\r\n\r\n", "not an HTTP/1.x status line"),
])
def test_a_broken_answer_is_a_wire_error_a_connection_error_and_its_connection_is_closed(
        peer: Peer, reply: bytes, words: str) -> None:
    peer.script += [Last(reply)]
    pool = pool_for(peer)
    with pytest.raises(WireError, match=words) as caught:
        pool.request("GET", "/a", {}, timeout=TIMEOUT)
    assert classify_exception(caught.value).kind == "transient"
    assert pool._idle == []


def test_a_closed_connection_before_any_answer_is_a_wire_error(peer: Peer) -> None:
    peer.script += [CLOSE]
    with pytest.raises(WireError, match="closed the connection"):
        pool_for(peer).request("POST", "/a", {}, b"{}", timeout=TIMEOUT)


def test_a_silent_server_is_a_timeout_after_the_read_timeout(peer: Peer) -> None:
    peer.script += [SILENT]
    pool = pool_for(peer)
    with pytest.raises(TimeoutError) as caught:
        pool.request("GET", "/a", {}, timeout=(5.0, 0.3))
    assert classify_exception(caught.value).kind == "transient"
    assert pool._idle == []


def test_no_server_is_a_connection_error() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ConnectionRefusedError) as caught:
        WirePool(Endpoint("127.0.0.1", port, f"127.0.0.1:{port}"), 2).request("GET", "/", {}, timeout=TIMEOUT)
    assert classify_exception(caught.value).kind == "transient"


def test_threads_open_what_they_need_and_the_pool_keeps_at_most_its_size(peer: Peer) -> None:
    n = 8
    peer.script += [ok(b"x")] * n
    pool = pool_for(peer, maxsize=3)
    start = threading.Barrier(n)
    got: list[bytes] = []

    def one() -> None:
        start.wait()
        got.append(pool.request("GET", "/a", {}, timeout=TIMEOUT).body)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == [b"x"] * n
    assert 1 <= pool.opened <= n and len(pool._idle) == min(3, pool.opened)


def test_a_closed_pool_refuses_requests_and_closes_connections_given_back(peer: Peer) -> None:
    peer.script += [ok()]
    pool = pool_for(peer)
    pool.request("GET", "/a", {}, timeout=TIMEOUT)
    pool.close()
    assert pool._idle == []
    with pytest.raises(WireError, match="closed"):
        pool.request("GET", "/b", {}, timeout=TIMEOUT)


def test_prefill_opens_connections_at_once_up_to_the_pool_size_and_requests_use_them(peer: Peer) -> None:
    peer.script += [ok(b"x")] * 3
    pool = pool_for(peer, maxsize=3)
    assert pool.prefill(5, connect_timeout=5.0) == 3  # capped at the pool's size
    assert pool.prefill(3, connect_timeout=5.0) == 0  # already there
    assert len(pool._idle) == 3
    wait_for(lambda: peer.accepted == 3, timeout=10, what="the peer accepting 3 connections")
    for _ in range(3):
        assert pool.request("GET", "/a", {}, timeout=TIMEOUT).body == b"x"
    assert pool.opened == 3


def test_prefill_against_no_server_opens_nothing_and_raises_nothing() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    pool = WirePool(Endpoint("127.0.0.1", port, f"127.0.0.1:{port}"), 4)
    assert pool.prefill(4, connect_timeout=2.0) == 0 and pool._idle == []
