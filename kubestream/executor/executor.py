"""KubeStreamExecutor: the scheduler's side of kubestream.

The scheduler never talks to Kubernetes. ``_process_workloads`` writes task
records and launch messages for a whole batch in one MULTI/EXEC round trip;
``sync`` reads this scheduler's result stream without blocking, applies the
events and acknowledges them only after they are in the event buffer.
Adoption rewrites task ownership in Redis (no pod is touched).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis
from airflow._shared.observability.metrics import stats  # the Stats facade BaseExecutor reports through
from airflow.executors.base_executor import PARALLELISM, BaseExecutor
from airflow.executors.workloads import ExecuteCallback, ExecuteTask

from kubestream import podlogs
from kubestream.executor import relaunch, results
from kubestream.executor.config import check_team_prefix, prefixes_taken, settings_from_airflow
from kubestream.executor.launches import ExecutorConfigError, launch_message, task_key
from kubestream.executor.mutation import PodMutation, PodMutationHookError
from kubestream.keys import RESULTS_GROUP, Keys
from kubestream.messages import FIELD, RevokeTask, TaskState, TaskStateChanged, encode
from kubestream.redisconn import connect, eviction_warning
from kubestream.settings import Settings
from kubestream.signing import UNSIGNED_WARNING, Signer, SigningKeyError, Unsigned, signer_for
from kubestream.store import Dispatch, TaskStore
from kubestream.taskkey import TaskKey
from kubestream.text import StreamFields, as_text, stream_entries

if TYPE_CHECKING:
    from airflow.models.taskinstance import TaskInstance



STAT = "kubestream.executor."  # prefix of the executor's own metrics (docs/operations.md)
# Work on big batches goes in slices, each one's objects freed before the next is built: the objects alive at
# once stay below what sets off Python's older-generation collections in the scheduler process, which would
# promote them to its oldest generation and bring on a full collection of the scheduler's whole heap.
DISPATCH_CHUNK = 250  # launches per MULTI/EXEC of a dispatch batch (docs/architecture.md)
RESULT_SLICE = 250  # results per read, apply and acknowledgement in a sync()


class SchedulerIdInUse(RuntimeError):
    """Another live scheduler runs with this scheduler_id."""

class KubeStreamExecutor(BaseExecutor):
    """Runs each task as a Kubernetes pod through Redis Streams (see the kubestream README).

    Team-safe (Airflow multi-team): a team's executor reads every setting from that team's configuration
    (``self.conf``) and refuses to start on the default or the global key prefix, so two teams' tasks never
    share launch streams, result streams or task records.
    """

    pre_assigns_external_executor_id = True
    supports_ad_hoc_ti_run = True
    supports_multi_team = True
    serve_logs = False

    def __init__(self, parallelism: int = PARALLELISM, team_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(parallelism=parallelism, team_name=team_name, **kwargs)
        # cheap and side-effect free: the API server builds executors it never starts
        self.settings: Settings | None = None
        self.redis: redis.Redis | None = None
        self.store: TaskStore | None = None
        self.keys: Keys | None = None
        self.scheduler_id = ""
        self._cursor = "0"  # first our own pending results (a restart), then new ones
        self._external_ids: dict[Any, str] = {}
        self._adopt_later: list[TaskInstance] = []  # adoptions a Redis outage interrupted
        self.relauncher: relaunch.Relauncher | None = None  # pod_launch_failure_retries; made in start()
        self._next_reconcile = 0.0
        self._token = uuid.uuid4().hex  # this process's claim on its scheduler_id
        self.signer: Signer | Unsigned = Unsigned()  # replaced in start()
        self._next_alive = 0.0
        # a team's metrics carry its name, as BaseExecutor's own do
        self._stat_tags: dict[str, str] | None = {"team_name": team_name} if team_name else None

    # -- lifecycle ------------------------------------------------------------------------------
    def load_settings(self) -> Settings:
        """Every setting from ``[kubestream]`` (config file, AIRFLOW__KUBESTREAM__* env, _cmd, _secret); for a
        team's executor from that team's configuration (AIRFLOW__<TEAM>___KUBESTREAM__*, [<team>=kubestream])."""
        settings = settings_from_airflow(self.conf, self.team_name)
        if self.team_name:
            from airflow.configuration import conf

            kind = type(self)
            names = {"KubeStreamExecutor", kind.__name__, f"{kind.__module__}.{kind.__qualname__}"}
            check_team_prefix(settings, self.team_name, prefixes_taken(conf, self.team_name, names))
        return settings

    def start(self) -> None:
        self.settings = self.load_settings()
        self.keys = Keys(self.settings.key_prefix)
        self.scheduler_id = self.settings.scheduler_id or (
            f"job-{self.job_id}" if getattr(self, "job_id", None) else socket.gethostname())
        self.redis = connect(self.settings, role="executor")
        try:
            self.signer = signer_for(self.settings)
        except SigningKeyError as exc:
            raise SigningKeyError(f"[kubestream] {exc}") from None
        if isinstance(self.signer, Unsigned):
            self.log.warning("%s", UNSIGNED_WARNING)
        self.store = TaskStore(self.redis, self.keys, self.settings, self.signer)
        self.relauncher = relaunch.Relauncher(self.redis, self.store, self.keys, self.settings, self.signer, self.log,
                                              count=self._count_relaunch)
        self._claim_scheduler_id()
        self._ensure_group()
        warning = eviction_warning(self.redis)
        if warning:
            self.log.warning("%s", warning)
        self._next_reconcile = time.monotonic() + self.settings.reconcile_seconds
        self.log.info("kubestream executor started: scheduler_id=%s results=%s%s", self.scheduler_id,
                      self.results_stream, f" team={self.team_name}" if self.team_name else "")

    def _count_relaunch(self, reason_class: str) -> None:
        stats.incr(f"{STAT}pod_launch_relaunches", tags={**(self._stat_tags or {}), "reason": reason_class})

    def _claim_scheduler_id(self) -> None:
        """Refuse to run beside a live scheduler with the same ``scheduler_id`` (both would read one result
        stream and each apply only part of it). A crashed predecessor's claim is waited out (one TTL)."""
        assert self.redis is not None and self.keys is not None and self.settings is not None
        key, ttl = self.keys.scheduler(self.scheduler_id), self.settings.health_ttl_seconds
        deadline = time.monotonic() + ttl + 1
        while not self.redis.set(key, self._token, nx=True, px=int(ttl * 1000)):
            if time.monotonic() > deadline:
                raise SchedulerIdInUse(
                    f"scheduler_id {self.scheduler_id!r} is in use by another live scheduler (its key {key} keeps "
                    f"being refreshed): give each scheduler its own [kubestream] scheduler_id, or leave it empty")
            self.log.warning("scheduler_id %s is claimed by another process; waiting for its claim to lapse",
                             self.scheduler_id)
            time.sleep(min(1.0, ttl / 3))
        self._next_alive = time.monotonic() + ttl / 3

    def _stay_alive(self) -> None:
        """Refresh this scheduler's claim (the janitor deletes result streams of schedulers that are gone)."""
        assert self.redis is not None and self.keys is not None and self.settings is not None
        if time.monotonic() < self._next_alive:
            return
        ttl = self.settings.health_ttl_seconds
        key = self.keys.scheduler(self.scheduler_id)
        holder = self.redis.get(key)
        if holder is None:
            self.redis.set(key, self._token, nx=True, px=int(ttl * 1000))
        elif as_text(holder) == self._token:
            self.redis.pexpire(key, int(ttl * 1000))
        else:
            self.log.error("another process claimed scheduler_id %s: two schedulers share one result stream",
                           self.scheduler_id)
        self._next_alive = time.monotonic() + ttl / 3

    def _release_scheduler_id(self) -> None:
        if self.redis is None or self.keys is None:
            return
        try:
            key = self.keys.scheduler(self.scheduler_id)
            if as_text(self.redis.get(key)) == self._token:
                self.redis.delete(key)
        except redis.RedisError:
            pass  # the claim lapses by itself

    def _ensure_group(self) -> None:
        """Create this scheduler's result stream and group (again, after Redis lost its data)."""
        assert self.redis is not None
        try:
            self.redis.xgroup_create(self.results_stream, RESULTS_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @property
    def results_stream(self) -> str:
        assert self.keys is not None, "start() first"
        return self.keys.results(self.scheduler_id)

    def end(self) -> None:
        """Apply what results are waiting, then disconnect; running pods keep running."""
        if self.redis is None:
            return
        for _ in range(100):
            if not self.apply_results():
                break
        self._release_scheduler_id()
        self.redis.close()

    def terminate(self) -> None:
        if self.redis is not None:
            self._release_scheduler_id()
            self.redis.close()

    # -- dispatch -------------------------------------------------------------------------------
    @cached_property
    def _pod_mutation(self) -> PodMutation | None:
        """The deployment's pod_mutation_hook, looked for once (at the first dispatch); None: no hook."""
        assert self.settings is not None
        return PodMutation.for_airflow(self.settings)

    def queue_workload(self, workload: Any, session: Any) -> None:
        """As BaseExecutor's, except for an executor callback (``ExecuteCallback``: e.g. a DeadlineAlert's
        ``SyncCallback``), which the scheduler hands to the default executor whatever it supports, and on which
        BaseExecutor raises, stopping the scheduler at each start while the callback stays pending: it is
        reported failed, with the reason, and the scheduler goes on."""
        if isinstance(workload, ExecuteCallback) and not self.supports_callbacks:
            reason = (f"{type(self).__name__} does not run executor callbacks (ExecuteCallback "
                      f"{workload.display_name}); run them with an executor that does")
            self.log.error("callback %s failed: %s", workload.key, reason)
            self.event_buffer[workload.key] = (workload.failure_state, reason)
            return
        super().queue_workload(workload, session)

    def _process_workloads(self, workloads: Sequence[Any]) -> None:  # Airflow passes its workload union
        for w in workloads:
            if not isinstance(w, ExecuteTask):
                raise RuntimeError(f"{type(self).__name__} cannot handle workloads of type {type(w).__name__}")
        # a big batch goes in chunks, each one MULTI/EXEC: launchers start on the first while the rest are built
        for start in range(0, len(workloads), DISPATCH_CHUNK):
            try:
                self._dispatch_chunk(workloads[start:start + DISPATCH_CHUNK])
            except redis.RedisError as exc:
                # nothing of this chunk was written (MULTI/EXEC): it and the rest stay queued for the next heartbeat
                left = sum(1 for w in workloads[start:] if w.ti.key in self.queued_tasks)
                self.log.warning("Redis unavailable, %d workloads stay queued: %s", left, exc)
                stats.incr(f"{STAT}dispatch_redis_errors", tags=self._stat_tags)
                return

    def _dispatch_chunk(self, workloads: Sequence[Any]) -> None:
        """Build, sign and write the launches of ``workloads`` in one MULTI/EXEC (a RedisError: none written)."""
        assert self.redis is not None and self.store is not None and self.keys is not None and self.settings
        started = time.monotonic()
        launches = []
        for w in workloads:
            ti_key = w.ti.key
            try:
                msg = launch_message(w, self.scheduler_id, self.settings.pod_template_dir, mutation=self._pod_mutation,
                                     ti_key=ti_key)
                try:
                    namespace = self.settings.namespace_for_launch(msg.queue, msg.requested_namespace)
                except ValueError as exc:
                    raise ExecutorConfigError(str(exc)) from None
                raw = encode(msg)
                if len(raw) > self.settings.max_message_bytes:
                    raise ExecutorConfigError(f"the launch message is {len(raw)} bytes, over max_message_bytes="
                                              f"{self.settings.max_message_bytes} (pod_override or template too big)")
                launches.append((ti_key, msg, raw, namespace, self.settings.band_for(w.ti.priority_weight or 0)))
            except Exception as exc:  # noqa: BLE001 - one task's executor_config must never stop the scheduler
                reason = f"invalid executor_config: {exc}" if isinstance(exc, ExecutorConfigError) else str(exc) \
                    if isinstance(exc, PodMutationHookError) else \
                    f"cannot build the launch message: {type(exc).__name__}: {exc}"
                self.log.error("%s: %s", ti_key, reason)
                del self.queued_tasks[ti_key]
                self.fail(ti_key, info=reason)
                stats.incr(f"{STAT}launch_build_failures", tags=self._stat_tags)
        if not launches:
            return
        pipe = self.redis.pipeline(transaction=True)
        self.store.dispatch_many(pipe, self.scheduler_id, [
            Dispatch(msg.key, msg.queue, namespace, msg.external_executor_id,
                     self.keys.launch(msg.queue, band), raw)  # a priority band's stream, or the plain one
            for _, msg, raw, namespace, band in launches])
        pipe.execute()
        for ti_key, msg, _, namespace, band in launches:
            del self.queued_tasks[ti_key]
            if self.relauncher is not None:
                self.relauncher.remember(ti_key, msg, namespace, band)
            self.running.add(ti_key)
            if msg.external_executor_id:
                self._external_ids[ti_key] = msg.external_executor_id
        stats.timing(f"{STAT}dispatch_batch_duration", timedelta(seconds=time.monotonic() - started),
                     tags=self._stat_tags)
        stats.incr(f"{STAT}dispatched", count=len(launches), tags=self._stat_tags)

    # -- results --------------------------------------------------------------------------------
    def sync(self) -> None:
        """Airflow's heartbeat hook: apply waiting results without blocking."""
        self.apply_results()

    def apply_results(self) -> int:
        """Apply up to ``sync_batch`` waiting results without blocking, ``RESULT_SLICE`` at a time (each
        read, applied and acknowledged before the next); returns how many."""
        if self.redis is None or self.settings is None:
            return 0
        self._maintain()
        applied = 0
        while applied < self.settings.sync_batch:
            want = min(RESULT_SLICE, self.settings.sync_batch - applied)
            got = self._apply_slice(want)
            applied += got
            if got < want:  # nothing more waits
                break
        stats.gauge(f"{STAT}results_per_sync", applied, tags=self._stat_tags)
        return applied

    def _apply_slice(self, count: int) -> int:
        """Read, apply and acknowledge up to ``count`` results; how many were read."""
        assert self.redis is not None
        try:
            reply = self.redis.xreadgroup(RESULTS_GROUP, self.scheduler_id, {self.results_stream: self._cursor},
                                          count=count)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            self._on_redis_reset()
            return 0
        except redis.RedisError as exc:
            self.log.warning("Redis unavailable in sync(), results wait in %s: %s", self.results_stream, exc)
            return 0
        entries = [(eid, fields) for _, eid, fields in stream_entries(reply)]
        if self._cursor != ">":  # our own pending backlog (a restart): go on after what was read
            if not entries:
                self._cursor = ">"  # the backlog is applied: read new entries from now on
                return self._apply_slice(count)
            self._cursor = entries[-1][0]
        if not entries:
            return 0
        events, bad = results.decode_entries(entries, self.results_stream, self.signer)
        for eid, reason in bad:
            self.log.error("dead-lettering undecodable result %s: %s", eid, reason)
            self._dead_letter(eid, reason, dict(entries)[eid])
        if bad:
            stats.incr(f"{STAT}results_dead_lettered", count=len(bad), tags=self._stat_tags)
        results.apply(self, events, self.relauncher)
        stats.incr(f"{STAT}results_applied", count=len(events), tags=self._stat_tags)
        published = [e.at for e in events if e.at > 0]
        if published:  # the oldest result of the batch: how far behind the pods this scheduler is
            stats.timing(f"{STAT}result_lag", timedelta(seconds=max(0.0, time.time() - min(published))),
                         tags=self._stat_tags)
        try:
            self.redis.xack(self.results_stream, RESULTS_GROUP, *[eid for eid, _ in entries])
        except redis.RedisError as exc:  # applied but not acknowledged: re-applied after a restart, harmless
            self.log.warning("could not acknowledge %d results: %s", len(entries), exc)
        return len(entries)

    def _maintain(self) -> None:
        """Between result batches: finish adoptions an outage interrupted, and reconcile ``running``
        against the task records every ``reconcile_seconds``."""
        assert self.settings is not None
        try:
            self._stay_alive()
            if self._adopt_later:
                tis, self._adopt_later = self._adopt_later, []
                self._adopt(tis)
            if time.monotonic() >= self._next_reconcile:
                self._next_reconcile = time.monotonic() + self.settings.reconcile_seconds
                self.reconcile()
        except redis.RedisError as exc:
            self.log.warning("Redis unavailable for adoption/reconciliation, retrying next sync: %s", exc)

    def _on_redis_reset(self) -> None:
        """The result group is gone: Redis lost its data. Recreate it and reconcile at once."""
        self.log.error("the result stream %s lost its consumer group: Redis lost its data (restart without "
                       "persistence, failover, FLUSHALL); recreating it and reconciling running tasks",
                       self.results_stream)
        stats.incr(f"{STAT}redis_resets", tags=self._stat_tags)
        try:
            self._ensure_group()
            self._cursor = "0"
            self.reconcile()
        except redis.RedisError as exc:
            self.log.warning("could not recover from the Redis reset yet: %s", exc)

    def reconcile(self) -> int:
        """Settle tasks in ``running`` that no result will ever settle; returns how many were found.

        - Its Redis record vanished (Redis lost its data): it is reported with the state its try wrote to the
          Airflow DB when that state is final; otherwise it stays until it is (its pod reports to the DB when it
          ends, Airflow's task heartbeat check fails it if the pod is gone, and a task still queued is requeued
          by Airflow's ``task_queued_timeout``).
        - Its record reached a final state more than ``reconcile_seconds`` ago but the result never arrived
          (the entry was lost: a trimmed or deleted result stream, a failover): the record's state is applied.
        """
        assert self.store is not None and self.settings is not None
        by_pod = {task_key(k).pod_name(): k for k in list(self.running)}
        if not by_pod:
            return 0
        missing, final = self.store.unreported(list(by_pod),
                                               settled_before=time.time() - self.settings.reconcile_seconds)
        if missing:
            stats.incr(f"{STAT}reconcile_lost_records", count=len(missing), tags=self._stat_tags)
        if final:
            stats.incr(f"{STAT}reconcile_lost_results", count=len(final), tags=self._stat_tags)
        if missing:
            keys = [task_key(by_pod[pod]) for pod in missing]
            states = self.task_states_from_db(keys)
            done = [k for k in keys if states.get(k) in results.FINAL_DB_STATES]
            self.log.error("%d running tasks lost their Redis record (Redis lost its data); %d have a final state "
                           "in the Airflow DB and are reported, the rest wait for theirs", len(keys), len(done))
            results.report_db_states(self, done)
        if final:
            events = []
            for pod in final:
                record = self.store.record(pod)
                if record.get("state") in ("succeeded", "failed"):
                    events.append(TaskStateChanged(key=task_key(by_pod[pod]), state=TaskState(record["state"]),
                                                   reason=record.get("reason", ""), pod_name=pod))
            self.log.error("%d tasks finished without their result reaching this scheduler (a lost result "
                           "entry); applying the final state of their records", len(events))
            results.apply(self, events)
        return len(missing) + len(final)

    def _dead_letter(self, eid: str, reason: str, fields: StreamFields | None) -> None:
        assert self.redis is not None and self.keys is not None
        try:
            self.redis.xadd(self.keys.dead, {"reason": f"result: {reason}", "stream": self.results_stream,
                                             "entry": eid, "m": (fields or {}).get(FIELD, b"")},
                            maxlen=self.settings.dead_letters_maxlen if self.settings else None)
        except redis.RedisError as exc:
            self.log.warning("could not dead-letter result %s: %s", eid, exc)

    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True) -> None:
        super().change_state(key, state, info, remove_running)
        if remove_running:
            self._external_ids.pop(key, None)
            if self.relauncher is not None:
                self.relauncher.forget(key)

    def task_states_from_db(self, keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]:
        """The state each task wrote to the Airflow DB (one query)."""
        return results.db_states(keys)

    def external_id(self, ti_key: Any) -> str | None:
        return self._external_ids.get(ti_key)

    # -- adoption and revoke ------------------------------------------------------------------
    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        if not tis:
            return []
        try:
            return self._adopt(tis)
        except redis.RedisError as exc:
            # Never answer "not adopted" because Redis blinked: Airflow would reset running tasks to a new try.
            self.log.warning("Redis unavailable, %d task instances adopted and checked once it is back: %s",
                             len(tis), exc)
            for ti in tis:
                self.running.add(ti.key)
            self._adopt_later.extend(tis)
            return []

    def _adopt(self, tis: Sequence[TaskInstance]) -> list[TaskInstance]:
        """Take ownership in Redis and report last states; returns the task instances kubestream never knew."""
        assert self.store is not None
        started = time.monotonic()
        last = self.store.adopt([task_key(ti.key).pod_name() for ti in tis], self.scheduler_id)
        not_adopted, adopted = [], []
        for ti, state in zip(tis, last, strict=True):
            if state is None:  # (after an interrupted adoption it stays in running: reconcile reports it)
                not_adopted.append(ti)
                continue
            self.running.add(ti.key)
            if ti.external_executor_id:
                self._external_ids[ti.key] = ti.external_executor_id
            adopted.append((task_key(ti.key), state))
        results.apply_adopted(self, adopted)
        stats.incr(f"{STAT}adopted", count=len(adopted), tags=self._stat_tags)
        stats.incr(f"{STAT}not_adopted", count=len(not_adopted), tags=self._stat_tags)
        stats.timing(f"{STAT}adoption_duration", timedelta(seconds=time.monotonic() - started), tags=self._stat_tags)
        self.log.info("adopted %d task instances in %.1f ms, %d not adoptable", len(adopted),
                      (time.monotonic() - started) * 1000, len(not_adopted))
        return not_adopted

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Record the revoke (level-triggered) and tell the launchers; never raises."""
        key = task_key(ti.key)
        self.queued_tasks.pop(ti.key, None)
        self.running.discard(ti.key)
        self._external_ids.pop(ti.key, None)
        if self.redis is None or self.store is None or self.keys is None:
            return
        queue = ti.queue or "default"
        revoke = RevokeTask(key=key, queue=queue, reason="revoked by the scheduler",
                            external_executor_id=self._current_dispatch(ti) or "")
        try:
            pipe = self.redis.pipeline(transaction=True)  # the flag and the command, both or neither
            self.store.revoke([key.pod_name()], pipe)
            stream = self.settings.revoke_stream(self.keys, queue) if self.settings else self.keys.launch(queue)
            pipe.xadd(stream, self.signer.sign(stream, encode(revoke)),
                      maxlen=self.settings.launch_maxlen if self.settings else None, approximate=True)
            pipe.execute()
        except redis.RedisError as exc:
            self.log.warning("could not record revoke of %s: %s", ti.key, exc)

    def _current_dispatch(self, ti: TaskInstance) -> str | None:
        """The dispatch a revoke names: a relaunch's (``pod_launch_failure_retries``) when the task record
        holds one of ``ti``'s dispatch (kept in memory, else read: after a restart), else ``ti``'s."""
        dispatch = ti.external_executor_id
        if self.relauncher is not None:
            current = self.relauncher.dispatch_of(ti.key)
            self.relauncher.forget(ti.key)
            if current:
                return current
        if self.redis is None or self.keys is None:
            return dispatch
        try:
            record = as_text(self.redis.hget(self.keys.task(task_key(ti.key).pod_name()), "dispatch"))
        except redis.RedisError:
            return dispatch
        return record if dispatch and relaunch.original_dispatch(record) == dispatch else dispatch

    def get_task_log(self, ti: TaskInstance, try_number: int) -> tuple[list[str], list[str]]:
        """What kubestream knows of the task's pod (``messages``) and, while it runs, its last
        ``running_pod_log_lines`` log lines (``logs``), as the KubernetesExecutor shows them.

        Airflow calls this for RUNNING tasks, also on executors it never started (the API server), so
        it connects on demand. The scheduler and API server have no Kubernetes access: the lines come
        from a watcher, asked through Redis (``kubestream.podlogs``). Finished tasks' logs come from
        Airflow's log handler (a shared volume or remote logging), as with any remote worker.
        """
        key = TaskKey(ti.dag_id, ti.task_id, ti.run_id, int(try_number), int(ti.map_index))
        try:
            settings = self.settings or self.load_settings()
            client = self.redis or connect(settings, role="executor")
        except (redis.RedisError, ValueError) as exc:
            return [f"kubestream: task record unavailable ({exc})"], []
        try:
            messages = self._record_messages(client, settings, key)
            if not messages[0].startswith("kubestream: no record") and not messages[0].startswith(
                    "kubestream: task record unavailable"):
                live, logs = self._live_log(client, settings, key)
                return [*messages, *live], logs
            return messages, []
        finally:
            if client is not self.redis:
                client.close()

    def _record_messages(self, client: redis.Redis, settings: Settings, key: TaskKey) -> list[str]:
        """The task record's pod, namespace, owner and last state, as one message line."""
        try:
            record = TaskStore(client, Keys(settings.key_prefix), settings).record(key.pod_name())
        except (redis.RedisError, ValueError) as exc:
            return [f"kubestream: task record unavailable ({exc})"]
        if not record:
            return [f"kubestream: no record of pod {key.pod_name()} (not dispatched, or expired)"]
        state = record.get("state") or "queued (no pod event yet)"
        reason = f": {record['reason']}" if record.get("reason") else ""
        return [f"kubestream: pod {key.pod_name()} in namespace {record.get('namespace', '?')}, "
                f"owner {record.get('owner', '?')}, last state {state}{reason}", *relaunch.log_lines(record)]

    def _live_log(self, client: redis.Redis, settings: Settings, key: TaskKey) -> tuple[list[str], list[str]]:
        """The pod's last lines, read by a watcher (messages, logs); a message says why there are none."""
        try:
            signer = self.signer if self.settings is not None else signer_for(settings)
        except SigningKeyError as exc:
            return [f"kubestream: cannot ask for the pod's log: [kubestream] {exc}"], []
        reply = podlogs.request_log(client, Keys(settings.key_prefix), signer, key,
                                    lines=settings.running_pod_log_lines, timeout=settings.pod_log_timeout_seconds)
        where = f" (watcher {reply.server})" if reply.server else ""
        if reply.status is not podlogs.Status.OK:
            return [f"kubestream: no live log lines of pod {key.pod_name()}: {reply.status.value}: "
                    f"{reply.message}{where}"], []
        return [f"kubestream: {reply.message} of pod {key.pod_name()} in namespace {reply.namespace}{where}"], [
            reply.text]

    @staticmethod
    def get_cli_commands() -> list[Any]:
        from kubestream.executor.cli import cli_commands

        return cli_commands()
