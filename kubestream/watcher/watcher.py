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
pods of revoked tasks or of an older dispatch are deleted whenever they are
seen. Every delete carries the event's pod uid as a precondition, so a newer
pod of the same name is never deleted. API calls go through ``kubeapi.PodApi``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from kubestream.apierrors import classify_exception
from kubestream.backoff import backoff_delay
from kubestream.health import Heartbeat, Metrics
from kubestream.keys import Keys
from kubestream.kubeapi import ApiError, Gone, PodApi, PodWatch
from kubestream.messages import TaskState, TaskStateChanged
from kubestream.settings import Settings
from kubestream.store import TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, MANAGED_LABEL, TaskKey, key_from_annotations
from kubestream.text import as_text
from kubestream.watcher.classify import classify_pod
from kubestream.watcher.lease import Lease

log = logging.getLogger("kubestream.watcher")
SELECTOR = f"{MANAGED_LABEL}=true"
CHECKPOINT_EVERY = 0.5  # seconds between resourceVersion writes while events flow


class Watcher:
    """``api``: an ApiClient (``kubeapi.api_client``); ``pods`` replaces the PodApi built on it."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, api: Any,
                 *, name: str | None = None, pods: PodApi | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.pods = pods if pods is not None else PodApi(api)
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
            self.close()
            if self.leading:
                self.lease.release()
            self.heartbeat.stop()

    def close(self) -> None:
        """Wait for the deletes in flight."""
        self._deleter.shutdown(wait=True)

    def _try_lead(self) -> bool:
        try:
            self.leading = self.lease.acquire_or_renew()
            self.heartbeat.progress()  # health follows this loop, not the heartbeat thread
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
            log.info("published %s %s", state.value, reason,
                     extra={**ctx, "entry": result.detail, "owner": result.owner})
        gone = event_type == "DELETED" or meta.get("deletionTimestamp")
        if gone:
            return
        if result.detail in ("revoked", "stale dispatch") or (state.final and self._should_delete(state)):
            self._deleter.submit(self._delete, namespace, name, meta.get("uid", ""), ctx)

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

    def _delete(self, namespace: str, name: str, uid: str, ctx: dict[str, Any]) -> None:
        """Delete the pod the event was about: the uid precondition spares a newer pod of the same name."""
        try:
            if self.pods.delete(namespace, name, uid=uid):
                self.metrics.inc("deleted_total")
        except ApiError as exc:
            if exc.status == 409:
                log.info("pod not deleted: it was replaced by another pod of the same name", extra=ctx)
            else:
                log.warning("pod delete failed: %s", exc, extra=ctx)
        except Exception as exc:  # noqa: BLE001 - connection errors: the next relist deletes it again
            log.warning("pod delete failed: %s", exc, extra=ctx)


class NamespaceWatch:
    def __init__(self, watcher: Watcher, namespace: str, term: threading.Event) -> None:
        self.w, self.ns, self.term = watcher, namespace, term
        self.rv_key = watcher.keys.resource_version(namespace)
        self._last_checkpoint = 0.0
        self._watch: PodWatch | None = None

    def interrupt(self) -> None:
        """Unblock a watch waiting for the next event (stop, lost lease)."""
        watch = self._watch
        if watch is not None:
            watch.interrupt()

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
            except Exception as exc:  # noqa: BLE001 - any failure: back off, keep the checkpoint
                # API or Redis unreachable, 429, 5xx, a watch ERROR event
                outcome = classify_exception(exc)
                delay = max(outcome.retry_after or 0.0, backoff_delay(failures, base=0.2, cap=5.0))
                failures += 1
                self.w.metrics.inc("watch_errors_total")
                log.warning("watch error (%s), retrying in %.1fs", outcome.message or exc, delay,
                            extra={"namespace": self.ns})
                self.term.wait(delay)

    def relist(self) -> str:
        seen: set[str] = set()
        cont = ""
        while True:
            page = self.w.pods.list(self.ns, label_selector=SELECTOR, limit=500, continue_token=cont)
            for pod in page.items:
                seen.add(pod["metadata"]["name"])
                self.w.handle(pod, "ADDED")
            cont = page.continue_token
            if not cont:
                break
        self.w.publish_vanished(self.ns, seen)
        rv = page.resource_version
        self.checkpoint(rv, force=True)
        self.w.metrics.inc("relists_total")
        return rv

    def watch(self, rv: str) -> str:
        """Publish the events after ``rv`` until the watch ends; returns the last resourceVersion seen.
        Raises ``Gone`` when ``rv`` expired."""
        watch = self.w.pods.watch(self.ns, rv, label_selector=SELECTOR,
                                  timeout_seconds=self.w.settings.watch_timeout_seconds)
        self._watch = watch
        if self._stopped():
            watch.interrupt()
        try:
            for event in watch:
                if self._stopped():
                    break
                etype, obj = event.get("type", ""), event.get("object") or {}
                if etype != "BOOKMARK":
                    self.w.handle(obj, etype)
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                self.checkpoint(rv, force=etype == "BOOKMARK")
        finally:
            self._watch = None
        self.checkpoint(rv, force=True)  # every event up to rv is published
        return rv

    def checkpoint(self, rv: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self.w.redis.set(self.rv_key, rv)
            self._last_checkpoint = now

