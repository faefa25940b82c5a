"""Live pod logs through Redis: the scheduler and API server ask, a watcher (which has ``pods/log``) answers.

Neither the scheduler nor the API server holds Kubernetes credentials, so ``get_task_log`` cannot read
a running pod's log itself. Instead (docs/architecture.md, "Pod logs"):

1. The requester XADDs a signed ``LogRequest`` to ``{p}:logs:requests``: the task key (never a pod
   name or namespace), how many lines, a random reply id, the time it was made.
2. Every watcher process (leader and standbys, of every cluster: group ``logservers[:<cluster>]``)
   reads that stream; one of each cluster's takes the request. It verifies the signature, refuses a
   stale request, derives the pod name from the key and the namespace from the task record, reads
   the pod only if it carries this deployment's key-prefix annotation and the key's annotations,
   and reads its ``base`` container's last lines (``watcher/logserve.py``).
3. It RPUSHes a signed ``LogReply`` to ``{p}:logs:reply:<id>`` and EXPIREs the list after
   ``REPLY_TTL_SECONDS``; the requester BLPOPs it, checks the signature and shows the lines.

No answer within the requester's timeout (no watcher running, Redis slow) is a clear message, never an
exception. This module holds the message formats, their validation and the requester's side; it
imports neither airflow nor kubernetes.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
import redis

from kubestream.keys import Keys
from kubestream.signing import SignatureError, Signer, Unsigned
from kubestream.taskkey import TaskKey

VERSION = 1
MAX_LINES = 10_000  # the most lines one request may ask for (a larger request is capped)
MAX_REQUEST_AGE = 30.0  # seconds: an older (or that far future) request is not served (replays, backlogs)
REPLY_TTL_SECONDS = 10  # an answer nobody took vanishes this long after it was written
REQUESTS_MAXLEN = 1000  # approximate cap of the request stream (requests are deleted once handled)
REQUEST_TYPE = "pod_log_request"
REPLY_TYPE = "pod_log_reply"
_REPLY_ID = re.compile(r"^[0-9a-f]{32}$")


class BadRequest(ValueError):
    """A log request that is not served; the message says why."""


class BadReply(ValueError):
    """An answer that cannot be read (unsigned, forged, malformed, another request's)."""


class Status(StrEnum):
    OK = "ok"  # the pod's last lines
    NOT_FOUND = "not_found"  # no task record, or no pod of the task (not started yet, or deleted)
    REFUSED = "refused"  # not this deployment's pod, a namespace not served, a request not served
    ERROR = "error"  # the API refused or failed (e.g. the container is still waiting to start)
    TIMEOUT = "timeout"  # requester side: no answer in time
    UNAVAILABLE = "unavailable"  # requester side: Redis could not be reached


@dataclass(frozen=True, slots=True)
class LogRequest:
    key: TaskKey
    lines: int
    reply_id: str
    at: float  # epoch seconds when the request was made


@dataclass(frozen=True, slots=True)
class LogReply:
    reply_id: str
    status: Status
    message: str = ""
    pod: str = ""
    namespace: str = ""
    text: str = ""  # the log lines (newest last), "" unless OK
    truncated: bool = False  # older lines of the tail were dropped to stay within the byte cap
    server: str = ""  # the watcher that answered


# --------------------------------------------------------------------------- pure parts


def cap_lines(lines: int) -> int:
    """The number of lines actually read: at least 1, at most ``MAX_LINES``."""
    return max(1, min(int(lines), MAX_LINES))


def tail_bytes(data: bytes, max_bytes: int) -> tuple[bytes, bool]:
    """The newest whole lines of ``data`` within ``max_bytes``, and whether anything was dropped.

    A single line longer than ``max_bytes`` keeps its last ``max_bytes`` bytes."""
    if len(data) <= max_bytes:
        return data, False
    start = len(data) - max_bytes
    cut = data[start:]
    if data[start - 1:start] == b"\n":  # the cut falls on a line start: that line is whole
        return cut, True
    newline = cut.find(b"\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1:]
    return cut, True


def new_reply_id() -> str:
    return secrets.token_hex(16)


def encode_request(request: LogRequest) -> bytes:
    k = request.key
    return bytes(msgpack.packb({"v": VERSION, "type": REQUEST_TYPE, "dag_id": k.dag_id, "task_id": k.task_id,
                                "run_id": k.run_id, "try_number": k.try_number, "map_index": k.map_index,
                                "lines": request.lines, "reply": request.reply_id, "at": request.at},
                               use_bin_type=True))


def _unpack(raw: bytes, kind: type[ValueError]) -> dict[str, Any]:
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise kind(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise kind("not a map")
    return data


def _field(data: Mapping[str, Any], name: str, kind: type, error: type[ValueError]) -> Any:
    value = data.get(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise error(f"field {name!r} missing or not {kind.__name__}")
    return value


def parse_request(raw: bytes, *, now: float, max_age: float = MAX_REQUEST_AGE) -> LogRequest:
    """A verified request's payload as a ``LogRequest``; ``BadRequest`` says why it is not served."""
    data = _unpack(raw, BadRequest)
    if data.get("type") != REQUEST_TYPE:
        raise BadRequest(f"not a pod log request (type {str(data.get('type'))[:32]!r})")
    if data.get("v") != VERSION:
        raise BadRequest(f"unknown pod log request version {str(data.get('v'))[:8]!r}")
    key = TaskKey(_field(data, "dag_id", str, BadRequest), _field(data, "task_id", str, BadRequest),
                  _field(data, "run_id", str, BadRequest), _field(data, "try_number", int, BadRequest),
                  _field(data, "map_index", int, BadRequest))
    lines = _field(data, "lines", int, BadRequest)
    if lines < 1:
        raise BadRequest(f"lines must be at least 1, got {lines}")
    reply_id = _field(data, "reply", str, BadRequest)
    if not _REPLY_ID.match(reply_id):
        raise BadRequest("reply id is not 32 hex digits")
    at = _field(data, "at", float, BadRequest)
    if abs(now - at) > max_age:
        raise BadRequest(f"stale request (made {now - at:.0f}s ago; served for {max_age:.0f}s)")
    return LogRequest(key, cap_lines(lines), reply_id, at)


def encode_reply(reply: LogReply) -> bytes:
    return bytes(msgpack.packb({"v": VERSION, "type": REPLY_TYPE, "reply": reply.reply_id,
                                "status": reply.status.value, "message": reply.message, "pod": reply.pod,
                                "namespace": reply.namespace, "text": reply.text, "truncated": reply.truncated,
                                "server": reply.server}, use_bin_type=True))


def pack_signed(fields: Mapping[Any, Any]) -> bytes:
    """A list element: the signed fields (``m``, ``k``, ``s``) of a reply, as one msgpack map."""
    return bytes(msgpack.packb({bytes(k) if isinstance(k, bytes) else str(k).encode(): v
                                for k, v in fields.items()}, use_bin_type=True))


def parse_reply(element: bytes, reply_key: str, reply_id: str, signer: Signer | Unsigned) -> LogReply:
    """The answer popped from ``reply_key``; ``BadReply`` when it is unsigned, forged, malformed or
    answers another request."""
    try:
        fields = msgpack.unpackb(element, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BadReply("not msgpack") from None
    if not isinstance(fields, dict) or not all(isinstance(k, bytes) for k in fields):
        raise BadReply("not a signed entry")
    clean = {k: v.encode() if isinstance(v, str) else v for k, v in fields.items()}
    if not all(isinstance(v, bytes) for v in clean.values()):
        raise BadReply("not a signed entry")
    try:
        payload = signer.verify(reply_key, clean)
    except SignatureError as exc:
        raise BadReply(str(exc)) from None
    data = _unpack(payload, BadReply)
    if data.get("type") != REPLY_TYPE or data.get("v") != VERSION:
        raise BadReply("not a pod log reply of this version")
    if data.get("reply") != reply_id:
        raise BadReply("the answer of another request")
    try:
        status = Status(_field(data, "status", str, BadReply))
    except ValueError:
        raise BadReply("unknown status") from None
    return LogReply(reply_id, status, _field(data, "message", str, BadReply), _field(data, "pod", str, BadReply),
                    _field(data, "namespace", str, BadReply), _field(data, "text", str, BadReply),
                    bool(data.get("truncated")), _field(data, "server", str, BadReply))


# --------------------------------------------------------------------------- requester


def request_log(client: redis.Redis, keys: Keys, signer: Signer | Unsigned, key: TaskKey, *, lines: int,
                timeout: float, clock: Any = time) -> LogReply:
    """Ask the watchers for the last ``lines`` of the task's pod and wait up to ``timeout`` seconds.

    Never raises for an unreachable Redis, a missing watcher or a bad answer: the reply's status and
    message say what happened (TIMEOUT, UNAVAILABLE, ...)."""
    reply_id = new_reply_id()
    reply_key = keys.log_reply(reply_id)
    request = LogRequest(key, cap_lines(lines), reply_id, clock.time())
    deadline = clock.monotonic() + timeout
    bad = ""
    try:
        client.xadd(keys.log_requests, signer.sign(keys.log_requests, encode_request(request)),
                    maxlen=REQUESTS_MAXLEN, approximate=True)
        while (left := deadline - clock.monotonic()) > 0:
            # short blocks: the executor's connection has a 2 s socket timeout
            got = client.blpop([reply_key], timeout=max(0.01, min(1.0, left)))
            if not got:
                continue
            element = got[1]
            try:
                return parse_reply(element.encode() if isinstance(element, str) else bytes(element), reply_key,
                                   reply_id, signer)
            except BadReply as exc:
                bad = f"; an unreadable answer was dropped ({exc})"
    except redis.RedisError as exc:
        return LogReply(reply_id, Status.UNAVAILABLE, f"Redis unavailable: {exc}")
    finally:
        try:
            client.delete(reply_key)  # an answer that comes late is not left behind (it expires anyway)
        except redis.RedisError:
            pass
    return LogReply(reply_id, Status.TIMEOUT, f"no watcher answered within {timeout:g}s (is a kubestream "
                                              f"watcher running, with pods/log RBAC?){bad}")
