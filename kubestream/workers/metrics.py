"""The launcher's metrics (``kubestream_launcher_*``), each declared once on the process's registry."""

from __future__ import annotations

from kubestream.health import Metrics

# rate-limit waits: a token granted at once costs one Redis round trip; longer means the bucket was empty
RATE_LIMIT_WAIT_THRESHOLD_SECONDS = 0.01


class LauncherMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("launcher")
        self.creates = self.counter(
            "creates_total", "Launches settled by a pod create, by outcome (created, already_exists, failed) and "
            "the HTTP status of the deciding response", ("outcome", "status"), snapshot="{outcome}_total")
        self.create_seconds = self.histogram(
            "create_seconds", "From a launch's first create attempt to its outcome, retries and rate-limit waits "
            "included")
        self.retries = self.counter(
            "retries_total", "API calls retried after a transient error (transient) or a 403 (denied)", ("kind",),
            snapshot="transient_errors_total")
        self.rate_limit_wait_seconds = self.histogram(
            "rate_limit_wait_seconds", "Time spent getting a create token from the shared rate limiter")
        self.rate_limit_waits = self.counter(
            "rate_limit_waits_total", "Creates that had to wait for a token of the shared rate limiter")
        self.dead_letters = self.counter(
            "dead_letters_total", "Entries moved to the dead-letter stream, by reason", ("reason",),
            snapshot="dead_lettered_total")
        self.refused_messages = self.counter(
            "refused_messages_total", "Untrusted entries refused (bad or missing signature, oversized)", ("reason",))
        self.messages = self.counter(
            "messages_total", "Entries settled without a create, or left pending for redelivery, by outcome",
            ("outcome",), snapshot="{outcome}_total")
        self.replaced_finished = self.counter(
            "replaced_finished_total", "Finished pods of an earlier dispatch deleted to free their name")
        self.reclaimed = self.counter(
            "reclaimed_total", "Entries claimed from other consumers: dead (liveness key expired) or idle "
            "(pending past reclaim_idle_seconds)", ("how",))
        self.errors = self.counter("errors_total", "Unexpected errors handling an entry (left pending)")
        self.redis_errors = self.counter("redis_errors_total", "Main-loop rounds that failed on a Redis error")
        self.redis_resets = self.counter(
            "redis_resets_total", "Consumer groups found missing (NOGROUP: Redis lost its data) and recreated")
        self.in_flight = self.gauge("in_flight", "Entries in hand: queued for or in a create thread")
        self.stream_lag = self.gauge(
            "stream_lag", "Entries of a launch stream not yet delivered to any launcher (XINFO GROUPS lag)",
            ("queue",), snapshot="stream_lag_{queue}")
        self.stream_pending = self.gauge(
            "stream_pending", "Entries of a launch stream delivered and not acknowledged yet", ("queue",),
            snapshot="stream_pending_{queue}")
