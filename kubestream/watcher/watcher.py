"""The watcher: list + watch task pods, publish each state change to its owner.

One active watcher holds the lease (``lease.py``); standbys wait for it. Each
acquisition of the lease starts a ``Term``: its fence (the process's lease
token and the lease epoch) goes with every write the watcher makes (publish,
live set, checkpoint), and Redis refuses those writes once the lease is no
longer held under it; the first refusal ends the term at once (``Deposed``).
Per namespace the active watcher runs ``NamespaceWatch``:

1. Resume from the resourceVersion checkpointed in Redis, or relist (at a
   takeover, from the standby's warm list when it has caught up: ``warmlist.py``).
2. Relist = list every task pod, publish each one's current state (the Lua
   publish drops what was already published), then fail tasks that were
   live (pending/running) but whose pod (of that dispatch) is gone, and
   checkpoint the list's resourceVersion.
3. Watch from the checkpoint with bookmarks; publish each event; checkpoint
   the resourceVersion after publishing (so a crash replays, never skips;
   replays are dropped as duplicates). A watch that ends cleanly is renewed;
   410 Gone (expired resourceVersion) goes back to 2.

The watcher trusts only its own pods: a pod is published or deleted only when
its key-prefix annotation is this deployment's (another kubestream, e.g. another
team's, may share the namespace), its name is the pod name of the task key in
its annotations, and its dispatch annotation is the task record's dispatch
(checked atomically by the publish).
Finished pods are deleted per ``delete_worker_pods``/``..._on_failure``;
pods of revoked tasks or of an older dispatch are deleted whenever they are
seen. Every delete carries the event's pod uid as a precondition, so a newer
pod of the same name is never deleted. API calls go through ``kubeapi.PodApi``.

A namespace's watch never dies quietly: Redis and API errors are retried with
backoff; an error that does not go away on its own (401: this process's
credentials are no longer valid, or anything unexpected) is retried
``GIVE_UP_AFTER`` times, then the watcher gives the lease up and ``run``
raises ``WatcherFailed`` (``kubestream watcher`` exits non-zero). A changed
``{p}:epoch`` (Redis lost its data) is logged, counted (``redis_resets_total``)
and relists every namespace.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn

import redis
import urllib3

from kubestream.apierrors import classify_exception
from kubestream.backoff import backoff_delay
from kubestream.health import Heartbeat
from kubestream.keys import Keys
from kubestream.kubeapi import ApiError, Gone, PodApi, PodWatch
from kubestream.luascripts import Script
from kubestream.messages import TaskState, TaskStateChanged
from kubestream.settings import Settings
from kubestream.signing import UNSIGNED_WARNING, Unsigned, signer_for
from kubestream.store import LIVE_STATES, NOT_LEASE_HOLDER, Fence, LiveMember, TaskStore
from kubestream.taskkey import DISPATCH_ANNOTATION, MANAGED_LABEL, TaskKey, key_from_annotations, made_by
from kubestream.text import as_text
from kubestream.watcher.classify import classify_pod
from kubestream.watcher.lease import Lease
from kubestream.watcher.logserve import LogServer
from kubestream.watcher.metrics import WatcherMetrics
from kubestream.watcher.warmlist import WarmList

log = logging.getLogger("kubestream.watcher")
SELECTOR = f"{MANAGED_LABEL}=true"
CHECKPOINT_EVERY = 0.5  # seconds between resourceVersion writes while events flow
GIVE_UP_AFTER = 5  # consecutive errors that do not go away on their own before a namespace's watch gives up
WARM_CATCH_UP_SECONDS = 2.0  # how long a takeover's relist waits for the warm list to catch up before listing


class Deposed(Exception):
    """Redis refused a write made under this process's lease fence: the lease is no longer its own."""


class WatcherFailed(RuntimeError):
    """A namespace's watch could not go on: the watcher gave its lease up and stopped."""


class Term:
    """One tenure as the active watcher: the fence its writes carry; ended when the lease is lost,
    refused, or given up."""

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        self.ended = threading.Event()

    @property
    def active(self) -> bool:
        return not self.ended.is_set()

    def end(self) -> None:
        self.ended.set()


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """Who a task pod says it is: the task key of its annotations and its dispatch annotation."""

    key: TaskKey
    namespace: str
    name: str
    uid: str
    dispatch: str  # "" when the pod has no dispatch annotation


def pod_identity(pod: dict[str, Any]) -> PodIdentity | None:
    """The identity of a task pod, None when its annotations name no task."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    key = key_from_annotations(annotations)
    if key is None:
        return None
    return PodIdentity(key, str(meta.get("namespace") or ""), str(meta.get("name") or ""),
                       str(meta.get("uid") or ""), str(annotations.get(DISPATCH_ANNOTATION) or ""))


def retried_forever(exc: BaseException) -> bool:
    """Errors that go away on their own: Redis or the API unreachable, busy or restarting (429, 5xx, 403
    while its RBAC cache warms up...). Not 401 (this process's credentials are no longer valid: a restart
    reads them again) nor anything unexpected (an answer that cannot be read, a bug)."""
    if isinstance(exc, ApiError):
        return exc.status != HTTPStatus.UNAUTHORIZED
    return isinstance(exc, redis.RedisError | OSError | urllib3.exceptions.HTTPError | http.client.HTTPException)


class Watcher:
    """``api``: an ApiClient (``kubeapi.api_client``); ``pods`` replaces the PodApi built on it."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, api: Any,
                 *, name: str | None = None, pods: PodApi | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.pods = pods if pods is not None else PodApi(api)
        self.keys = Keys(settings.key_prefix, settings.cluster)
        signer = signer_for(settings)  # SigningKeyError (no key, unsigned not allowed) stops the start
        if isinstance(signer, Unsigned):
            log.warning(UNSIGNED_WARNING)
        self.store = TaskStore(redis_client, self.keys, settings, signer)
        self.name = name or settings.member_name()
        self.metrics = WatcherMetrics()
        self.lease = Lease(redis_client, self.keys.watcher_lease, self.name, settings.lease_seconds,
                           fence_key=self.keys.watcher_fence)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None  # why a namespace's watch could not go on
        self._term: Term | None = None
        self._data_epoch: str | None = None
        self._checkpoint = Script(redis_client, "checkpoint.lua")
        self._deleter = ThreadPoolExecutor(8, thread_name_prefix="delete")
        self._watches: list[NamespaceWatch] = []
        self._warm: dict[str, WarmList] = {}  # while standing by: each namespace's pods, kept in memory
        self.heartbeat = Heartbeat(redis_client, self.keys.health("watcher", self.name), settings.health_ttl_seconds,
                                   self.metrics, extra=lambda: {"leader": "1" if self.leading else "0"})
        # pod log requests (get_task_log): served by every watcher process, leading or not
        self.logs = LogServer(settings, redis_client, self.pods, self.store, signer, self.name,
                              metrics=self.metrics)

    @property
    def leading(self) -> bool:
        term = self._term
        return term is not None and term.active

    def stop(self) -> None:
        self.stopping.set()
        term = self._term
        if term is not None:
            term.end()
        for watch in list(self._watches):
            watch.interrupt()

    def run(self) -> None:
        """Hold the lease (or stand by) and watch every namespace until stopped.

        Raises ``WatcherFailed``, after giving the lease up, when a namespace's watch could not go on."""
        self.heartbeat.start()
        self.logs.start()
        try:
            while not self.stopping.is_set():
                term = self.try_lead()
                if term is None:  # standing by: try often, a dead leader's lease is taken soon after it expires
                    self._keep_warm()
                    self.stopping.wait(self.settings.lease_seconds / 6)
                    continue
                self._lead(term)
        finally:
            for warm in self._warm.values():
                warm.stop()
            self.close()
            self._give_up_lease()
            self.logs.stop()
            self.heartbeat.stop()
        if self.failure is not None:
            raise WatcherFailed(f"a namespace's watch could not go on: {self.failure!r}") from self.failure

    def close(self) -> None:
        """Wait for the deletes in flight."""
        self._deleter.shutdown(wait=True)

    def try_lead(self) -> Term | None:
        """Take or renew the lease: the current term while this process holds it, else None. A term whose
        lease was lost (or taken again under a new epoch) ends."""
        try:
            self._check_data_epoch()
            epoch = self.lease.acquire_or_renew()
            if not self._stuck_namespaces():  # health follows this loop and the watches, not the heartbeat thread
                self.heartbeat.progress()
        except redis.RedisError as exc:
            log.warning("lease check failed: %s", exc)
            epoch = 0
        term = self._term
        if term is not None and term.fence.epoch != epoch:
            term.end()
        if epoch and (term is None or not term.active or term.fence.epoch != epoch):
            term = Term(self.lease.fence(epoch))
            self._term = term
        current = term if epoch and term is not None and term.active else None
        self.metrics.lease_holder.set(1 if current is not None else 0)
        return current

    def _keep_warm(self) -> None:
        """While standing by: keep a warm list of each namespace's task pods (started once per standby spell)."""
        for ns in self.settings.namespaces_to_watch():
            if ns not in self._warm:
                self._warm[ns] = WarmList(self.pods, ns, SELECTOR,
                                          watch_timeout_seconds=self.settings.watch_timeout_seconds).start()

    def _lead(self, term: Term) -> None:
        namespaces = self.settings.namespaces_to_watch()
        log.info("leading (lease epoch %d): watching %s", term.fence.epoch, ",".join(namespaces))
        warm, self._warm = self._warm, {}  # each namespace's watch uses and stops its own
        self._watches = [NamespaceWatch(self, ns, term, warm.pop(ns, None)) for ns in namespaces]
        for stale in warm.values():
            stale.stop()
        threads = [threading.Thread(target=w.run, name=f"watch-{w.ns}", daemon=True) for w in self._watches]
        for t in threads:
            t.start()
        if self.stopping.is_set():  # stop() came before this term was the current one
            term.end()
        while not term.ended.wait(self.settings.lease_seconds / 3):
            self.try_lead()  # ends the term when the lease is lost
        if not self.stopping.is_set():
            log.warning("no longer the lease holder (epoch %d); standing by", term.fence.epoch)
        for w in self._watches:
            w.interrupt()
        for t in threads:
            t.join(timeout=self.settings.watch_timeout_seconds + 15)

    def _stuck_namespaces(self) -> list[str]:
        """The namespaces of the current term whose list or watch has been refused or unreachable for longer
        than ``health_ttl_seconds``: while there is one, the main loop counts as making no progress, so the
        health key expires (``--check``, ``/healthz``) instead of staying green while nothing is published."""
        term = self._term
        if term is None or not term.active:
            return []
        stuck = [w.ns for w in self._watches if w.stuck_for() > self.settings.health_ttl_seconds]
        if stuck:
            log.warning("no list or watch answered for over %.0fs in namespace(s) %s: reporting unhealthy",
                        self.settings.health_ttl_seconds, ",".join(stuck))
        return stuck

    def _give_up_lease(self) -> None:
        self.metrics.lease_holder.set(0)
        try:
            if self.lease.release():
                log.info("watcher lease released")
        except redis.RedisError as exc:
            log.warning("could not release the watcher lease (it expires in %.0fs): %s",
                        self.settings.lease_seconds, exc)

    def _current(self, term: Term | None) -> Term:
        term = term if term is not None else self._term
        if term is None or not term.active:
            raise Deposed("not leading")
        return term

    def _deposed(self, term: Term, what: str) -> NoReturn:
        """Redis refused ``what``: another process holds the lease (or this one under a newer epoch)."""
        if term.active:
            self.metrics.deposed.inc()
            log.warning("Redis refused %s: this process no longer holds the watcher lease (epoch %d); "
                        "it stops leading", what, term.fence.epoch)
        term.end()
        raise Deposed(what)

    def fail(self, namespace: str, exc: BaseException) -> None:
        """A namespace's watch cannot go on: stop, give the lease up, and make ``run`` raise."""
        log.critical("the watch of namespace %s cannot go on (%r): giving the lease up and exiting", namespace, exc,
                     exc_info=exc, extra={"namespace": namespace})
        if self.failure is None:
            self.failure = exc
        self.stop()

    def _check_data_epoch(self) -> None:
        """Relist every namespace when Redis lost its data (its ``{p}:epoch`` changed while this process ran)."""
        value = self.store.data_epoch()
        known, self._data_epoch = self._data_epoch, value
        if known is None or value == known:
            return
        self.metrics.redis_resets.inc()
        log.error("Redis lost its data (its data epoch changed from %s to %s): task records, results and "
                  "checkpoints written before are gone; relisting every namespace", known, value)
        for watch in list(self._watches):
            watch.request_relist()

    def checkpoint(self, namespace: str, rv: str, term: Term | None = None) -> None:
        """Record that every event of ``namespace`` up to ``rv`` is published (refused once deposed)."""
        term = self._current(term)
        if not self._checkpoint(checkpoint=self.keys.resource_version(namespace), lease=self.keys.watcher_lease,
                                token=term.fence.token, epoch=str(term.fence.epoch), rv=rv):
            self._deposed(term, "a checkpoint")

    # -- per pod --------------------------------------------------------------------------
    def handle(self, pod: dict[str, Any], event_type: str, term: Term | None = None) -> PodIdentity | None:
        """Publish what one pod event shows and delete the pod if it is done with (finished, revoked, of an
        older dispatch). Returns the pod's identity when it is one of kubestream's task pods, else None.
        Raises ``Deposed`` (nothing written) when this process no longer holds the lease."""
        term = self._current(term)
        pod_id = pod_identity(pod)
        if pod_id is None or not made_by(pod, self.settings.key_prefix):
            return None
        meta = pod.get("metadata") or {}
        ctx = {"task": str(pod_id.key), "pod": pod_id.name, "namespace": pod_id.namespace,
               "rv": meta.get("resourceVersion")}
        if pod_id.name != pod_id.key.pod_name():
            self.metrics.foreign_pods.inc()
            log.warning("ignored a pod whose name is not its task's pod name %s", pod_id.key.pod_name(), extra=ctx)
            return None
        verdict = classify_pod(pod, event_type, self.settings.fatal_container_reasons)
        if verdict is None:
            return pod_id
        state, reason = verdict
        started = time.monotonic()
        result = self.store.publish(TaskStateChanged(key=pod_id.key, state=state, reason=reason,
                                                     pod_name=pod_id.name, namespace=pod_id.namespace,
                                                     at=time.time()),
                                    pod_id.dispatch, fence=term.fence)
        self.metrics.publish_seconds.observe(time.monotonic() - started)
        if result.detail == NOT_LEASE_HOLDER:
            self._deposed(term, "a publish")
        if result.published:
            self.metrics.published.labels(state.value).inc()
            log.info("published %s %s", state.value, reason,
                     extra={**ctx, "entry": result.detail, "owner": result.owner})
        gone = event_type == "DELETED" or meta.get("deletionTimestamp")
        if gone:
            return pod_id
        if result.detail in ("revoked", "stale dispatch") or (state.final and self._should_delete(state)):
            self._deleter.submit(self._delete, term, pod_id, ctx)
        return pod_id

    def publish_vanished(self, namespace: str, seen: set[tuple[str, str]], term: Term | None = None) -> None:
        """Fail tasks published live in ``namespace`` whose pod of that dispatch is not in ``seen``
        (``(pod name, dispatch)`` of the current list). The failure goes to the dispatch the live set names:
        it is dropped if the task was dispatched again since."""
        term = self._current(term)
        for member in self.store.live_members():
            if member.namespace != namespace or (member.pod, member.dispatch) in seen:
                continue
            rec = self.store.record(member.pod)
            dispatch = member.dispatch
            if dispatch is None:  # a member written before members named their dispatch
                dispatch = rec.get("dispatch", "") if rec.get("state") in LIVE_STATES else None
            key = _record_key(rec)
            if key is None or dispatch is None or (member.pod, dispatch) in seen:
                self._remove_live(member, term)
                continue
            result = self.store.publish(TaskStateChanged(
                key=key, state=TaskState.FAILED, reason=f"pod deleted while {rec.get('state') or 'pending'}",
                pod_name=member.pod, namespace=namespace, at=time.time()), dispatch, fence=term.fence)
            if result.detail == NOT_LEASE_HOLDER:
                self._deposed(term, "a publish")
            if member.dispatch is None:
                self._remove_live(member, term)  # the publish removes members of the current form only
            if result.published:
                self.metrics.published.labels(TaskState.FAILED.value).inc()
                self.metrics.vanished.inc()
                log.warning("pod vanished while the watcher was away", extra={"task": str(key), "pod": member.pod})
            else:
                log.info("vanished live pod not reported: %s", result.detail,
                         extra={"task": str(key), "pod": member.pod, "dispatch": dispatch})

    def _remove_live(self, member: LiveMember, term: Term) -> None:
        if not self.store.remove_live(member, term.fence):
            self._deposed(term, "a live set change")

    def _should_delete(self, state: TaskState) -> bool:
        if not self.settings.delete_worker_pods:
            return False
        return state is TaskState.SUCCEEDED or self.settings.delete_worker_pods_on_failure

    def _delete(self, term: Term, pod: PodIdentity, ctx: dict[str, Any]) -> None:
        """Delete the pod the event was about: the uid precondition spares a newer pod of the same name."""
        if not pod.uid:
            log.warning("pod not deleted: it has no uid to make the delete conditional on", extra=ctx)
            return
        if not term.active:
            log.info("pod not deleted: no longer the lease holder", extra=ctx)
            return
        try:
            if self.pods.delete(pod.namespace, pod.name, uid=pod.uid):
                self.metrics.deletes.labels("deleted").inc()
        except ApiError as exc:
            if exc.status == 409:
                self.metrics.deletes.labels("replaced").inc()
                log.info("pod not deleted: it was replaced by another pod of the same name", extra=ctx)
            else:
                self.metrics.deletes.labels("error").inc()
                log.warning("pod delete failed: %s", exc, extra=ctx)
        except Exception as exc:  # noqa: BLE001 - connection errors: the next relist deletes it again
            self.metrics.deletes.labels("error").inc()
            log.warning("pod delete failed: %s", exc, extra=ctx)


def _record_key(rec: dict[str, str]) -> TaskKey | None:
    """The task key a task record holds, None for a record that is gone (or unreadable)."""
    try:
        return TaskKey(rec["dag_id"], rec["task_id"], rec["run_id"], int(rec["try_number"]), int(rec["map_index"]))
    except (KeyError, ValueError):
        return None


class NamespaceWatch:
    def __init__(self, watcher: Watcher, namespace: str, term: Term, warm: WarmList | None = None) -> None:
        self.w, self.ns, self.term = watcher, namespace, term
        self._warm = warm  # the standby's warm list, until the first relist or the first event
        self.rv_key = watcher.keys.resource_version(namespace)
        self._last_checkpoint = 0.0
        self._last_answered = time.monotonic()  # the last list or watch the API answered (stuck_for)
        self._watch: PodWatch | None = None
        self._relist = threading.Event()

    def interrupt(self) -> None:
        """Unblock a watch waiting for the next event (stop, lost lease, relist)."""
        watch = self._watch
        if watch is not None:
            watch.interrupt()

    def request_relist(self) -> None:
        """Relist as soon as possible (e.g. Redis lost its data)."""
        self._relist.set()
        self.interrupt()

    def _stopped(self) -> bool:
        return not self.term.active or self.w.stopping.is_set()

    def run(self) -> None:
        """Watch the namespace until the term ends. Never dies quietly: an error that cannot be retried
        stops the watcher (``Watcher.fail``)."""
        try:
            self._run()
        except Deposed:
            pass  # the term has ended: Watcher._lead stands by
        except BaseException as exc:  # noqa: BLE001 - whatever ends this thread must stop the watcher
            self.w.fail(self.ns, exc)
        finally:
            self._drop_warm()

    def _drop_warm(self) -> None:
        warm, self._warm = self._warm, None
        if warm is not None:
            warm.stop()

    def stuck_for(self) -> float:
        """Seconds this namespace has gone without a list or watch the API answered (0 while a watch is
        open): a watch refused for ever (403 after an RBAC change, a CA no longer trusted) publishes nothing."""
        watch = self._watch
        if watch is not None and watch.opened:
            return 0.0
        return time.monotonic() - self._last_answered

    def _run(self) -> None:
        rv: str | None = None  # None: the checkpoint is not read yet
        failures = stubborn = 0
        while not self._stopped():
            try:
                if self._relist.is_set():
                    self._relist.clear()
                    rv = ""
                if rv is None:
                    rv = as_text(self.w.redis.get(self.rv_key))
                if not rv:
                    rv = self.relist()
                    self._last_answered = time.monotonic()
                rv = self.watch(rv)
                failures = stubborn = 0
                self.w.metrics.watch_restarts.inc()
            except Gone:
                self._last_answered = time.monotonic()
                log.info("resourceVersion %s expired (410): relisting", rv, extra={"namespace": self.ns})
                self.w.metrics.watch_expired.inc()
                self.w.metrics.watch_restarts.inc()
                rv = ""
            except Deposed:
                raise
            except Exception as exc:
                # Redis or the API unreachable, 429, 5xx, a watch ERROR event: back off, keep the checkpoint
                if not retried_forever(exc):
                    stubborn += 1
                    if stubborn >= GIVE_UP_AFTER:
                        raise
                outcome = classify_exception(exc)
                delay = max(outcome.retry_after or 0.0, backoff_delay(failures, base=0.2, cap=5.0))
                failures += 1
                self.w.metrics.watch_errors.inc()
                self.w.metrics.watch_restarts.inc()
                log.warning("watch error (%s), retrying in %.1fs", outcome.message or exc, delay,
                            extra={"namespace": self.ns})
                self.term.ended.wait(delay)

    def relist(self) -> str:
        seen: set[tuple[str, str]] = set()
        warm = self._from_warm()
        if warm is not None:
            pods, rv = warm
            for pod in pods:
                self._relisted(pod, seen)
        else:
            cont = ""
            while True:
                page = self.w.pods.list(self.ns, label_selector=SELECTOR, limit=500, continue_token=cont)
                for pod in page.items:
                    self._relisted(pod, seen)
                cont = page.continue_token
                if not cont:
                    break
            rv = page.resource_version
        self.w.publish_vanished(self.ns, seen, self.term)
        self.checkpoint(rv, force=True)
        self.w.metrics.relists.labels("warm" if warm is not None else "api").inc()
        return rv

    def _relisted(self, pod: dict[str, Any], seen: set[tuple[str, str]]) -> None:
        pod_id = self.w.handle(pod, "ADDED", self.term)
        if pod_id is not None:
            seen.add((pod_id.name, pod_id.dispatch))

    def _from_warm(self) -> tuple[list[dict[str, Any]], str] | None:
        """The warm list's pods and resourceVersion once it has caught up with the apiserver's current
        resourceVersion (one ``limit=1`` list); None (list from the apiserver) without one, or if it lags."""
        warm = self._warm
        if warm is None:
            return None
        self._drop_warm()
        current = self.w.pods.list(self.ns, label_selector=SELECTOR, limit=1).resource_version
        got = warm.caught_up(current, WARM_CATCH_UP_SECONDS)
        if got is None:
            log.info("warm list behind resourceVersion %s: relisting from the apiserver", current,
                     extra={"namespace": self.ns})
        return got

    def watch(self, rv: str) -> str:
        """Publish the events after ``rv`` until the watch ends; returns the last resourceVersion seen.
        Raises ``Gone`` when ``rv`` expired."""
        watch = self.w.pods.watch(self.ns, rv, label_selector=SELECTOR,
                                  timeout_seconds=self.w.settings.watch_timeout_seconds)
        self._watch = watch
        if self._stopped() or self._relist.is_set():
            watch.interrupt()
        try:
            for event in watch:
                if self._stopped():
                    break
                self._drop_warm()  # the watch resumed: the warm list is of no more use this term
                etype, obj = event.get("type", ""), event.get("object") or {}
                if etype != "BOOKMARK":
                    self.w.handle(obj, etype, self.term)
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                self.checkpoint(rv, force=etype == "BOOKMARK")
        finally:
            self._watch = None
            if watch.opened:
                self._last_answered = time.monotonic()
        self.checkpoint(rv, force=True)  # every event up to rv is published
        return rv

    def checkpoint(self, rv: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_checkpoint >= CHECKPOINT_EVERY:
            self.w.checkpoint(self.ns, rv, self.term)
            self._last_checkpoint = now
