"""Loopback proxies injecting faults between clients and a kube-apiserver (tests only; stdlib only).

- ``FaultProxy``: TCP level, so TLS passes through untouched. Knobs: ``latency_ms``
  (before each client->server chunk), ``refuse`` (new connections are accepted
  then reset), ``cut_all()`` (drop live connections).
- ``HttpFaultProxy``: plain HTTP on loopback, HTTPS (or HTTP) to the apiserver, so it
  sees requests: ``fail_next`` answers the next N matching requests with an error
  (429 + Retry-After by default), ``fail_randomly`` a ratio of them. Responses stream
  through: a watch's chunks are forwarded as they arrive.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
_REASONS = {409: "Conflict", 410: "Expired", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}


def _shutdown(sock: socket.socket | None) -> None:
    """Wake any thread blocked on ``sock`` (its owner closes it)."""
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Proxy:
    """Shared parts: ``latency_ms``, live sockets for ``cut_all()``, context manager."""

    def __init__(self, target_host: str, target_port: int, listen_host: str, listen_port: int) -> None:
        self.target = (target_host, target_port)
        self.latency_ms: float = 0.0
        self._listen_addr = (listen_host, listen_port)
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()

    def cut_all(self) -> None:
        """Drop every live connection (both ends see EOF or a reset)."""
        with self._lock:
            live = list(self._live)
        for sock in live:
            _shutdown(sock)

    def _delay(self) -> None:
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000.0)

    def __enter__(self) -> Any:
        return self.start()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()  # type: ignore[attr-defined]


class FaultProxy(_Proxy):
    """TCP proxy on loopback; a thread per direction of each connection."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        super().__init__(target_host, target_port, listen_host, listen_port)
        self.refuse: bool = False
        self.accepted = self.refused = 0
        self._sock: socket.socket | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("proxy not started")
        return self._sock.getsockname()[1]

    def start(self) -> FaultProxy:
        self._stopped.clear()
        self._sock = socket.create_server(self._listen_addr, backlog=128)
        self._sock.settimeout(0.1)  # lets the accept loop notice stop()
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self.cut_all()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.refuse:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # linger 0: the client gets a RST
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._live.update((client, upstream))
        to_server = threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True)
        to_server.start()
        self._pump(upstream, client, False)
        to_server.join()
        with self._lock:
            self._live.difference_update((client, upstream))
        client.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket, delay: bool) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    self._delay()
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # half-close: pass the EOF on
        except OSError:
            _shutdown(src)
            _shutdown(dst)


@dataclass
class _Rule:
    status: int
    retry_after: str | None
    only_method: str | None
    path_contains: str
    remaining: int = 0  # fail_next
    ratio: float = 0.0  # fail_randomly

    def matches(self, method: str, path: str) -> bool:
        return (self.only_method is None or method.upper() == self.only_method.upper()) and self.path_contains in path


class HttpFaultProxy(_Proxy):
    """Plain HTTP in, HTTPS (``tls=True``, unverified unless ``ca_file``) out; injects error responses."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 *, tls: bool = True, ca_file: str | None = None, check_hostname: bool = True,
                 seed: int | None = None) -> None:
        super().__init__(target_host, target_port, listen_host, listen_port)
        self.requests_seen = self.faults_injected = 0
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else ssl._create_unverified_context()
            self._ssl.check_hostname = bool(ca_file) and check_hostname
        self._rng = random.Random(seed)
        self._next: list[_Rule] = []
        self._random: _Rule | None = None
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, status: int = 429, retry_after: str | None = "1",
                  only_method: str | None = "POST", path_contains: str = "/pods") -> None:
        """Answer the next ``n`` matching requests with ``status`` and a k8s Status body."""
        with self._lock:
            self._next.append(_Rule(status, retry_after, only_method, path_contains, remaining=n))

    def fail_randomly(self, ratio: float, status: int = 503, retry_after: str | None = None,
                      only_method: str | None = "POST", path_contains: str = "/pods") -> None:
        """Fail each matching request with probability ``ratio`` (0 disables)."""
        with self._lock:
            self._random = _Rule(status, retry_after, only_method, path_contains, ratio=ratio) if ratio > 0 else None

    def clear_faults(self) -> None:
        with self._lock:
            self._next.clear()
            self._random = None

    def start(self) -> HttpFaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._live.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._live.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = forward
            # headers and body go out in separate writes: with Nagle on, a reused connection
            # would wait ~40 ms for the client's delayed ACK on every response
            disable_nagle_algorithm = True

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # the default backlog of 5 resets bursts of new connections

        self._server = Server(self._listen_addr, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         name=f"httpfaultproxy:{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.cut_all()  # client connections and in-flight upstream requests (watches)

    def _pick_fault(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            self.requests_seen += 1
            rule = next((r for r in self._next if r.remaining > 0 and r.matches(method, path)), None)
            if rule is not None:
                rule.remaining -= 1
                self._next = [r for r in self._next if r.remaining > 0]
            elif self._random and self._random.matches(method, path) and self._rng.random() < self._random.ratio:
                rule = self._random
            self.faults_injected += rule is not None
            return rule

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        try:
            length = int(h.headers.get("Content-Length") or 0)
            body = h.rfile.read(length) if length > 0 else None
            rule = self._pick_fault(h.command, h.path)
            self._delay()
            if rule is not None:
                return _send_status(h, rule.status, "injected by HttpFaultProxy", rule.retry_after)
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            if self._ssl is not None:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(*self.target, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(*self.target)
            try:
                try:
                    conn.request(h.command, h.path, body=body, headers=headers)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    return _send_status(h, 502, f"upstream: {type(exc).__name__}: {exc}", None)
                with self._lock:
                    self._live.add(conn.sock)
                try:
                    _relay(h, resp)
                finally:
                    with self._lock:
                        self._live.discard(conn.sock)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError):
            h.close_connection = True  # client or upstream went away mid-response


def _send_status(h: BaseHTTPRequestHandler, status: int, message: str, retry_after: str | None) -> None:
    reason = _REASONS.get(status) or HTTPStatus(status).phrase.replace(" ", "")
    payload = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": status}).encode()
    h.send_response_only(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(payload)))
    if retry_after is not None:
        h.send_header("Retry-After", str(retry_after))
    h.end_headers()
    h.wfile.write(payload)


def _relay(h: BaseHTTPRequestHandler, resp: http.client.HTTPResponse) -> None:
    """Send ``resp`` to the client; bodies without a length are re-chunked as they arrive."""
    h.send_response_only(resp.status, resp.reason)
    for key, value in resp.getheaders():
        if key.lower() not in _HOP:
            h.send_header(key, value)
    length = resp.getheader("Content-Length")
    if length is not None and not resp.chunked:
        h.send_header("Content-Length", length)
    if h.command == "HEAD" or resp.status in (204, 304) or resp.status < 200:
        h.end_headers()
    elif length is not None and not resp.chunked:
        h.end_headers()
        while data := resp.read(65536):
            h.wfile.write(data)
    else:
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        while data := resp.read1(65536):  # whatever arrived: one watch event is one chunk
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.write(b"0\r\n\r\n")
