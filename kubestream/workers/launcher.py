"""The launcher: consume launch streams, create pods, never lose or duplicate one.

One consumer group (``launchers``) per queue stream; this process is one
consumer. Reliability rules (docs/architecture.md has the full story):

- entries are read in batches (up to twice ``launch_concurrency`` in hand),
  their dispatch checks (revoked? superseded? already finished?) looked up per batch;
- an entry is acknowledged (and deleted) only once its outcome is settled:
  pod created, 409 AlreadyExists (a redelivery: success), a permanent API
  error or bad input (failed result published in the same Lua call); an acker
  thread acknowledges settled entries in batches (a crash before that means a
  redelivery, which meets 409);
- a thread keeps the launcher's liveness key (``{p}:alive:launcher:<name>``,
  ``liveness_seconds``) alive; a launcher that dies loses it, and the others
  claim all its pending entries at once (``claim_dead``, checked every third of
  ``liveness_seconds``). On start the consumer first re-handles its own pending
  entries (a restart with the same name), and it periodically reclaims (XCLAIM)
  entries idle longer than ``reclaim_idle_seconds``: those of launchers alive
  but stuck and its own that it left for redelivery (never one it has in hand);
- a launch delivered more than ``max_deliveries`` times is settled by its pod:
  a pod of its dispatch exists = launched (acknowledged); none = dead-lettered
  with a failed result; the lookup failed = left pending;
- transient API errors are retried with jittered backoff within
  ``retry_budget_seconds`` from the entry's read, then left pending for
  redelivery: each request's timeout and the rate limiter's wait end at the
  budget's deadline (a request gets at least ``REQUEST_FLOOR_SECONDS``), so an
  entry is settled or released before another launcher may reclaim it;
- 409 on a pod of an earlier dispatch: a finished one (Succeeded/Failed, kept
  by ``delete_worker_pods=False`` or a failed delete) is deleted (uid
  precondition) and the pod created; a live one is waited for; a launch whose
  dispatch was superseded meanwhile is skipped;
- revoked tasks are skipped; RevokeTask deletes the pod of the revoked
  dispatch (uid precondition: never a newer pod of the same name);
- SIGTERM: stop reading, let in-flight creates finish (no new retries), exit;
  what is not settled stays pending for the other launchers.

API calls go through ``kubeapi.PodApi`` (plain dicts); tests inject an in-memory one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from kubestream.apierrors import Outcome, classify_exception
from kubestream.backoff import backoff_delay
from kubestream.health import Heartbeat, Liveness
from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.kubeapi import REQUEST_TIMEOUT, ApiError, Pod, PodApi, Timeout
from kubestream.messages import DecodeError, LaunchTask, Message, RevokeTask, decode, message_digest
from kubestream.ratelimit import RateLimiter
from kubestream.settings import Settings
from kubestream.signing import UNSIGNED_WARNING, SignatureError, Unsigned, signer_for
from kubestream.store import TaskStore, failed
from kubestream.taskkey import DISPATCH_ANNOTATION
from kubestream.text import as_text
from kubestream.workers.consumer import Entry, StreamConsumer
from kubestream.workers.metrics import RATE_LIMIT_WAIT_THRESHOLD_SECONDS, LauncherMetrics
from kubestream.workers.podpolicy import PolicyViolation, apply_policy, describe, enforce
from kubestream.workers.podspec import PodSpecError, build_pod, load_template_yaml
from kubestream.workers.policyload import load_pod_policy
from kubestream.workload import token_expiry

log = logging.getLogger("kubestream.launcher")

REQUEST_FLOOR_SECONDS = 1.0  # no API request gets less time to answer, even at its budget's very end
FINISHED_PHASES = ("Succeeded", "Failed")
STREAM_STATS_INTERVAL_SECONDS = 5.0  # how often the launch streams' lag and pending counts are read
ACK_LINGER_SECONDS = 0.005  # how long settled entries may wait for more to join their acknowledgement


def ack_now(settled: int, in_flight: int, *, batch: int, stopping: bool = False) -> bool:
    """Whether the acker acknowledges the ``settled`` entries now rather than lingering (at most
    ``ACK_LINGER_SECONDS``) for the creates still ``in_flight`` to settle into the same round trip:
    once ``batch`` are settled, when nothing else is in flight, or when the launcher stops."""
    return settled > 0 and (stopping or in_flight == 0 or settled >= batch)


@dataclass(slots=True)
class Work:
    """A launch entry, decoded, with the verdict looked up for its whole batch."""

    entry: Entry
    message: Message | None
    error: DecodeError | None = None
    verdict: str = ""
    namespace: str = ""  # the task record's: where the scheduler expects the pod ('' = not recorded)
    refused: str = ""  # why the entry is not trusted (signature, size): dead-lettered, never acted on
    pod_name: str = ""  # the message's, worked out once (a hash of its key)


class _OlderPodExists(Exception):
    """409: the pod name is taken by a live pod of an earlier (revoked) dispatch of the same key."""


class _ForeignPod(Exception):
    """409: the pod name is taken by a pod no kubestream launch made (it names no dispatch); never ours to
    delete, never taken for this launch's pod: the task fails with this reason."""

    MESSAGE = "the pod name is held by a pod kubestream did not launch (no dispatch annotation)"


class _PodVanished(Exception):
    """409, then no pod at all: the pod holding the name was deleted meanwhile; create again."""


class _Superseded(Exception):
    """The task record names another dispatch by now: this launch must not go ahead."""


class _BudgetSpent(Exception):
    """The retry budget's deadline passed before a request could be sent."""


def _dispatch_of(pod: Pod | None) -> str:
    return str(((pod or {}).get("metadata", {}).get("annotations") or {}).get(DISPATCH_ANNOTATION, ""))


class Launcher:
    """``api``: an ApiClient (``kubeapi.api_client``); ``pods`` replaces the PodApi built on it."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, api: Any,
                 *, name: str | None = None, pods: PodApi | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.pods = pods if pods is not None else PodApi(api)
        self.keys = Keys(settings.key_prefix, settings.cluster)
        self.signer = signer_for(settings)  # SigningKeyError (no key, unsigned not allowed) stops the start
        if isinstance(self.signer, Unsigned):
            log.warning(UNSIGNED_WARNING)
        self.store = TaskStore(redis_client, self.keys, settings, self.signer)
        self.name = name or settings.member_name()
        self.consumer = StreamConsumer(redis_client, settings.launch_streams(self.keys, settings.queues), self.name,
                                       min_idle_ms=int(settings.reclaim_idle_seconds * 1000),
                                       alive_key=lambda name: self.keys.alive("launcher", name),
                                       liveness_ms=int(settings.liveness_seconds * 1000))
        self.liveness = Liveness(redis_client, self.keys.alive("launcher", self.name), settings.liveness_seconds)
        self.metrics = LauncherMetrics()
        self._resets_seen = 0
        self._stream_stats_at = 0.0
        self.limiter = RateLimiter(redis_client, self.keys.rate_limit, settings.create_rate, settings.create_burst)
        self.template = (load_template_yaml(Path(settings.pod_template_file).read_text())
                         if settings.pod_template_file else None)
        self.policy = load_pod_policy(settings)  # the operator's overlay file is read once, here
        log.info(describe(self.policy))
        self.stopping = threading.Event()
        self._pool = ThreadPoolExecutor(settings.launch_concurrency, thread_name_prefix="create")
        self._inflight: dict[Future[None], str] = {}  # each create thread's work -> its entry id
        self._settled: list[Entry] = []
        self._acking: list[Entry] = []  # the batch the acker is acknowledging
        self._own_pending_left = True  # entries delivered to this name before this process started
        self._acker_stop = False
        self._acker = threading.Thread(target=self._ack_loop, name="acker", daemon=True)
        # one lock, two conditions: each waiter is woken only when what it waits for may have come true
        # (a create settles or ends per pod: waking both waiters at each would cost CPU at every create)
        self._lock = threading.RLock()
        self._room_freed = threading.Condition(self._lock)  # the reader waits for room for a batch
        self._ackable = threading.Condition(self._lock)  # the acker waits for entries to acknowledge
        self.heartbeat = Heartbeat(redis_client, self.keys.health("launcher", self.name), settings.health_ttl_seconds,
                                   self.metrics, extra=lambda: {"queues": ",".join(settings.queues)})

    # -- loop --------------------------------------------------------------------------------
    def run(self, *, until_idle: bool = False, max_seconds: float | None = None) -> None:
        """Serve until ``stop()``; ``until_idle`` returns once nothing is pending or new (tests, burst)."""
        self.liveness.start()  # before reading: from now on nobody claims this name's entries
        self.consumer.ensure_groups()
        self.heartbeat.start()
        self._acker.start()
        threading.Thread(target=self._open_connections, name="connect", daemon=True).start()
        started = time.monotonic()
        last_reclaim = last_claim = 0.0
        outage = 0
        try:
            while not self.stopping.is_set():
                try:
                    now = time.monotonic()
                    if not self._own_pending_left:  # own pending entries first (a reclaim would claim them too)
                        if now - last_claim > self.settings.liveness_seconds / 3:
                            self._submit(self._claim_dead())
                            last_claim = now
                        if now - last_reclaim > min(5.0, self.settings.reclaim_idle_seconds / 2):
                            self._submit(self._reclaim())
                            last_reclaim = now
                    got = self._submit(self._read_new())
                    if until_idle and not got and self._idle():
                        break
                    outage = 0
                    self.heartbeat.progress()  # health follows this loop, not the heartbeat thread
                    self._observe_streams()
                except redis.RedisError as exc:  # ride out a Redis outage; nothing is lost meanwhile
                    delay = backoff_delay(outage, base=0.5, cap=10.0)
                    outage += 1
                    self.metrics.redis_errors.inc()
                    log.warning("Redis error (%s), retrying in %.1fs", exc, delay)
                    self.stopping.wait(delay)
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
        finally:
            self._drain()
            self.heartbeat.stop()
            self.liveness.stop()  # what is still pending here is claimed by the others at once

    def stop(self) -> None:
        self.stopping.set()

    def _open_connections(self) -> None:
        """Open the API connections the creates will use while the first entries are read: each TLS handshake
        is a round trip or two that a first create would otherwise wait for (+400 ms at 200 ms of latency)."""
        try:
            opened = self.pods.open_connections(self.settings.launch_concurrency)
        except Exception as exc:  # noqa: BLE001 - the creates open what they need themselves
            log.warning("could not open API connections ahead of the creates: %s", exc)
            return
        log.info("opened %d API connections ahead of the creates", opened)

    def _idle(self) -> bool:
        with self._lock:
            if self._inflight or self._settled:
                return False
        return self.consumer.nothing_pending()

    def _drain(self) -> None:
        with self._lock:
            pending = list(self._inflight)
        for fut in pending:
            fut.result()
        self._pool.shutdown(wait=True)
        with self._lock:
            self._acker_stop = True
            self._ackable.notify()
        self._acker.join(timeout=30)

    def _ack(self, entry: Entry) -> None:
        """Mark an entry settled; the acker thread acknowledges settled entries in batches."""
        with self._lock:
            self._settled.append(entry)
            if len(self._settled) == 1 or self._ack_due():
                self._ackable.notify()

    def _ack_due(self) -> bool:
        """``ack_now`` for what is settled and in flight now (the lock held)."""
        return ack_now(len(self._settled), len(self._inflight), batch=self.settings.launch_concurrency,
                       stopping=self._acker_stop)

    def settled(self) -> list[Entry]:
        """The entries settled and not acknowledged yet."""
        with self._lock:
            return list(self._settled)

    def _ack_loop(self) -> None:
        """Acknowledge settled entries in batches: one MULTI for what settled meanwhile, lingering up to
        ``ACK_LINGER_SECONDS`` for the creates in flight (``ack_now``)."""
        failures = 0
        while True:
            with self._lock:
                self._ackable.wait_for(lambda: self._settled or self._acker_stop, timeout=1.0)
                if self._settled:  # one round trip per batch, not per create: creates settle one by one
                    self._ackable.wait_for(self._ack_due, timeout=ACK_LINGER_SECONDS)
                batch, self._settled = self._settled, []
                self._acking = batch
                if not batch and self._acker_stop:
                    return
            try:
                self.consumer.ack(batch)
                failures = 0
                with self._lock:
                    self._acking = []
            except redis.RedisError as exc:  # unacknowledged entries are redelivered and meet 409
                with self._lock:
                    self._acking = []
                    self._settled[:0] = batch
                    if self._acker_stop and failures >= 3:
                        log.warning("could not acknowledge %d settled entries on exit: %s", len(batch), exc)
                        return
                failures += 1
                time.sleep(backoff_delay(failures, base=0.2, cap=5.0))

    # -- reading -----------------------------------------------------------------------------
    def _read_new(self) -> list[Entry]:
        """Read in batches: once no more than ``launch_concurrency`` entries are in hand, read up to
        as many again, so the create threads always have work queued and every read, dispatch
        check and acknowledgement covers a batch. This consumer's own pending entries (a restart
        with the same name) come first, in batches too: each entry's budget starts at its read."""
        concurrency = self.settings.launch_concurrency
        with self._lock:
            if not self._room_freed.wait_for(lambda: len(self._inflight) <= concurrency,
                                             timeout=self.settings.block_ms / 1000):
                return []
            free = 2 * concurrency - len(self._inflight)
        if self._own_pending_left:
            own = self.consumer.own_pending(free)
            if own:
                return own
            self._own_pending_left = False
        return self.consumer.read_new(free, self.settings.block_ms)

    def _in_hand(self) -> set[str]:
        """``"<stream>/<entry id>"`` of the entries this process holds: queued for or in a create thread,
        or settled and not acknowledged yet."""
        with self._lock:
            return {*self._inflight.values(), *(f"{e.stream}/{e.entry_id}" for e in (*self._settled, *self._acking))}

    def _room(self) -> int:
        """How many more entries this process can take in hand now."""
        with self._lock:
            return 2 * self.settings.launch_concurrency - len(self._inflight)

    def _claim_dead(self) -> list[Entry]:
        claimed = self.consumer.claim_dead(count=max(self._room(), 0))
        self.metrics.reclaimed.labels("dead").inc(len(claimed))
        return claimed

    def _reclaim(self) -> list[Entry]:
        free = self._room()
        if free <= 0:
            return []
        claimed = self.consumer.reclaim(self._in_hand(), count=free)
        self.metrics.reclaimed.labels("idle").inc(len(claimed))
        return claimed

    def _submit(self, entries: list[Entry]) -> int:
        for work in self.prepare(entries):
            fut = self._pool.submit(self._handle_safely, work)
            with self._lock:
                self._inflight[fut] = f"{work.entry.stream}/{work.entry.entry_id}"
            fut.add_done_callback(self._done)
        self.metrics.in_flight.set(len(self._inflight))
        return len(entries)

    def _done(self, fut: Future[None]) -> None:
        with self._lock:
            self._inflight.pop(fut, None)
            if len(self._inflight) <= self.settings.launch_concurrency:
                self._room_freed.notify()
            if self._settled and self._ack_due():
                self._ackable.notify()

    def prepare(self, entries: list[Entry]) -> list[Work]:
        """Decode a batch and look up, per batch, whether each launch may go ahead."""
        works = []
        for entry in entries:
            try:
                self.signer.verify(entry.stream, entry.fields)
            except SignatureError as exc:
                works.append(Work(entry, None, refused=f"signature: {exc}"))
                continue
            if len(entry.raw) > self.settings.max_message_bytes:
                works.append(Work(entry, None, refused=f"size: {len(entry.raw)} bytes, over max_message_bytes="
                                                       f"{self.settings.max_message_bytes}"))
                continue
            try:
                message = decode(entry.raw)
            except DecodeError as exc:
                works.append(Work(entry, None, exc))
                continue
            works.append(Work(entry, message, pod_name=message.key.pod_name()))
        launches = [w for w in works if isinstance(w.message, LaunchTask)]
        verdicts = self.store.launch_verdicts([(w.pod_name, w.message.external_executor_id) for w in launches
                                   if isinstance(w.message, LaunchTask)])
        for work, (verdict, namespace) in zip(launches, verdicts, strict=True):
            work.verdict, work.namespace = verdict, namespace
        return works

    # -- handling ----------------------------------------------------------------------------
    def _handle_safely(self, work: Work) -> None:
        try:
            self.handle(work)
        except Exception:  # never kill the worker thread; the entry stays pending for redelivery
            self.metrics.errors.inc()
            log.exception("unexpected error handling launch entry", extra={"entry": work.entry.entry_id})

    def _refuse(self, work: Work, ctx: dict[str, str]) -> None:
        """An entry that cannot be trusted is dead-lettered (secrets redacted) and never acted on. Its task is
        failed only when its record proves the entry is the executor's own (the record keeps the digest of
        the launch it wrote and the id of its entry: e.g. the scheduler signs with a key the launchers do not
        have); a forgery, or a copy of the message under another entry id, fails nothing."""
        entry = work.entry
        event, dispatch = None, ""
        try:
            message = decode(entry.raw)
        except DecodeError:
            message = None
        if isinstance(message, LaunchTask | RevokeTask):
            record = self.store.record(message.pod_name)
            ours = record.get("digest") == message_digest(entry.raw)
            # a record written before records kept their entry id has none: its digest decides
            if ours and record.get("entry", entry.entry_id) == entry.entry_id:
                event = failed(message.key, f"launch message refused: {work.refused}")
                dispatch = message.external_executor_id
        self.store.fail_launch(entry.stream, entry.entry_id, event, dead_reason=work.refused, raw=entry.raw,
                               dispatch=dispatch)
        reason = work.refused.split(":", 1)[0]
        self.metrics.refused_messages.labels(reason).inc()
        self.metrics.dead_letters.labels(reason).inc()
        log.error("dead-lettered an untrusted entry (%s)%s", work.refused,
                  "; its task failed: the record proves it was ours" if event else "; no task failed", extra=ctx)

    def handle(self, work: Work) -> None:
        entry, message = work.entry, work.message
        ctx = {"stream": entry.stream, "entry": entry.entry_id}
        # the budget runs from the entry's read, as its idle time in the group does
        deadline = entry.read_at + self.settings.retry_budget_seconds
        if work.refused:
            self._refuse(work, ctx)
            return
        if work.error is not None or message is None:
            exc = work.error
            key = exc.key() if exc is not None else None
            event = failed(key, f"bad launch message: {exc}") if key else None
            dispatch = exc.partial.get("external_executor_id") if exc is not None else None
            self.store.fail_launch(entry.stream, entry.entry_id, event, dead_reason=f"decode: {exc}", raw=entry.raw,
                                   dispatch=dispatch if isinstance(dispatch, str) else "")
            self.metrics.dead_letters.labels("decode").inc()
            log.error("dead-lettered undecodable entry: %s", exc, extra=ctx)
            return
        ctx.update(task=str(message.key), pod=work.pod_name or message.key.pod_name())
        if isinstance(message, LaunchTask):
            self._launch(message, entry, ctx, work.verdict, deadline, work.pod_name, work.namespace)
        elif isinstance(message, RevokeTask):
            if entry.deliveries > self.settings.max_deliveries:
                reason = f"revoke gave up after {entry.deliveries - 1} deliveries"
                self.store.fail_launch(entry.stream, entry.entry_id, failed(message.key, reason),
                                       dead_reason=reason, raw=entry.raw, dispatch=message.external_executor_id)
                self.metrics.dead_letters.labels("revoke_gave_up").inc()
                log.error("dead-lettered: %s", reason, extra=ctx)
                return
            self._revoke(message, entry, deadline)
        else:
            self.store.fail_launch(entry.stream, entry.entry_id, None,
                                   dead_reason=f"unexpected {type(message).__name__} on a launch stream", raw=entry.raw)
            self.metrics.dead_letters.labels("unexpected_message").inc()

    def _launch(self, msg: LaunchTask, entry: Entry, ctx: dict[str, str], verdict: str, deadline: float,
                pod_name: str = "", expected_namespace: str = "") -> None:
        if verdict:
            self._ack(entry)
            self.metrics.messages.labels("skipped").inc()
            log.info("skipped launch: %s", verdict, extra=ctx)
            return
        expiry = token_expiry(msg.workload_json)
        if expiry is not None and expiry < time.time():
            # The pod would be refused at /run. The task stays QUEUED: Airflow's task_queued_timeout
            # (the token's lifetime) revokes and requeues it with a fresh token.
            self._ack(entry)
            self.metrics.messages.labels("skipped_expired_token").inc()
            log.warning("skipped launch: workload token expired %.0fs ago; Airflow will requeue the task",
                        time.time() - expiry, extra=ctx)
            return
        # the queue (hence its namespace) comes from the stream the entry was read from; a pod_override may
        # choose another namespace only among this launcher's allowed_namespaces
        try:
            namespace = self.settings.namespace_for_launch(self.keys.queue_of(entry.stream), msg.requested_namespace)
        except ValueError as exc:  # refused, not a poison message: failed, not dead-lettered
            self.store.fail_launch(entry.stream, entry.entry_id, failed(msg.key, str(exc)),
                                   dispatch=msg.external_executor_id)
            self.metrics.messages.labels("namespace_refused").inc()
            log.error("launch refused: %s", exc, extra=ctx)
            return
        try:
            pod = build_pod(key=msg.key, namespace=namespace, image=self.settings.worker_image,
                            workload_json=msg.workload_json, scheduler_id=msg.scheduler_id,
                            template=msg.pod_template or self.template, pod_override=msg.pod_override,
                            key_prefix=self.settings.key_prefix, pod_mutation=msg.pod_mutation, pod_name=pod_name)
        except PodSpecError as exc:
            self.store.fail_launch(entry.stream, entry.entry_id, failed(msg.key, f"invalid pod spec: {exc}"),
                                   dead_reason=f"pod spec: {exc}", raw=entry.raw, dispatch=msg.external_executor_id)
            self.metrics.dead_letters.labels("pod_spec").inc()
            log.error("dead-lettered invalid pod spec: %s", exc, extra=ctx)
            return
        try:
            if self.policy.overlay:
                pod = apply_policy(pod, self.policy, namespace=namespace)
            else:  # build_pod's pod is this call's own: checked as it is, no copy
                enforce(pod, self.policy, namespace=namespace)
        except PolicyViolation as exc:  # a refused pod, not a poison message: failed, not dead-lettered
            self.store.fail_launch(entry.stream, entry.entry_id,
                                   failed(msg.key, f"pod refused by pod_policy: {exc}", namespace),
                                   dispatch=msg.external_executor_id)
            self.metrics.messages.labels("policy_refused").inc()
            log.error("pod refused by pod_policy: %s", exc, extra=ctx)
            return
        namespace = pod["metadata"].get("namespace") or namespace
        if expected_namespace and namespace != expected_namespace:
            # the watcher publishes only what a pod in the record's namespace says (a look-alike pod elsewhere
            # must not speak for the task): a pod created here would never be heard of
            reason = (f"this launcher would create the pod in namespace {namespace!r} but the scheduler recorded "
                      f"{expected_namespace!r}: their namespace, queue_namespaces or allowed_namespaces differ")
            self.store.fail_launch(entry.stream, entry.entry_id, failed(msg.key, reason),
                                   dispatch=msg.external_executor_id)
            self.metrics.messages.labels("namespace_refused").inc()
            log.error("launch refused: %s", reason, extra=ctx)
            return
        if msg.external_executor_id:
            pod["metadata"]["annotations"][DISPATCH_ANNOTATION] = msg.external_executor_id
        if entry.deliveries > self.settings.max_deliveries:
            self._give_up(msg, entry, ctx, namespace, deadline)
            return
        started, status = time.monotonic(), [""]
        try:
            outcome = self._retrying(lambda: self._create(namespace, pod, msg.external_executor_id, deadline), ctx,
                                     deadline, rate_limited=True, status=status,
                                     last_delivery=entry.deliveries >= self.settings.max_deliveries)
        except _Superseded as exc:
            self._ack(entry)
            self.metrics.messages.labels("skipped").inc()
            log.info("skipped launch: %s", exc, extra=ctx)
            return
        if outcome is None:
            return  # stopping or retry budget spent: left pending for redelivery
        self.metrics.create_seconds.observe(time.monotonic() - started)
        if outcome.kind in ("created", "exists"):
            self._ack(entry)
            if outcome.kind == "created":
                self.metrics.creates.labels("created", "201").inc()
            else:
                self.metrics.creates.labels("already_exists", "409").inc()
            log.info("pod %s", outcome.kind, extra=ctx)
        else:
            self.store.fail_launch(entry.stream, entry.entry_id, failed(msg.key, outcome.message, namespace),
                                   dispatch=msg.external_executor_id)
            self.metrics.creates.labels("failed", status[0]).inc()
            log.error("pod create failed permanently: %s", outcome.message, extra=ctx)

    def _give_up(self, msg: LaunchTask, entry: Entry, ctx: dict[str, str], namespace: str, deadline: float) -> None:
        """A launch delivered more than ``max_deliveries`` times: its pod decides. A pod of its dispatch means
        an earlier delivery launched it (its acknowledgement was lost): acknowledged. No pod of its dispatch:
        the task fails and the entry is dead-lettered. The lookup failed: left pending, looked up again at the
        next delivery (a launch that stays unverified is superseded once Airflow requeues its task)."""
        found: list[Pod | None] = []
        outcome = self._retrying(lambda: found.append(self.pods.get(namespace, msg.pod_name,
                                                                    timeout=self._timeout(deadline))), ctx, deadline)
        if outcome is None or outcome.kind != "created" or not found:
            self.metrics.messages.labels("give_up_unverified").inc()
            log.warning("launch past %d deliveries left pending: its pod could not be looked up%s",
                        self.settings.max_deliveries, f" ({outcome.message})" if outcome else "", extra=ctx)
            return
        pod, dispatch = found[-1], msg.external_executor_id
        theirs = _dispatch_of(pod)
        if pod is not None and (not dispatch or theirs == dispatch):
            self._ack(entry)
            self.metrics.creates.labels("already_exists", "200").inc()
            log.info("launch past %d deliveries: its pod exists, launched", self.settings.max_deliveries, extra=ctx)
            return
        reason = f"launch gave up after {entry.deliveries - 1} deliveries"
        if pod is not None:
            held = f"the pod name is held by a pod of dispatch {theirs}" if theirs else _ForeignPod.MESSAGE
            reason += f" ({held})"
        self.store.fail_launch(entry.stream, entry.entry_id, failed(msg.key, reason, namespace),
                               dead_reason=reason, raw=entry.raw, dispatch=dispatch)
        self.metrics.dead_letters.labels("gave_up").inc()
        log.error("dead-lettered: %s", reason, extra=ctx)

    def _timeout(self, deadline: float) -> Timeout:
        """The (connect, read) timeout of one request: what is left of the budget (at least
        ``REQUEST_FLOOR_SECONDS``), never more than the client's own; ``_BudgetSpent`` once it is over."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _BudgetSpent("retry budget spent")
        seconds = max(REQUEST_FLOOR_SECONDS, left)
        return min(REQUEST_TIMEOUT[0], seconds), min(REQUEST_TIMEOUT[1], seconds)

    def _create(self, namespace: str, pod: dict[str, Any], dispatch: str, deadline: float) -> None:
        """Create the pod. A 409 is success when the pod there is this dispatch's; ``_ForeignPod`` when it names
        no dispatch (anyone who may create pods there can take a predictable name). A pod of another dispatch:
        if this launch was superseded meanwhile, ``_Superseded``; if that pod finished, delete it (uid
        precondition: never a pod that replaced it) and create this one; else ``_OlderPodExists`` (retried
        until that pod is gone)."""
        name = pod["metadata"]["name"]
        try:
            self.pods.create_unread(namespace, pod, timeout=self._timeout(deadline))
            return
        except ApiError as exc:
            if exc.status != 409 or not dispatch:
                raise
            conflict = exc
        existing = self.pods.get(namespace, name, timeout=self._timeout(deadline))
        if existing is None:
            raise _PodVanished("the pod holding the name was deleted meanwhile") from None
        theirs = _dispatch_of(existing)
        if theirs == dispatch:
            raise conflict  # this dispatch's pod: an earlier delivery created it
        if not theirs:
            raise _ForeignPod(_ForeignPod.MESSAGE)
        current = self.redis.hget(self.keys.task(name), "dispatch")
        if current is not None and as_text(current) != dispatch:
            raise _Superseded(f"dispatch {as_text(current)} superseded it")
        meta = existing["metadata"]
        phase = (existing.get("status") or {}).get("phase", "")
        if phase not in FINISHED_PHASES or meta.get("deletionTimestamp"):
            raise _OlderPodExists(f"pod of an earlier dispatch {theirs} still exists ({phase or 'no phase'})")
        self.pods.delete(namespace, name, uid=meta["uid"], grace_period_seconds=0, timeout=self._timeout(deadline))
        self.metrics.replaced_finished.inc()
        log.info("deleted the %s pod of an earlier dispatch %s that held the name", phase, theirs,
                 extra={"pod": name, "namespace": namespace})
        try:
            self.pods.create_unread(namespace, pod, timeout=self._timeout(deadline))
        except ApiError as exc:
            if exc.status == 409:  # taken again meanwhile: look at who holds it on the next attempt
                raise _PodVanished("the pod name was taken again after the delete") from None
            raise

    def _revoke(self, msg: RevokeTask, entry: Entry, deadline: float) -> None:
        """Delete the revoked dispatch's pod (never a later dispatch's pod of the same key), in the namespace its
        record names when that is one this launcher may use (a pod_override's), else the queue's."""
        queue = self.keys.queue_of(entry.stream)
        try:
            namespace = self.settings.namespace_for_launch(queue, self.store.record(msg.pod_name).get("namespace"))
        except ValueError:
            namespace = self.settings.namespace_for_queue(queue)
        ctx = {"task": str(msg.key), "pod": msg.pod_name, "entry": entry.entry_id}

        def delete() -> None:
            pod = self.pods.get(namespace, msg.pod_name, timeout=self._timeout(deadline))
            if pod is None:
                return
            meta = pod["metadata"]
            theirs = (meta.get("annotations") or {}).get(DISPATCH_ANNOTATION, "")
            if msg.external_executor_id and theirs and theirs != msg.external_executor_id:
                return  # a newer dispatch's pod: not ours to delete
            # the uid precondition: 409 if the pod was replaced since it was read (retried, read again)
            self.pods.delete(namespace, msg.pod_name, uid=meta["uid"], grace_period_seconds=0,
                             timeout=self._timeout(deadline))

        outcome = self._retrying(delete, ctx, deadline)
        if outcome is None:
            return
        if outcome.kind != "transient":
            self._ack(entry)  # deleted, gone already, or not ours
            self.metrics.messages.labels("revoked").inc()
            log.info("revoke handled: %s", outcome.message or "no pod of the revoked dispatch remains", extra=ctx)

    def _still_denied(self, outcome: Outcome) -> Outcome:
        """A 403 that persisted through the last delivery's retry budget: the task fails with it."""
        return Outcome("permanent", f"{outcome.message} (still denied after {self.settings.max_deliveries} deliveries)")

    def _retrying(self, call: Callable[[], object], ctx: dict[str, str], deadline: float, *,
                  rate_limited: bool = False, last_delivery: bool = False,
                  status: list[str] | None = None) -> Outcome | None:
        """Run an API call, retrying transient errors until ``deadline``; None = give up for now (left
        pending). Success is ``Outcome("created")``; ``_Superseded`` passes through. A 403 Forbidden is
        retried like a transient error (an apiserver that just restarted denies until its RBAC cache is
        warm) and fails the task only on the ``last_delivery``, when it has persisted through them all.
        ``status[0]`` gets the HTTP status of the last API error (metrics)."""
        attempt = 0
        denied: Outcome | None = None  # the last attempt's 403, if it was one
        while True:
            if rate_limited and not self._acquire_token(deadline):
                if not self.stopping.is_set():
                    self.metrics.messages.labels("released").inc()
                    log.warning("no create token before the retry budget's end, leaving for redelivery", extra=ctx)
                return None
            try:
                call()
                return Outcome("created")
            except _Superseded:
                raise
            except _BudgetSpent:  # the budget ran out between an attempt and the next (a busy machine)
                if denied is not None and last_delivery and not self.stopping.is_set():
                    return self._still_denied(denied)
                self.metrics.messages.labels("released").inc()
                log.warning("retry budget spent, leaving for redelivery", extra=ctx)
                return None
            except (_OlderPodExists, _PodVanished) as exc:
                outcome = Outcome("transient", str(exc))
            except _ForeignPod as exc:
                outcome = Outcome("permanent", str(exc))
            except Exception as exc:  # classified below; unknown errors are transient (bounded by max_deliveries)
                outcome = classify_exception(exc)
                if status is not None:
                    status[0] = str(exc.status) if isinstance(exc, ApiError) else ""
                if not isinstance(exc, ApiError) and outcome.kind == "permanent":
                    log.error("unexpected error from the API client", exc_info=True, extra=ctx)
            if outcome.kind not in ("transient", "denied"):
                return outcome
            self.metrics.retries.labels(outcome.kind).inc()
            backoff = backoff_delay(attempt, base=self.settings.retry_base_seconds, cap=self.settings.retry_max_seconds)
            delay = max(outcome.retry_after or 0.0, backoff)
            attempt += 1
            denied = outcome if outcome.kind == "denied" else None
            if denied is not None and last_delivery and not self.stopping.is_set() \
                    and time.monotonic() + delay > deadline:
                return self._still_denied(denied)
            if self.stopping.is_set() or time.monotonic() + delay > deadline:
                self.metrics.messages.labels("released").inc()
                log.warning("transient API error, leaving for redelivery: %s", outcome.message, extra=ctx)
                return None
            log.info("transient API error, retrying in %.2fs: %s", delay, outcome.message, extra=ctx)
            if self.stopping.wait(delay):
                return None

    # -- metrics -----------------------------------------------------------------------------
    def _acquire_token(self, deadline: float) -> bool:
        """A create token from the shared rate limiter, the wait measured."""
        if self.limiter.rate <= 0:
            return True
        started = time.monotonic()
        try:
            return self.limiter.acquire(self.stopping, deadline)
        finally:
            waited = time.monotonic() - started
            self.metrics.rate_limit_wait_seconds.observe(waited)
            if waited >= RATE_LIMIT_WAIT_THRESHOLD_SECONDS:
                self.metrics.rate_limit_waits.inc()

    def _observe_streams(self) -> None:
        """Redis resets seen by the consumer; every few seconds, each launch stream's lag and pending
        count (XINFO GROUPS: one round trip per queue)."""
        resets = self.consumer.resets
        if resets > self._resets_seen:
            self.metrics.redis_resets.inc(resets - self._resets_seen)
            self._resets_seen = resets
        now = time.monotonic()
        if now - self._stream_stats_at < STREAM_STATS_INTERVAL_SECONDS:
            return
        self._stream_stats_at = now
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.consumer.streams:
            pipe.xinfo_groups(stream)
        lags: dict[str, int] = {}
        pending: dict[str, int] = {}
        for stream, groups in zip(self.consumer.streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(groups, Exception):
                continue  # no stream yet (nothing dispatched): the next round sees it
            queue = self.keys.queue_of(stream)  # a queue's priority bands add up
            for group in groups:
                if as_text(group.get("name", b"")) == LAUNCH_GROUP:
                    lag = group.get("lag")
                    if lag is not None:  # None: Redis cannot tell (entries deleted mid-stream)
                        lags[queue] = lags.get(queue, 0) + int(lag)
                    pending[queue] = pending.get(queue, 0) + int(group.get("pending", 0))
        for queue, value in lags.items():
            self.metrics.stream_lag.labels(queue).set(value)
        for queue, value in pending.items():
            self.metrics.stream_pending.labels(queue).set(value)
