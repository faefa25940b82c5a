"""FaultProxy / HttpFaultProxy against tiny local servers (no kube-apiserver needed)."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devkit import procs
from devkit.faultproxy import FaultProxy, HttpFaultProxy
from kubestream.apierrors import classify_exception

pytestmark = pytest.mark.timeout(60)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    procs.wait_for(cond, timeout=timeout, interval=0.01, what="the proxy condition")


# ---------------------------------------------------------------- upstream HTTP server


class Upstream:
    """A local HTTP(S) server recording requests; /stream blocks between its two lines."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.stream_done = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _record(self) -> bytes:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream.requests.append({"method": self.command, "path": self.path,
                                          "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": body})
                return body

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._record()
                if self.path == "/stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in (b'{"type":"ADDED"}\n', b'{"type":"MODIFIED"}\n'):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                        self.wfile.flush()
                        if not upstream.release.wait(20):
                            return
                    self.wfile.write(b"0\r\n\r\n")
                    upstream.stream_done.set()
                elif self.path == "/big":
                    data = bytes(range(256)) * 1024
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._json(200, {"path": self.path, "auth": self.headers.get("Authorization")})

            def do_POST(self):
                body = self._record()
                if self.path.endswith("/pods"):
                    pod = json.loads(body)
                    pod.setdefault("metadata", {})["resourceVersion"] = "1"
                    self._json(201, pod)
                else:
                    self._json(200, {"echo": body.decode()})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def hproxy(upstream: Upstream) -> Iterator[HttpFaultProxy]:
    with HttpFaultProxy("127.0.0.1", upstream.port, tls=False) as proxy:
        yield proxy


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


# ---------------------------------------------------------------- HttpFaultProxy


def test_http_proxy_forwards_method_path_headers_body(hproxy, upstream):
    resp, data = request(hproxy.port, "GET", "/api/v1/pods?watch=false", headers={"Authorization": "Bearer t0k"})
    assert resp.status == 200
    assert json.loads(data) == {"path": "/api/v1/pods?watch=false", "auth": "Bearer t0k"}
    resp, data = request(hproxy.port, "POST", "/echo", body=b'{"a": 1}', headers={"Content-Type": "text/plain"})
    assert resp.status == 200 and json.loads(data) == {"echo": '{"a": 1}'}
    assert upstream.requests[-1]["headers"]["content-type"] == "text/plain"
    resp, data = request(hproxy.port, "GET", "/big")
    assert data == bytes(range(256)) * 1024
    assert hproxy.requests_seen == 3 and hproxy.faults_injected == 0


def test_http_proxy_keeps_client_connection_alive(hproxy, upstream):
    conn = http.client.HTTPConnection("127.0.0.1", hproxy.port, timeout=10)
    for i in range(3):
        conn.request("POST", "/echo", body=str(i).encode())
        resp = conn.getresponse()
        assert json.loads(resp.read()) == {"echo": str(i)}
    conn.close()


def test_http_proxy_injects_429s_then_recovers(hproxy, upstream):
    hproxy.fail_next(2)  # 429, Retry-After 1, POST .../pods
    pod = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}).encode()
    path = "/api/v1/namespaces/default/pods"
    resp, data = request(hproxy.port, "GET", path)  # not a POST: forwarded
    assert resp.status == 200
    for _ in range(2):
        resp, data = request(hproxy.port, "POST", path, body=pod)
        assert resp.status == 429
        assert resp.getheader("Retry-After") == "1"
        status = json.loads(data)
        assert status["kind"] == "Status" and status["reason"] == "TooManyRequests" and status["code"] == 429
    resp, data = request(hproxy.port, "POST", path, body=pod)
    assert resp.status == 201 and json.loads(data)["metadata"]["name"] == "p"
    assert [r["method"] for r in upstream.requests] == ["GET", "POST"]  # faults never reached upstream
    assert hproxy.requests_seen == 4 and hproxy.faults_injected == 2


def test_http_proxy_fail_filters_and_random(hproxy, upstream):
    hproxy.fail_next(1, status=503, retry_after=None, only_method=None, path_contains="/special")
    resp, _ = request(hproxy.port, "GET", "/other")
    assert resp.status == 200
    resp, data = request(hproxy.port, "GET", "/special")
    assert resp.status == 503 and resp.getheader("Retry-After") is None
    assert json.loads(data)["reason"] == "ServiceUnavailable"
    hproxy.fail_randomly(1.0, status=500, only_method="POST", path_contains="")
    assert request(hproxy.port, "POST", "/echo", body=b"x")[0].status == 500
    hproxy.fail_randomly(0)
    assert request(hproxy.port, "POST", "/echo", body=b"x")[0].status == 200
    hproxy.fail_next(5)
    hproxy.clear_faults()
    assert request(hproxy.port, "POST", "/api/v1/namespaces/d/pods", body=b"{}")[0].status == 201


def test_http_proxy_streams_chunked_response_incrementally(hproxy, upstream):
    conn = http.client.HTTPConnection("127.0.0.1", hproxy.port, timeout=10)
    conn.request("GET", "/stream")
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()  # must arrive while upstream still holds the second line back
    assert first == b'{"type":"ADDED"}\n'
    assert not upstream.stream_done.is_set()
    upstream.release.set()
    assert resp.readline() == b'{"type":"MODIFIED"}\n'
    assert resp.read() == b""
    assert upstream.stream_done.wait(5)
    conn.close()


def test_http_proxy_cut_all_ends_a_stream(hproxy, upstream):
    conn = http.client.HTTPConnection("127.0.0.1", hproxy.port, timeout=10)
    conn.request("GET", "/stream")
    resp = conn.getresponse()
    assert resp.readline() == b'{"type":"ADDED"}\n'
    hproxy.cut_all()
    with pytest.raises((http.client.HTTPException, OSError)):
        resp.read()
    conn.close()


def test_http_proxy_latency(hproxy):
    hproxy.latency_ms = 300
    start = time.monotonic()
    assert request(hproxy.port, "GET", "/x")[0].status == 200
    assert time.monotonic() - start >= 0.3


def test_http_proxy_upstream_down_gives_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with HttpFaultProxy("127.0.0.1", dead_port, tls=False) as proxy:
        resp, data = request(proxy.port, "GET", "/api")
        assert resp.status == 502 and json.loads(data)["kind"] == "Status"


def test_kubernetes_client_through_http_proxy(hproxy, upstream):
    from kubernetes import client

    config = client.Configuration(host=hproxy.url, api_key={"BearerToken": "s3cret"},
                                  api_key_prefix={"BearerToken": "Bearer"})
    config.retries = False
    with client.ApiClient(config) as api_client:
        core = client.CoreV1Api(api_client)
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"},
                "spec": {"containers": [{"name": "base", "image": "busybox"}]}}
        hproxy.fail_next(1, retry_after="2")
        with pytest.raises(client.ApiException) as info:
            core.create_namespaced_pod("default", body)
        outcome = classify_exception(info.value)
        assert outcome.kind == "transient" and outcome.retry_after == 2.0
        assert outcome.message.startswith("429 Too Many Requests: ")
        pod = core.create_namespaced_pod("default", body)
        assert pod.metadata.name == "p1"
    assert upstream.requests[-1]["headers"]["authorization"] == "Bearer s3cret"
    assert upstream.requests[-1]["path"] == "/api/v1/namespaces/default/pods"


# ---------------------------------------------------------------- TLS upstream


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "tls.crt", d / "tls.key"


@pytest.fixture
def tls_upstream(tls_files) -> Iterator[Upstream]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls_files)
    up = Upstream(tls=ctx)
    yield up
    up.close()


@pytest.mark.parametrize("verify", [True, False])
def test_http_proxy_terminates_tls(tls_upstream, tls_files, verify):
    ca = str(tls_files[0]) if verify else None
    with HttpFaultProxy("127.0.0.1", tls_upstream.port, ca_file=ca) as proxy:
        resp, data = request(proxy.port, "GET", "/api", headers={"Authorization": "Bearer x"})
        assert resp.status == 200 and json.loads(data)["auth"] == "Bearer x"


def test_tcp_proxy_passes_tls_through(tls_upstream, tls_files):
    ctx = ssl.create_default_context(cafile=str(tls_files[0]))
    with FaultProxy("127.0.0.1", tls_upstream.port) as proxy:
        conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=10)
        conn.request("GET", "/api")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["path"] == "/api"
        conn.close()


# ---------------------------------------------------------------- FaultProxy (TCP)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in conns:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def connection_fails(sock: socket.socket) -> bool:
    """The peer closed or reset the connection (no echo comes back)."""
    try:
        sock.sendall(b"ping")
        return sock.recv(100) == b""
    except OSError:
        return True


def connect_fails(port: int) -> bool:
    """A new connection is reset, at connect time (RST already there) or at first use."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return True
    with sock:
        return connection_fails(sock)


def test_tcp_proxy_forwards_bytes(echo_port):
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            assert roundtrip(s, b"hello") == b"hello"
            big = bytes(range(256)) * 4096
            assert roundtrip(s, big) == big
        assert proxy.accepted == 1


def test_tcp_proxy_latency(echo_port):
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        proxy.latency_ms = 300
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            start = time.monotonic()
            assert roundtrip(s, b"x") == b"x"
            assert time.monotonic() - start >= 0.3


def test_tcp_proxy_refuse(echo_port):
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as before:
            assert roundtrip(before, b"a") == b"a"
            proxy.refuse = True
            assert connect_fails(proxy.port)
            assert proxy.refused == 1
            assert roundtrip(before, b"b") == b"b"  # live connections are untouched
        proxy.refuse = False
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as after:
            assert roundtrip(after, b"c") == b"c"


def test_tcp_proxy_refuse_breaks_http_clients(upstream):
    with FaultProxy("127.0.0.1", upstream.port) as proxy:
        proxy.refuse = True
        with pytest.raises((OSError, http.client.HTTPException)):
            request(proxy.port, "GET", "/x")
        proxy.refuse = False
        assert request(proxy.port, "GET", "/x")[0].status == 200


def test_tcp_proxy_cut_all(echo_port):
    with FaultProxy("127.0.0.1", echo_port) as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert roundtrip(s, b"a") == b"a"
        proxy.cut_all()
        assert connection_fails(s)
        s.close()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s2:  # new ones still work
            assert roundtrip(s2, b"b") == b"b"
        wait_for(lambda: not proxy._live)


def test_tcp_proxy_stop_closes_listener(echo_port):
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    port = proxy.port
    proxy.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
