"""Health and metrics for the long-running components (launcher, watcher).

- ``Metrics``: the component's ``prometheus_client`` registry (counters, gauges, histograms with
  labels) and the flat snapshot of it the health key carries.
- ``Heartbeat``: writes ``{prefix}:health:<component>:<member>`` (a hash with a
  TTL) every third of the TTL, but only while the component's main loop reports
  progress (``progress()``): a loop stuck on an error leaves the key to expire,
  so ``kubestream <component> --check`` (a ready-made liveness probe) and
  ``/healthz`` turn red. ``kubestream status`` lists the keys.
- ``Liveness``: ``{prefix}:alive:<component>:<member>``, a string with a short TTL
  refreshed every third of it by a thread of its own, whatever the main loop
  does: it says the process exists (a slow or stuck process keeps it; a
  killed one loses it within the TTL), so others may take over its work at once.
- ``serve_http``: ``/healthz`` (200 while the heartbeat is fresh) and ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kubestream.text import as_text

log = logging.getLogger("kubestream.health")

# seconds: from a few milliseconds (a create on an idle apiserver) to the retry budget's order
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """One component process's metrics: a ``CollectorRegistry`` of its own (no global registry).

    ``counter``/``gauge``/``histogram`` declare a metric named ``kubestream_<component>_<name>``.
    ``snapshot()`` flattens the registry into the small dict the health key carries (and
    ``kubestream status`` shows): a metric's samples are summed under its short name, or under
    ``snapshot`` formatted with each sample's labels (e.g. ``"{outcome}_total"``); histograms give
    ``<name>_count`` and ``<name>_sum``. Labelled series appear once they are first touched."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry(auto_describe=True)
        self._keys: dict[str, tuple[str, str]] = {}  # family name -> (short name, snapshot key format)

    def _declare(self, name: str, snapshot: str | None) -> str:
        full = f"kubestream_{self.component}_{name}"
        family = full.removesuffix("_total")
        self._keys[family] = (name, snapshot or name)
        return full

    def counter(self, name: str, doc: str, labels: Sequence[str] = (), *, snapshot: str | None = None) -> Counter:
        return Counter(self._declare(name, snapshot), doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), *, snapshot: str | None = None) -> Gauge:
        return Gauge(self._declare(name, snapshot), doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (), *,
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return Histogram(self._declare(name, None), doc, labels, registry=self.registry, buckets=buckets)

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in self.registry.collect():
            short, fmt = self._keys.get(family.name, (family.name, family.name))
            for sample in family.samples:
                if family.type == "histogram":
                    if sample.name.endswith(("_count", "_sum")) and not sample.name.endswith("_created"):
                        key = short + sample.name[sample.name.rfind("_"):]
                    else:
                        continue
                elif sample.name.endswith("_created"):
                    continue
                else:
                    key = fmt.format(**sample.labels)
                out[key] = out.get(key, 0.0) + sample.value
        return {key: int(v) if v.is_integer() else v for key, v in out.items()}  # counts read as counts

    def prometheus(self) -> bytes:
        """The text exposition of the registry (without the ``*_created`` series: a process start time
        per series, noise for these metrics)."""
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _KeptKey:
    """A Redis key a daemon thread (``_run``, until ``_stop`` is set) keeps refreshed; ``stop()`` ends the
    thread and deletes the key."""

    def __init__(self, client: redis.Redis, key: str, thread_name: str) -> None:
        self.client, self.key = client, key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.client.delete(self.key)
        except redis.RedisError:
            pass


class Heartbeat(_KeptKey):
    """Refreshes the component's health key from a daemon thread."""

    def __init__(self, client: redis.Redis, key: str, ttl: float, metrics: Metrics,
                 extra: Callable[[], dict[str, str]] | None = None) -> None:
        super().__init__(client, key, "heartbeat")
        self.ttl, self.metrics, self.extra = ttl, metrics, extra
        self.last_ok = 0.0
        self.last_progress = time.monotonic()

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


class Liveness(_KeptKey):
    """Keeps ``key`` alive (SET PX ``ttl``) from a daemon thread until ``stop()``, which deletes it so
    that others take over at once. The first write happens in ``start()``: when it returns, the key
    exists (or Redis is unreachable, and ``start`` raises)."""

    def __init__(self, client: redis.Redis, key: str, ttl: float) -> None:
        super().__init__(client, key, "liveness")
        self.ms = int(ttl * 1000)

    def start(self) -> Liveness:
        self.client.set(self.key, f"{time.time():.3f}", px=self.ms)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.ms / 3000):
            try:
                self.client.set(self.key, f"{time.time():.3f}", px=self.ms)
            except redis.RedisError as exc:
                log.warning("liveness refresh failed: %s", exc, extra={"alive_key": self.key})


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
            content_type = "text/plain; charset=utf-8"
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok = healthy()
                body, code = (b"ok\n", 200) if ok else (b"unhealthy\n", 503)
            elif path == "/metrics":
                body, code, content_type = metrics.prometheus(), 200, CONTENT_TYPE_LATEST
            else:
                body, code = b"not found\n", 404
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
