"""Dead letters (``{p}:dead``): list, show, replay, purge (``kubestream dlq ...``).

A dead letter has ``reason``, ``stream`` (where the message came from), ``entry`` (its id
there), ``task`` (the task record's key) and ``m``: the message with its secrets redacted
(``messages.redact``: the workload token, the env values of pod_override / pod_template).

Replay re-sends a dead-lettered launch through the normal path: encoded again, signed
with the configured key for its launch stream, XADDed there (with ``launch_maxlen``), and
the dead letter deleted, all in one transaction that holds only while the task record is
unchanged. It is refused (``ReplayRefused``, nothing written) when:

- the message is not a launch (revokes, results, unreadable entries);
- its workload token or an env value was redacted: the message cannot be rebuilt, and a
  launch without them would start a broken pod. Airflow requeues such a task itself
  (``task_queued_timeout``), or clear the task to run it again;
- the task record is gone, names another dispatch, is revoked or has a final state:
  re-sending a stale dispatch could start a pod for a try that is over;
- the message is not the launch the record's ``digest`` names (the one the scheduler wrote):
  anyone who can write to Redis can add a dead letter, and replay must never sign what the
  scheduler did not write (e.g. a pod_override with another image).

The launch stream is the one the letter names, which must be a launch stream of the
message's queue.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from kubestream.keys import Keys
from kubestream.messages import FIELD, REDACTED, DecodeError, LaunchTask, decode, encode, message_digest
from kubestream.signing import Signer, Unsigned
from kubestream.store import FINAL_STATES
from kubestream.text import as_text


class ReplayRefused(Exception):
    """The dead letter cannot be replayed safely; the message says why and what to do instead."""


@dataclass(frozen=True)
class DeadLetter:
    id: str
    reason: str
    stream: str
    entry: str
    task: str
    raw: bytes

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - int(self.id.split("-", 1)[0]) / 1000)

    def summary(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "stream": self.stream, "task": self.task}

    def decoded(self) -> dict[str, Any]:
        """The message as data (best effort: an undecodable one is shown as raw msgpack data)."""
        try:
            message = decode(self.raw)
        except DecodeError as exc:
            import msgpack

            try:
                data = msgpack.unpackb(self.raw, raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
                data = repr(self.raw[:200])
            return {"undecodable": exc.reason, "data": data}
        return dataclasses.asdict(message)


def _letter(entry_id: Any, fields: Any) -> DeadLetter:
    text = {as_text(k): v for k, v in fields.items()}
    return DeadLetter(id=as_text(entry_id), reason=as_text(text.get("reason", b"")),
                      stream=as_text(text.get("stream", b"")), entry=as_text(text.get("entry", b"")),
                      task=as_text(text.get("task", b"")), raw=bytes(text.get(as_text(FIELD), b"")))


def list_letters(client: redis.Redis, keys: Keys, *, count: int = 100) -> list[DeadLetter]:
    """The newest ``count`` dead letters, oldest first."""
    return [_letter(i, f) for i, f in reversed(client.xrevrange(keys.dead, count=count) or [])]


def get(client: redis.Redis, keys: Keys, letter_id: str) -> DeadLetter | None:
    found = client.xrange(keys.dead, min=letter_id, max=letter_id)
    return _letter(*found[0]) if found else None


def _redacted(message: LaunchTask) -> bool:
    try:
        workload = json.loads(message.workload_json)
    except ValueError:
        return True
    if isinstance(workload, dict) and workload.get("token") == REDACTED:
        return True
    for pod in (message.pod_override, message.pod_template):
        if pod and REDACTED in json.dumps(pod):
            return True
    return False


def replay(client: redis.Redis, keys: Keys, signer: Signer | Unsigned, letter_id: str, *,
           launch_maxlen: int) -> str:
    """Re-send the dead-lettered launch ``letter_id``; returns the new entry's id (see the module doc)."""
    letter = get(client, keys, letter_id)
    if letter is None:
        raise ReplayRefused(f"no dead letter {letter_id}")
    try:
        message = decode(letter.raw)
    except DecodeError as exc:
        raise ReplayRefused(f"dead letter {letter_id} holds no readable message ({exc.reason})") from None
    if not isinstance(message, LaunchTask):
        raise ReplayRefused(f"dead letter {letter_id} holds a {message.type} message: only launches are replayed")
    if _redacted(message):
        raise ReplayRefused(f"dead letter {letter_id}: its workload token or env values were redacted, so the launch "
                            "cannot be rebuilt; Airflow requeues the task after task_queued_timeout (or clear it)")
    stream = letter.stream
    try:
        queue: str | None = keys.queue_of(stream)
    except ValueError:
        queue = None
    if queue != message.queue:
        raise ReplayRefused(f"dead letter {letter_id} came from {stream!r}, not a launch stream of its queue "
                            f"{message.queue!r}; not re-sent")
    record = keys.task(message.pod_name)
    raw = encode(message)
    with client.pipeline() as pipe:
        pipe.watch(record)  # type: ignore[no-untyped-call]  # redis-py leaves Pipeline.watch untyped
        fields = {as_text(k): as_text(v) for k, v in (pipe.hgetall(record) or {}).items()}
        why = ("its task record is gone" if not fields else
               f"its task record names another dispatch ({fields.get('dispatch')})"
               if fields.get("dispatch", "") != message.external_executor_id else
               "its task was revoked" if fields.get("revoked") else
               f"its task already has the final state {fields['state']}"
               if fields.get("state") in FINAL_STATES else "")
        if why:
            raise ReplayRefused(f"dead letter {letter_id} is a stale dispatch: {why}; not re-sent")
        if fields.get("digest") != message_digest(letter.raw):
            raise ReplayRefused(f"dead letter {letter_id} is not the launch its task record was dispatched with "
                                "(its digest differs): only the scheduler's own launch is signed again; not re-sent")
        pipe.multi()
        pipe.xadd(stream, signer.sign(stream, raw), maxlen=launch_maxlen, approximate=True)
        pipe.hset(record, "digest", message_digest(raw))
        pipe.hdel(record, "entry")  # the new entry's id is not known inside the transaction: the digest decides
        pipe.xdel(keys.dead, letter_id)
        try:
            new_id = pipe.execute()[0]
        except redis.WatchError:
            raise ReplayRefused(f"dead letter {letter_id}: its task record changed meanwhile; not re-sent") from None
    return as_text(new_id)


def purge(client: redis.Redis, keys: Keys, *, older_than_s: float | None = None) -> int:
    """Delete every dead letter, or those older than ``older_than_s``; returns how many."""
    if older_than_s is None:
        count = int(client.xlen(keys.dead))
        client.delete(keys.dead)
        return count
    floor_ms = int((time.time() - older_than_s) * 1000)
    return int(client.xtrim(keys.dead, minid=f"{floor_ms}-0", approximate=False))
