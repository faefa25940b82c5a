"""The watcher's metrics (``kubestream_watcher_*``), each declared once on the process's registry."""

from __future__ import annotations

from kubestream.health import Metrics


class WatcherMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("watcher")
        self.published = self.counter(
            "published_total", "Task state changes published to the result streams, by state", ("state",))
        self.publish_seconds = self.histogram(
            "publish_seconds", "Time one publish takes (the fenced Redis script writing the result)")
        self.vanished = self.counter(
            "vanished_total", "Tasks failed because their live pod was gone at a relist")
        self.watch_restarts = self.counter(
            "watch_restarts_total", "Pod watches started again after they ended (timeout, error or 410)")
        self.watch_errors = self.counter(
            "watch_errors_total", "Watch rounds that failed (API or Redis unreachable, 429, 5xx, ERROR events)")
        self.watch_expired = self.counter(
            "watch_expired_total", "Watches whose resourceVersion had expired (410 Gone): a relist follows")
        self.relists = self.counter("relists_total", "Relists of a namespace's task pods, by source", ("source",),
                                    snapshot="relists_{source}_total")
        self.lease_holder = self.gauge("lease_holder", "1 while this process holds the watcher lease, else 0")
        self.deposed = self.counter(
            "deposed_total", "Writes Redis refused because another process holds the lease now")
        self.deletes = self.counter(
            "deletes_total", "Finished or revoked pods deleted, by outcome (deleted, replaced, error)", ("outcome",),
            snapshot="deletes_{outcome}_total")
        self.foreign_pods = self.counter(
            "foreign_pods_total", "Pods with kubestream's labels whose name is not their task's pod name (ignored)")
        self.log_requests = self.counter(
            "log_requests_total", "Pod log requests handled, by outcome (an answer's status, dropped, elsewhere)",
            ("outcome",), snapshot="log_requests_{outcome}_total")
        self.redis_resets = self.counter(
            "redis_resets_total", "Redis data losses detected (the data epoch changed): live state rebuilt")
