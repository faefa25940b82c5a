"""HTTP/1.1 on kept connections to one server, without a general-purpose client's per-request work.

A launcher's create is one small JSON POST on a kept TLS connection. Through urllib3 (the kubernetes
client's transport) a create cost this process ~2.3x the CPU of the same request written and read here
(``docs/benchmarks.md``): its pool manager, request and response objects, header validation and
``email``-based header parsing run for every request. ``WirePool`` does only what the API server's
answers need, with the stdlib's ``socket`` and ``ssl``:

- one request at a time per connection; idle connections are kept newest first, up to ``maxsize`` (more
  may be open at once: the surplus is closed when given back, as urllib3's non-blocking pool does);
- an idle connection that became readable (the server closed it, or sent something unasked) is closed,
  never used for a request;
- answers are framed by ``Transfer-Encoding: chunked``, ``Content-Length`` or the connection's end
  (RFC 9112 section 6.3); 1xx answers are skipped; no body for HEAD, 204 and 304;
- a connection is kept only when its answer was read exactly to its end and the server did not ask to
  close it;
- any error closes the connection. An answer that is not HTTP/1.x as it must be, or is over a limit
  (``MAX_HEAD`` bytes of status line and headers, ``MAX_BODY`` bytes of body), raises ``WireError``, a
  ``ConnectionError``: callers treat it as a connection error. Timeouts are per socket operation (as
  urllib3's), ``TimeoutError``; a request with CR, LF or a space where HTTP forbids them is a ValueError.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
MAX_BODY = 512 * 1024 * 1024
RECV_BYTES = 64 * 1024
NO_BODY_STATUSES = (204, 304)
HEX = frozenset(b"0123456789abcdefABCDEF")
TCP_NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)  # urllib3's default socket options


class WireError(ConnectionError):
    """The server's answer broke HTTP/1.1 framing or a limit; its connection was closed."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # names as the server sent them; repeated fields joined with ", "
    body: bytes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: ``host``:``port``, TLS with ``tls`` (None: plain TCP) and ``server_hostname``
    (SNI and the certificate check), ``authority`` as the Host header."""

    host: str
    port: int
    authority: str
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    socket_options: tuple[tuple[int, int, int], ...] = TCP_NODELAY


class _Conn:
    __slots__ = ("sock", "buf", "timeout")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.timeout: float | None = None

    def set_timeout(self, seconds: float) -> None:
        if seconds != self.timeout:
            self.sock.settimeout(seconds)
            self.timeout = seconds

    def fill(self) -> None:
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise WireError("the server closed the connection before the end of its answer")
        self.buf += data

    def until(self, separator: bytes, what: str) -> bytes:
        """The bytes up to ``separator`` (taken off the buffer with it); ``what`` names them in the error when
        they are over ``MAX_HEAD`` bytes."""
        while (end := self.buf.find(separator)) < 0:
            if len(self.buf) > MAX_HEAD:
                break
            self.fill()
        if end < 0 or end > MAX_HEAD:
            raise WireError(f"{what} is over {MAX_HEAD} bytes")
        data = bytes(self.buf[:end])
        del self.buf[:end + len(separator)]
        return data

    def line(self) -> bytes:
        """One CRLF-terminated line, without its CRLF."""
        return self.until(b"\r\n", "a line of the answer")

    def exactly(self, n: int) -> bytes:
        if len(self.buf) < n:
            parts, have = [bytes(self.buf)], len(self.buf)
            self.buf.clear()
            while have < n:
                data = self.sock.recv(max(RECV_BYTES, min(n - have, 1 << 20)))
                if not data:
                    raise WireError(f"the server closed the connection {n - have} bytes before the end of its answer")
                parts.append(data)
                have += len(data)
            self.buf += b"".join(parts)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def to_end(self) -> bytes:
        parts, have = [bytes(self.buf)], len(self.buf)
        self.buf.clear()
        while data := self.sock.recv(RECV_BYTES):
            have += len(data)
            if have > MAX_BODY:
                raise WireError(f"the answer's body is over {MAX_BODY} bytes")
            parts.append(data)
        return b"".join(parts)

    def idle_and_clean(self) -> bool:
        """True when nothing came while idle but TLS's own records: a connection that became readable while idle
        was closed by the server (or carries bytes nobody asked for) and is not used again. A TLS 1.3 server may
        send its session tickets after the handshake: they make a new idle connection readable, are read here
        (without blocking) and leave it clean."""
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return True
        if not isinstance(sock, ssl.SSLSocket):
            return False
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            sock.recv(1)  # application data or the end (b""): not clean either way
        except ssl.SSLWantReadError:
            return True  # only TLS records, now consumed
        except OSError:
            return False
        finally:
            sock.settimeout(previous)
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _check(text: str, what: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError(f"{what} holds CR or LF: {text[:80]!r}")
    return text


def request_head(method: str, target: str, authority: str, headers: Mapping[str, str],
                 body_length: int | None) -> bytes:
    """The request line and header section (Content-Length when there is a body), CRLF-terminated."""
    if not (method.isascii() and method.isalpha()) or not target.startswith("/") or any(c in target for c in " \r\n\t"):
        raise ValueError(f"not a request line: {method[:16]!r} {target[:80]!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{_check(name, 'a header name')}: {_check(str(value), 'header ' + name)}"
              for name, value in headers.items()]
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, str, dict[str, str], dict[str, str], bool]:
    """Status, reason, headers (as sent), the same with lowercase names, and whether it is HTTP/1.0."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise WireError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    lower: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise WireError(f"not a header field: {line[:80]!r}")
        key, text = name.decode("latin-1"), value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
        low = key.lower()
        lower[low] = f"{lower[low]}, {text}" if low in lower else text
    return int(code), reason.decode("latin-1"), headers, lower, version == b"HTTP/1.0"


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not (text := values.pop()).isascii() or not text.isdigit():
        raise WireError(f"not a Content-Length: {value[:80]!r}")
    length = int(text)
    if length > MAX_BODY:
        raise WireError(f"the answer's body is over {MAX_BODY} bytes ({length})")
    return length


def _chunked(conn: _Conn) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_text = conn.line().split(b";", 1)[0].strip(b" \t")
        if not size_text or not HEX.issuperset(size_text) or len(size_text) > 16:
            raise WireError(f"not a chunk size: {size_text[:80]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > MAX_BODY:
            raise WireError(f"the answer's body is over {MAX_BODY} bytes")
        parts.append(conn.exactly(size))
        if conn.exactly(2) != b"\r\n":
            raise WireError("a chunk does not end with CRLF")
    while conn.line():  # trailer fields, up to the empty line: not used
        pass
    return b"".join(parts)


def read_answer(conn: _Conn, method: str) -> tuple[Answer, bool]:
    """The next final answer on ``conn``, and whether the connection may carry another request."""
    while True:
        head = conn.until(b"\r\n\r\n", "the answer's status line and headers")
        status, reason, headers, lower, http10 = parse_head(head)
        if not 100 <= status <= 199:
            break
    tokens = {t.strip().lower() for t in lower.get("connection", "").split(",")}
    keep = "keep-alive" in tokens if http10 else "close" not in tokens
    if method == "HEAD" or status in NO_BODY_STATUSES:
        body = b""
    elif "transfer-encoding" in lower:
        chunked = lower["transfer-encoding"].rsplit(",", 1)[-1].strip().lower() == "chunked"
        body = _chunked(conn) if chunked else conn.to_end()
        keep = keep and chunked and "content-length" not in lower
    elif "content-length" in lower:
        body = conn.exactly(_content_length(lower["content-length"]))
    else:
        body, keep = conn.to_end(), False
    return Answer(status, reason, headers, body), keep and not conn.buf


class WirePool:
    """Kept connections to one ``Endpoint``; ``request`` is safe from any number of threads."""

    def __init__(self, endpoint: Endpoint, maxsize: int) -> None:
        self.endpoint = endpoint
        self.maxsize = max(1, maxsize)
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections opened so far

    def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None, *,
                timeout: tuple[float, float]) -> Answer:
        """Send one request (``target``: path and query) and read its answer. ``timeout``: (connect, read)
        seconds, the read timeout applying to each send and receive."""
        head = request_head(method, target, self.endpoint.authority, headers, None if body is None else len(body))
        conn = self._take(timeout[0])
        try:
            conn.set_timeout(timeout[1])
            if body is None:
                conn.sock.sendall(head)
            elif len(body) <= RECV_BYTES:
                conn.sock.sendall(head + body)
            else:
                conn.sock.sendall(head)
                conn.sock.sendall(body)
            answer, keep = read_answer(conn, method)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._give(conn)
        else:
            conn.close()
        return answer

    def prefill(self, n: int, *, connect_timeout: float) -> int:
        """Open connections until ``n`` (at most ``maxsize``) are idle, all at once, and keep them; how many
        were opened. One that cannot be opened is left out (the error is the next request's to meet)."""
        with self._lock:
            wanted = max(0, min(n, self.maxsize) - len(self._idle))
        opened: list[_Conn] = []

        def one() -> None:
            try:
                opened.append(self._open(connect_timeout))
            except OSError:
                pass

        threads = [threading.Thread(target=one, name="wire-prefill", daemon=True) for _ in range(wanted)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for conn in opened:
            self._give(conn)
        return len(opened)

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when given back."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.close()

    def _take(self, connect_timeout: float) -> _Conn:
        while True:
            with self._lock:
                if self._closed:
                    raise WireError("the connection pool is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open(connect_timeout)
            if conn.idle_and_clean():
                return conn
            conn.close()

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def _open(self, connect_timeout: float) -> _Conn:
        ep = self.endpoint
        sock = socket.create_connection((ep.host, ep.port), timeout=connect_timeout)
        try:
            for option in ep.socket_options:
                sock.setsockopt(*option)
            if ep.tls is not None:
                sock = ep.tls.wrap_socket(sock, server_hostname=ep.server_hostname)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self.opened += 1
        return _Conn(sock)
