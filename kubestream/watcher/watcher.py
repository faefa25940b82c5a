"""The watcher: list + watch task pods, publish each state change to its owner.

One active watcher holds the lease; standbys wait for it. Per namespace the
active watcher runs ``NamespaceWatch``:

1. Resume from the resourceVersion checkpointed in Redis, or relist.
2. Relist = list every task pod, publish each one's current state (the Lua
   publish drops what was already published), then fail tasks that were
   live (pending/running) but whose pod is gone, and checkpoint the list's
   resourceVersion.
3. Watch from the checkpoint with bookmarks; publish each event; checkpoint
   the resourceVersion after publishing (so a crash replays, never skips;
   replays are dropped as duplicates). A watch that ends cleanly is renewed;
   410 Gone (expired resourceVersion) goes back to 2.

Finished pods are deleted per ``delete_worker_pods``/``..._on_failure``;
pods of revoked tasks are deleted whenever they are seen.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from kubernetes import client as k8s

from kubestream.apierrors import classify_exception
from kubestream.backoff import backoff_delay
from kubestream.health import Heartbeat, Metrics
from kubestream.keys import Keys
from kubestream.kubeclient import raw
from kubestream.messages import TaskState, TaskStateChanged
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, MANAGED_LABEL, TaskKey
from kubestream.watcher.classify import classify_pod
from kubestream.watcher.lease import Lease
from kubestream.watcher.podkey import key_from_annotations
from kubestream.text import as_text

log = logging.getLogger("kubestream.watcher")
SELECTOR = f"{MANAGED_LABEL}=true"
CHECKPOINT_EVERY = 0.5  # seconds between resourceVersion writes while events flow


class Gone(Exception):
    """The resourceVersion expired (410): relist."""


class Watcher:
    def __init__(self, settings: Settings, redis_client: redis.Redis, api: k8s.ApiClient,
                 *, name: str | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.core = k8s.CoreV1Api(api)
        self.keys = Keys(settings.key_prefix)
        self.store = TaskStore(redis_client, self.keys, settings)
        self.name = name or settings.member_name()
        self.metrics = Metrics("watcher")
        self.lease = Lease(redis_client, self.keys.watcher_lease, self.name, settings.lease_seconds)
        self.stopping = threading.Event()
        self.leading = False
        self._deleter = ThreadPoolExecutor(8, thread_name_prefix="delete")
        self._watches: list[NamespaceWatch] = []
        self.heartbeat = Heartbeat(redis_client, self.keys.health("watcher", self.name), settings.health_ttl_seconds,
                                   self.metrics, extra=lambda: {"leader": "1" if self.leading else "0"})

    def stop(self) -> None:
        self.stopping.set()
        for watch in list(self._watches):
            watch.interrupt()

    def run(self) -> None:
        """Hold the lease (or stand by) and watch every namespace until stopped."""
        self.heartbeat.start()
        try:
            while not self.stopping.is_set():
                if not self._try_lead():
                    self.stopping.wait(self.settings.lease_seconds / 3)
                    continue
                self._lead()
        finally:
            self._deleter.shutdown(wait=True)
            if self.leading:
                self.lease.release()
            self.heartbeat.stop()

    def _try_lead(self) -> bool:
        try:
            self.leading = self.lease.acquire_or_renew()
        except redis.RedisError as exc:
            log.warning("lease check failed: %s", exc)
            self.leading = False
        return self.leading

    def _lead(self) -> None:
        term = threading.Event()
        log.info("leading: watching %s", ",".join(self.settings.namespaces_to_watch()))
        self._watches = [NamespaceWatch(self, ns, term) for ns in self.settings.namespaces_to_watch()]
        threads = [threading.Thread(target=w.run, name=f"watch-{w.ns}", daemon=True) for w in self._watches]
        for t in threads:
            t.start()
        while not self.stopping.wait(self.settings.lease_seconds / 3):
            if not self._try_lead():
                log.warning("lost the watcher lease; standing by")
                break
        term.set()
        for w in self._watches:
            w.interrupt()
        for t in threads:
            t.join(timeout=self.settings.watch_timeout_seconds + 15)

    # -- per pod --------------------------------------------------------------------------
    def handle(self, pod: dict[str, Any], event_type: str) -> None:
        meta = pod.get("metadata") or {}
        key = key_from_annotations(meta.get("annotations"))
        if key is None:
            return
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        ctx = {"task": str(key), "pod": name, "namespace": namespace, "rv": meta.get("resourceVersion")}
        verdict = classify_pod(pod, event_type, self.settings.fatal_container_reasons)
        if verdict is None:
            return
        state, reason = verdict
        dispatch = (meta.get("annotations") or {}).get(DISPATCH_ANNOTATION, "")
        result = self.store.publish(TaskStateChanged(key=key, state=state, reason=reason, pod_name=name,
                                                     namespace=namespace, at=time.time()), dispatch)
        if result.published:
            self.metrics.inc("published_total")
            log.info("published %s %s", state.value, reason, extra={**ctx, "entry": result.detail, "owner": result.owner})
        gone = event_type == "DELETED" or meta.get("deletionTimestamp")
        if gone:
            return
        if result.detail in ("revoked", "stale dispatch") or (state.final and self._should_delete(state)):
            self._deleter.submit(self._delete, namespace, name, ctx)

    def publish_vanished(self, namespace: str, seen: set[str]) -> None:
        """Fail tasks published live in ``namespace`` whose pod is not in the current list."""
        for ns, pod in self.store.live_pods():
            if ns != namespace or pod in seen:
                continue
            rec = self.store.record(pod)
            if not rec.get("dag_id"):
                self.redis.srem(self.keys.live, f"{ns}/{pod}")
                continue
            key = TaskKey(rec["dag_id"], rec["task_id"], rec["run_id"], int(rec["try_number"]), int(rec["map_index"]))
            result = self.store.publish(TaskStateChanged(
                key=key, state=TaskState.FAILED, reason=f"pod deleted while {rec.get('state') or 'pending'}",
                pod_name=pod, namespace=ns, at=time.time()))
            if not result.published:  # revoked, or final already: no longer live either way
                self.redis.srem(self.keys.live, f"{ns}/{pod}")
            log.warning("pod vanished while the watcher was away: %s", result.detail or "failed",
                        extra={"task": str(key), "pod": pod})

    def _should_delete(self, state: TaskState) -> bool:
        if not self.settings.delete_worker_pods:
            return False
        return state is TaskState.SUCCEEDED or self.settings.delete_worker_pods_on_failure

    def _delete(self, namespace: str, name: str, ctx: dict[str, Any]) -> None:
        try:
            raw(self.core.delete_namespaced_pod, name, namespace, _request_timeout=(5, 30))
            self.metrics.inc("deleted_total")
        except k8s.ApiException as exc:
            if exc.status != 404:
                log.warning("pod delete failed: %s %s", exc.status, exc.reason, extra=ctx)
        except Exception as exc:  # connection errors: the next relist retries
            log.warning("pod delete failed: %s", exc, extra=ctx)


class NamespaceWatch:
    def __init__(self, watcher: Watcher, namespace: str, term: threading.Event) -> None:
        self.w, self.ns, self.term = watcher, namespace, term
        self.rv_key = watcher.keys.resource_version(namespace)
        self._last_checkpoint = 0.0
        self._resp: Any = None

    def interrupt(self) -> None:
        """Unblock a watch waiting for the next event (stop, lost lease)."""
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:  # noqa: BLE001 - already closed
                pass

    def _stopped(self) -> bool:
        return self.term.is_set() or self.w.stopping.is_set()

    def run(self) -> None:
        rv = as_text(self.w.redis.get(self.rv_key))
        failures = 0
        while not self._stopped():
            try:
                if not rv:
                    rv = self.relist()
                rv = self.watch(rv)
                failures = 0
            except Gone:
                log.info("resourceVersion %s expired (410): relisting", rv, extra={"namespace": self.ns})
                self.w.metrics.inc("relists_410_total")
                rv = ""
            except Exception as exc:  # API or Redis unreachable, 429, 5xx: back off, keep the checkpoint
                outcome = classify_exception(exc)
                delay = max(outcome.retry_after or 0.0, backoff_delay(failures, base=0.2, cap=5.0))
                failures += 1
                self.w.metrics.inc("watch_errors_total")
                log.warning("watch error (%s), retrying in %.1fs", outcome.message or exc, delay,
                            extra={"namespace": self.ns})
                self.term.wait(delay)

    def relist(self) -> str:
        seen: set[str] = set()
        cont = None
        while True:
            body = json.loads(raw(self.w.core.list_namespaced_pod, self.ns, label_selector=SELECTOR, limit=500,
                                  _continue=cont, _request_timeout=(5, 60)))
            for pod in body.get("items", []):
                seen.add(pod["metadata"]["name"])
                self.w.handle(pod, "ADDED")
            cont = (body.get("metadata") or {}).get("continue")
            if not cont:
                break
        self.w.publish_vanished(self.ns, seen)
        rv = body["metadata"]["resourceVersion"]
        self.checkpoint(rv, force=True)
        self.w.metrics.inc("relists_total")
        return rv

    def watch(self, rv: str) -> str:
        timeout = self.w.settings.watch_timeout_seconds
        try:
            resp = self.w.core.list_namespaced_pod(
                self.ns, label_selector=SELECTOR, watch=True, resource_version=rv, allow_watch_bookmarks=True,
                timeout_seconds=timeout, _preload_content=False, _request_timeout=(5, timeout + 10))
        except k8s.ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        self._resp = resp
        if self._stopped():
            self.interrupt()
        try:
            for line in _lines(resp):
                if self._stopped():
                    break
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error event: {obj.get('message')}")
                if etype != "BOOKMARK":
                    self.w.handle(obj, etype)
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                self.checkpoint(rv, force=etype == "BOOKMARK")
        except Exception:
            if self._stopped():
                return rv  # interrupted on purpose
            raise
        finally:
            self._resp = None
            resp.release_conn()
        self.checkpoint(rv, force=True)
        return rv

    def checkpoint(self, rv: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self.w.redis.set(self.rv_key, rv)
            self._last_checkpoint = now


def _lines(resp: Any):  # noqa: ANN202 - generator of bytes lines
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf
