"""The simulated kubelet's HTTPS endpoint for ``pods/log``: ``GET /containerLogs/{ns}/{pod}/{container}``.

The API server answers ``pods/log`` by asking the pod's node: it connects over HTTPS to the node's
``InternalIP`` (``--kubelet-preferred-address-types``) on ``status.daemonEndpoints.kubeletEndpoint.Port``.
This server listens on a free loopback port with a self-signed certificate (made with openssl; the
local API server does not verify kubelet certificates) and answers with what ``source`` returns for
the container, honouring ``tailLines`` and ``limitBytes`` as a kubelet does. Nothing else is served.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("kubestream.kubelet.logs")
LogSource = Callable[[str, str, str], bytes | None]  # (namespace, pod, container) -> log, None: unknown


class NoLog(Exception):
    """The container has no log to serve (yet): answered as a kubelet does, 400 with the message."""


def log_refusal(pod: dict[str, Any], container: str) -> str | None:
    """Why a kubelet would refuse ``container``'s log (its ``validateContainerLogStatus``), None when it
    serves it: a container that is running or has terminated, or waits after having run, has a log."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]
    found = next((s for s in statuses if s.get("name") == container), None)
    where = f"container {container!r} in pod {meta.get('name')!r}"
    if found is None:
        return f"{where} is waiting to start: ContainerCreating"
    state = found.get("state") or {}
    if "running" in state or "terminated" in state:
        return None
    if "terminated" in (found.get("lastState") or {}):
        return None
    reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
    return f"{where} is waiting to start: {reason}"


def tail(data: bytes, lines: int | None, limit_bytes: int | None) -> bytes:
    """The last ``lines`` lines of ``data`` (all of them for None), then at most ``limit_bytes`` bytes
    from the start of that tail (the kubelet's order)."""
    if lines is not None:
        if lines <= 0:
            data = b""
        else:
            parts = data.splitlines(keepends=True)
            data = b"".join(parts[-lines:])
    if limit_bytes is not None and limit_bytes >= 0:
        data = data[:limit_bytes]
    return data


def _int(query: dict[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed serving certificate and key for ``host`` (an EC key: made in milliseconds)."""
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=kubestream-sim-kubelet",
                    "-addext", f"subjectAltName=IP:{host}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class KubeletLogServer:
    """``start()`` binds a free port on ``host`` (``port``); ``stop()`` closes it."""

    def __init__(self, source: LogSource, *, host: str = "127.0.0.1") -> None:
        self.source, self.host = source, host
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def start(self) -> KubeletLogServer:
        self._dir = tempfile.TemporaryDirectory(prefix="kubestream-kubelet-tls-")
        cert, key = self_signed(Path(self._dir.name), self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        source = self.source

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.split("/") if p]
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._answer(404, b"not found\n")
                    return
                try:
                    data = source(parts[1], parts[2], parts[3])
                except NoLog as exc:
                    self._answer(400, str(exc).encode())
                    return
                if data is None:
                    self._answer(404, f"container {parts[3]} of pod {parts[1]}/{parts[2]} not found\n".encode())
                    return
                query = parse_qs(url.query)
                self._answer(200, tail(data, _int(query, "tailLines"), _int(query, "limitBytes")))

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("kubelet log server: " + format, *args)

        server = ThreadingHTTPServer((self.host, 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="kubelet-logs", daemon=True)
        self._thread.start()
        log.info("kubelet log server on https://%s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._dir is not None:
            self._dir.cleanup()
