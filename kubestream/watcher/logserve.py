"""The watcher's pod log server: answers ``get_task_log``'s requests with a running pod's last lines.

Every watcher process runs one (leader and standbys alike: it needs no lease), reading
``{p}:logs:requests`` in its cluster's consumer group, so requests are spread over the replicas and
keep being served through a leader change. The request format and the requester are in
``kubestream/podlogs.py``; what is checked before a log is read:

- the entry's signature (unsigned, forged, or copied from another stream: dropped, no answer);
- its age (older than ``podlogs.MAX_REQUEST_AGE``: dropped, so a backlog or a replay is not served);
- the task record names the pod's namespace, which must be one this watcher serves;
- the pod, found by its name (derived from the key) with the managed label, must carry this
  deployment's key-prefix annotation (``kubestream.io/key-prefix``, strictly: a pod without one is
  not read) and the key's own annotations.

So Redis write access alone reads no other pod's log, and without a signing key none at all. The
answer is capped at ``pod_log_max_bytes`` (newest lines kept) and expires after
``podlogs.REPLY_TTL_SECONDS``. In a multi-cluster deployment a watcher that does not find the pod in
its cluster stays silent: the cluster that has it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import redis

from kubestream.keys import Keys
from kubestream.kubeapi import ApiError, PodApi
from kubestream.podlogs import (
    REPLY_TTL_SECONDS,
    BadRequest,
    LogReply,
    LogRequest,
    Status,
    encode_reply,
    pack_signed,
    parse_request,
    tail_bytes,
)
from kubestream.settings import Settings
from kubestream.signing import SignatureError, Signer, Unsigned
from kubestream.store import TaskStore
from kubestream.taskkey import MANAGED_LABEL, PREFIX_ANNOTATION, key_from_annotations
from kubestream.text import stream_entries
from kubestream.watcher.metrics import WatcherMetrics

log = logging.getLogger("kubestream.watcher.logs")
READ_FACTOR = 8  # bytes read from the API per byte answered: room for a tail of long lines
CONTAINER = "base"  # the task container, as the KubernetesExecutor reads it
LOG_TIMEOUT = (5.0, 10.0)


class LogServer:
    """Serves pod log requests on a thread of its own (``start``/``stop``), handling a few at once."""

    def __init__(self, settings: Settings, client: redis.Redis, pods: PodApi, store: TaskStore,
                 signer: Signer | Unsigned, name: str, *, workers: int = 4,
                 metrics: WatcherMetrics | None = None) -> None:
        self.settings, self.redis, self.pods, self.store, self.signer, self.name = (
            settings, client, pods, store, signer, name)
        self.metrics = metrics
        self.keys = Keys(settings.key_prefix, settings.cluster)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pod-log")
        self.served = 0  # answers written (any status)
        self.dropped = 0  # requests not answered (bad signature, stale, malformed)

    def start(self) -> LogServer:
        self._thread = threading.Thread(target=self._run, name="pod-log-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.redis.xgroup_delconsumer(self.keys.log_requests, self.keys.log_group, self.name)
        except redis.RedisError:
            pass  # an idle consumer costs nothing

    # -- loop -------------------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        try:
            # from the start: a request written before this group existed is still served (older ones are
            # dropped as stale, cheaply)
            self.redis.xgroup_create(self.keys.log_requests, self.keys.log_group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _run(self) -> None:
        ready, failures = False, 0
        while not self._stopping.is_set():
            try:
                if not ready:
                    self._ensure_group()
                    ready = True
                reply = self.redis.xreadgroup(self.keys.log_group, self.name, {self.keys.log_requests: ">"},
                                              count=16, block=1000)
                failures = 0
                for _, eid, fields in stream_entries(reply):
                    self._pool.submit(self._handle_entry, eid, fields)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data
                    ready = False
                    continue
                failures = self._failed(exc, failures)
            except redis.RedisError as exc:
                failures = self._failed(exc, failures)
            except RuntimeError:  # the pool was shut down by stop()
                return

    def _failed(self, exc: BaseException, failures: int) -> int:
        log.warning("pod log requests unreadable (%s); retrying", exc)
        self._stopping.wait(min(5.0, 0.2 * 2 ** failures))
        return min(failures + 1, 5)

    # -- one request ------------------------------------------------------------------------------
    def _handle_entry(self, eid: str, fields: Any) -> None:
        try:
            self.handle(eid, fields)
        except Exception:  # one request must never stop the server
            log.exception("pod log request failed", extra={"entry": eid})
        finally:
            try:
                self.redis.xack(self.keys.log_requests, self.keys.log_group, eid)
                self.redis.xdel(self.keys.log_requests, eid)
            except redis.RedisError as exc:
                log.warning("could not settle pod log request: %s", exc, extra={"entry": eid})

    def handle(self, eid: str, fields: Any) -> LogReply | None:
        """Answer one request entry; returns the answer written, None when none is (dropped)."""
        stream = self.keys.log_requests
        try:
            if not fields:
                raise BadRequest("entry deleted while pending")
            request = parse_request(self.signer.verify(stream, fields), now=time.time())
        except (SignatureError, BadRequest) as exc:
            self.dropped += 1
            self._count("dropped")
            log.warning("pod log request dropped: %s", exc, extra={"entry": eid})
            return None
        answer = self.answer(request)
        if answer is None:
            self._count("elsewhere")
            log.info("pod log request for a pod not in this cluster", extra={"entry": eid, "task": str(request.key)})
            return None
        reply_key = self.keys.log_reply(request.reply_id)
        element = pack_signed(self.signer.sign(reply_key, encode_reply(answer)))
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(reply_key, element)
        pipe.expire(reply_key, REPLY_TTL_SECONDS)
        pipe.execute()
        self.served += 1
        self._count(answer.status.value)
        log.info("pod log request answered: %s %s", answer.status.value, answer.message,
                 extra={"entry": eid, "task": str(request.key), "pod": answer.pod, "namespace": answer.namespace,
                        "bytes": len(answer.text)})
        return answer

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.log_requests.labels(outcome).inc()

    def answer(self, request: LogRequest) -> LogReply | None:
        """What to answer ``request`` (None: stay silent, the pod is in another cluster)."""
        pod_name = request.key.pod_name()

        def reply(status: Status, message: str, namespace: str = "", text: str = "",
                  truncated: bool = False) -> LogReply:
            return LogReply(request.reply_id, status, message, pod_name, namespace, text, truncated, self.name)

        record = self.store.record(pod_name)
        namespace = record.get("namespace", "")
        if not record or not namespace:
            return reply(Status.NOT_FOUND, "no task record (not dispatched, or expired)")
        if namespace not in self.settings.namespaces_to_watch():
            return None if self.settings.cluster else reply(
                Status.REFUSED, f"namespace {namespace} is not one this watcher serves", namespace)
        try:
            page = self.pods.list(namespace, label_selector=f"{MANAGED_LABEL}=true",
                                  field_selector=f"metadata.name={pod_name}", limit=1)
        except Exception as exc:  # noqa: BLE001 - API errors and connection errors alike are answered
            return reply(Status.ERROR, f"cannot look the pod up: {exc}", namespace)
        if not page.items:
            return None if self.settings.cluster else reply(
                Status.NOT_FOUND, "no pod (not created yet, or deleted)", namespace)
        pod = page.items[0]
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if annotations.get(PREFIX_ANNOTATION) != self.settings.key_prefix or \
                key_from_annotations(annotations) != request.key:
            return reply(Status.REFUSED, "the pod is not this kubestream's pod of this task", namespace)
        containers = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or ()]
        container = CONTAINER if CONTAINER in containers or not containers else containers[0]
        cap = self.settings.pod_log_max_bytes
        try:
            data = self.pods.log(namespace, pod_name, container=container, tail_lines=request.lines,
                                 limit_bytes=cap * READ_FACTOR, timeout=LOG_TIMEOUT)
        except ApiError as exc:
            status = Status.NOT_FOUND if exc.status == HTTPStatus.NOT_FOUND else Status.ERROR
            return reply(status, f"the API refused the log: {exc.status} {exc.message}".strip(), namespace)
        except Exception as exc:  # noqa: BLE001 - connection errors
            return reply(Status.ERROR, f"cannot read the log: {exc}", namespace)
        text, truncated = tail_bytes(data, cap)
        message = f"last {request.lines} lines of container {container}" + (
            f", cut to the newest {cap} bytes" if truncated else "")
        return reply(Status.OK, message, namespace, text.decode("utf-8", errors="replace"), truncated)
