"""Task records and the atomic operations on them (Lua scripts).

A task record is the hash ``{prefix}:task:<pod name>`` with fields
``owner`` (the scheduler whose result stream gets its events), ``dag_id``,
``task_id``, ``run_id``, ``try_number``, ``map_index``, ``queue``,
``namespace``, ``dispatch`` (the external executor id of the current dispatch:
Airflow assigns a new one every time it queues the task), ``state`` and
``reason`` (last published), ``revoked`` ("1"
once the current dispatch is revoked) and ``updated`` (epoch seconds).
A pod carries its dispatch id in the annotation ``kubestream.io/dispatch``;
events from a pod of an older dispatch of the same key are dropped.

Every state change goes through ``_PUBLISH`` (a Lua function shared by the
scripts): look up the owner, drop duplicates / regressions / events after a
final state or a revoke, update the record and XADD the event to
``{prefix}:results:<owner>`` in one atomic step. Adoption rewrites ``owner``
and reads the last state in one atomic step too, so no event falls between.
Result stream names are derived from the owner inside the scripts; they share
the prefix's hash slot, so this also holds on Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.messages import TaskState, TaskStateChanged, encode
from kubestream.settings import Settings
from kubestream.taskkey import TaskKey
from kubestream.text import as_text, decode_hash

# KEYS[1] = task hash. ARGV[1] = key base "{prefix}", ARGV[2] = state, ARGV[3] = reason,
# ARGV[4] = encoded event, ARGV[5] = results MAXLEN, ARGV[6] = TTL after a final state,
# ARGV[7] = now (epoch seconds), ARGV[8] = "<namespace>/<pod>" for the set of live pods
# ({prefix}:live: pods published pending/running, so a relist can find vanished ones),
# ARGV[9] = the dispatch id the event's pod belongs to ('' = any).
# Returns {1, entry id, owner} when published, {0, why} otherwise.
_PUBLISH_FN = """
local function publish(task, base, state, reason, event, maxlen, ttl, now, where, dispatch)
  local rec = redis.call('HMGET', task, 'owner', 'state', 'revoked', 'dispatch')
  local owner, last, revoked, current = rec[1], rec[2], rec[3], rec[4]
  if not owner then return {0, 'unknown task'} end
  if dispatch ~= '' and current and current ~= '' and current ~= dispatch then return {0, 'stale dispatch'} end
  if revoked == '1' then return {0, 'revoked'} end
  if last == state then return {0, 'duplicate'} end
  if last == 'succeeded' or last == 'failed' then return {0, 'already final: ' .. last} end
  local rank = {queued = 0, pending = 1, running = 2, succeeded = 3, failed = 3}
  if last and rank[last] and rank[state] < rank[last] then return {0, 'stale: ' .. state .. ' after ' .. last} end
  redis.call('HSET', task, 'state', state, 'reason', reason, 'updated', now)
  local id = redis.call('XADD', base .. ':results:' .. owner, 'MAXLEN', '~', maxlen, '*', 'm', event)
  if state == 'succeeded' or state == 'failed' then
    redis.call('EXPIRE', task, ttl)
    redis.call('SREM', base .. ':live', where)
  elseif where ~= '' then
    redis.call('SADD', base .. ':live', where)
  end
  return {1, id, owner}
end
"""

_PUBLISH = _PUBLISH_FN + "return publish(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])"

# A launch that ends without a pod: acknowledge it, optionally dead-letter it, and publish
# the failed result, atomically.
# KEYS[1] = launch stream, KEYS[2] = task hash (may be a dummy when the key is unknown),
# KEYS[3] = dead-letter stream. ARGV[1..9] as _PUBLISH, ARGV[10] = group, ARGV[11] = entry id,
# ARGV[12] = dead-letter reason ('' = no dead letter), ARGV[13] = raw message, ARGV[14] = stream name.
_FAIL_LAUNCH = _PUBLISH_FN + """
redis.call('XACK', KEYS[1], ARGV[10], ARGV[11])
redis.call('XDEL', KEYS[1], ARGV[11])
if ARGV[12] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'reason', ARGV[12], 'stream', ARGV[14],
             'entry', ARGV[11], 'task', KEYS[2], 'm', ARGV[13])
end
if ARGV[2] == '' then return {0, 'no task'} end
return publish(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
"""

# KEYS = task hashes, ARGV[1] = new owner. Returns for each key {state, reason} or {} if unknown.
_ADOPT = """
local out = {}
for i, task in ipairs(KEYS) do
  if redis.call('EXISTS', task) == 1 then
    redis.call('HSET', task, 'owner', ARGV[1])
    local rec = redis.call('HMGET', task, 'state', 'reason')
    out[i] = {rec[1] or '', rec[2] or ''}
  else
    out[i] = {}
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Published:
    published: bool
    detail: str  # entry id when published, else why not
    owner: str = ""


class TaskStore:
    """Task records and atomic state publication for one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self.redis = client
        self.keys = keys
        self.settings = settings
        self._publish = client.register_script(_PUBLISH)
        self._fail_launch = client.register_script(_FAIL_LAUNCH)
        self._adopt = client.register_script(_ADOPT)

    # -- executor side ---------------------------------------------------------------
    def record_dispatch(self, pipe: redis.client.Pipeline, key: TaskKey, *, owner: str, queue: str, namespace: str,
                 dispatch: str) -> None:
        """Queue the commands that (re)start a task's record for a new dispatch on ``pipe``."""
        record = self.keys.task(key.pod_name())
        pipe.hdel(record, "state", "reason", "revoked")
        pipe.hset(record, mapping={
            "owner": owner, "dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id,
            "try_number": key.try_number, "map_index": key.map_index, "queue": queue,
            "namespace": namespace, "dispatch": dispatch, "updated": f"{time.time():.3f}",
        })
        pipe.expire(record, self.settings.task_ttl_seconds)

    def adopt(self, pod_names: Sequence[str], owner: str) -> list[tuple[str, str] | None]:
        """Take ownership of tasks; returns each one's last (state, reason), None if unknown."""
        if not pod_names:
            return []
        rows = self._adopt(keys=[self.keys.task(p) for p in pod_names], args=[owner])
        return [(as_text(r[0]), as_text(r[1])) if r else None for r in rows]

    def revoke(self, pod_names: Iterable[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for pod in pod_names:
            pipe.hset(self.keys.task(pod), "revoked", "1")
            pipe.expire(self.keys.task(pod), self.settings.task_ttl_seconds)
        pipe.execute()

    # -- launcher / watcher side -------------------------------------------------------
    def launch_verdicts(self, launches: Sequence[tuple[str, str]]) -> list[str]:
        """For each (pod name, dispatch): '' if the launch may go ahead, else why not
        ('revoked', 'stale dispatch'). One round trip for the whole batch."""
        if not launches:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for pod_name, _ in launches:
            pipe.hmget(self.keys.task(pod_name), "revoked", "dispatch")
        verdicts = []
        for (_, dispatch), (revoked, current) in zip(launches, pipe.execute()):
            if dispatch and current and as_text(current) != dispatch:
                verdicts.append("stale dispatch")
            else:
                verdicts.append("revoked" if revoked == b"1" else "")
        return verdicts

    def publish(self, event: TaskStateChanged, dispatch: str = "") -> Published:
        """Atomically: drop if not new (or from another dispatch's pod), else update the last
        state and send to the owner."""
        res = self._publish(keys=[self.keys.task(event.key.pod_name())], args=[*self._publish_args(event), dispatch])
        return _published(res)

    def fail_launch(self, stream: str, entry_id: str, event: TaskStateChanged | None,
                    *, dead_reason: str = "", raw: bytes = b"") -> Published:
        """Acknowledge a launch entry that ends without a pod, dead-letter it if asked,
        and publish ``event`` (a FAILED state), atomically."""
        task = self.keys.task(event.key.pod_name()) if event else self.keys.task("-")
        args = self._publish_args(event) if event else [self.keys.base, "", "", "", 0, 0, 0, ""]
        args.append("")
        res = self._fail_launch(
            keys=[stream, task, self.keys.dead],
            args=[*args, LAUNCH_GROUP, entry_id, dead_reason, raw, stream],
        )
        return _published(res)

    def _publish_args(self, event: TaskStateChanged) -> list[str | int | bytes]:
        return [
            self.keys.base, event.state.value, event.reason[:2000], encode(event),
            self.settings.results_maxlen, self.settings.task_ttl_seconds, f"{time.time():.3f}",
            f"{event.namespace}/{event.pod_name}" if event.namespace else "",
        ]

    def live_pods(self) -> set[tuple[str, str]]:
        """(namespace, pod) of tasks last published pending or running."""
        return {tuple(as_text(m).split("/", 1)) for m in self.redis.smembers(self.keys.live)}  # type: ignore[misc]

    def record(self, pod_name: str) -> dict[str, str]:
        return decode_hash(self.redis.hgetall(self.keys.task(pod_name)))


def failed(key: TaskKey, reason: str, namespace: str = "") -> TaskStateChanged:
    return TaskStateChanged(key=key, state=TaskState.FAILED, reason=reason, pod_name=key.pod_name(),
                            namespace=namespace, at=time.time())



def _published(res: list) -> Published:
    if int(res[0]) == 1:
        return Published(True, as_text(res[1]), as_text(res[2]))
    return Published(False, as_text(res[1]))
