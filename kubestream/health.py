"""Health and metrics for the long-running components (launcher, watcher).

- ``Metrics``: thread-safe counters and gauges rendered as Prometheus text.
- ``Heartbeat``: writes ``{prefix}:health:<component>:<member>`` (a hash with a
  TTL) every third of the TTL, but only while the component's main loop reports
  progress (``progress()``): a loop stuck on an error leaves the key to expire,
  so ``kubestream <component> --check`` (a ready-made liveness probe) and
  ``/healthz`` turn red. ``kubestream status`` lists the keys.
- ``serve_http``: ``/healthz`` (200 while the heartbeat is fresh) and ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from kubestream.text import as_text

log = logging.getLogger("kubestream.health")


class Metrics:
    def __init__(self, component: str) -> None:
        self.component = component
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}

    def inc(self, name: str, by: float = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + by

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def prometheus(self) -> str:
        lines = []
        for name, value in sorted(self.snapshot().items()):
            metric = f"kubestream_{self.component}_{name}"
            lines.append(f"# TYPE {metric} {'counter' if name.endswith('_total') else 'gauge'}")
            lines.append(f"{metric} {value:g}")
        return "\n".join(lines) + "\n"


class Heartbeat:
    """Refreshes the component's health key from a daemon thread."""

    def __init__(self, client: redis.Redis, key: str, ttl: float, metrics: Metrics,
                 extra: Callable[[], dict[str, str]] | None = None) -> None:
        self.client, self.key, self.ttl, self.metrics, self.extra = client, key, ttl, metrics, extra
        self.last_ok = 0.0
        self.last_progress = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def progress(self) -> None:
        """Called by the main loop each time round: it is alive and not stuck."""
        self.last_progress = time.monotonic()

    def stalled(self) -> bool:
        return time.monotonic() - self.last_progress > self.ttl

    def start(self) -> Heartbeat:
        self.progress()
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        fields = {"ts": f"{time.time():.3f}", "metrics": json.dumps(self.metrics.snapshot())}
        if self.extra:
            fields.update(self.extra())
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key, items=[part for item in fields.items() for part in item])
        pipe.pexpire(self.key, int(self.ttl * 1000))
        pipe.execute()
        self.last_ok = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_ok < self.ttl and not self.stalled()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.client.delete(self.key)
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if self.stalled():
                log.warning("main loop made no progress for %.0fs: health key left to expire",
                            time.monotonic() - self.last_progress, extra={"health_key": self.key})
                continue
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc, extra={"health_key": self.key})


def check(client: redis.Redis, pattern: str, max_age: float) -> list[str]:
    """Health keys matching ``pattern`` refreshed within ``max_age`` seconds."""
    fresh = []
    now = time.time()
    for key in client.scan_iter(match=pattern, count=1000):
        ts = client.hget(key, "ts")
        if ts is not None and now - float(ts) <= max_age:
            fresh.append(as_text(key))
    return fresh


def serve_http(host: str, port: int, metrics: Metrics, healthy: Callable[[], bool]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok = healthy()
                body, code = (b"ok\n", 200) if ok else (b"unhealthy\n", 503)
            elif self.path == "/metrics":
                body, code = metrics.prometheus().encode(), 200
            else:
                body, code = b"not found\n", 404
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
