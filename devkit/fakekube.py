"""An in-memory ``kubestream.kubeapi.PodApi`` for unit tests of the launcher and the watcher.

``FakePodApi`` answers the pod calls kubestream makes as the apiserver would, without one:

- pods are kept per namespace; a create assigns ``uid``, ``resourceVersion``,
  ``creationTimestamp`` and ``status.phase: Pending``; a taken name is 409 AlreadyExists;
- get of a missing pod is None (the real one's 404), delete of one is False;
- a delete whose uid precondition names another pod is 409 Conflict;
- a list honours ``k=v`` / ``k!=v`` / ``k`` label selectors and pages with continue tokens;
- a watch replays the changes after its resourceVersion and ends (as at the server's
  timeout), after ``watch_idle_seconds`` without events (0: at once; an ``interrupt()`` ends
  the wait); a resourceVersion older than ``compact()`` made it is ``Gone`` (410).

Tests script the rest: ``fail_next(verb, *errors)`` queues errors for the next calls of a
verb (e.g. a 429 with Retry-After, then success), ``on_next(verb, action)`` changes things
just before a call is answered, ``add``/``remove``/``set_phase`` act as someone else would
(another launcher, a kubelet), and ``calls`` records every call made (verb, namespace, name, precondition), like the
actions of client-go's fake clientsets.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubestream.kubeapi import ApiError, Gone, PodList, status_body

Pod = dict[str, Any]

_PHRASES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 410: "Gone",
            422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 410: "Expired",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


def api_error(status: int, message: str = "", *, reason: str = "", retry_after: str | None = None) -> ApiError:
    """The error the apiserver answers with: a Status body, and ``Retry-After`` when given."""
    reason = reason or _REASONS.get(status, "")
    body = status_body(status, message or f"{status} {_PHRASES.get(status, '')}".strip(), reason)
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if status == 410:
        return Gone(_PHRASES[410], body, headers)
    return ApiError(status, _PHRASES.get(status, ""), body, headers)


@dataclass(frozen=True, slots=True)
class Call:
    """One call made to the fake (recorded before it is answered, failed ones included)."""

    verb: str  # create | get | delete | list | watch
    namespace: str
    name: str = ""
    uid: str = ""  # delete: the uid precondition
    grace_period_seconds: int | None = None  # delete
    resource_version: str = ""  # watch: where it starts
    timeout: tuple[float, float] | None = None  # create, get, delete: the (connect, read) seconds asked for


class FakePodApi:
    """Pods in memory behind the ``PodApi`` surface (thread-safe)."""

    def __init__(self, *, watch_idle_seconds: float = 0.0) -> None:
        self.watch_idle_seconds = watch_idle_seconds
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Pod]] = defaultdict(dict)
        self._rv = 0
        self._changes: list[tuple[int, str, Pod]] = []  # (resourceVersion, event type, pod)
        self._compacted = 0
        self._faults: dict[str, deque[BaseException]] = defaultdict(deque)
        self._actions: dict[str, deque[Callable[[], None]]] = defaultdict(deque)
        self._uids = itertools.count(1)
        self.calls: list[Call] = []

    # -- test controls ---------------------------------------------------------------------------
    def fail_next(self, verb: str, *errors: BaseException) -> None:
        """The next calls of ``verb`` raise ``errors``, one each, in order; later ones succeed."""
        with self._lock:
            self._faults[verb].extend(errors)

    def on_next(self, verb: str, action: Callable[[], None]) -> None:
        """Run ``action`` just before the next call of ``verb`` is answered (a change made meanwhile
        by someone else: it may use the test controls below)."""
        with self._lock:
            self._actions[verb].append(action)

    def calls_of(self, verb: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.verb == verb]

    def pod(self, namespace: str, name: str) -> Pod | None:
        """A copy of the stored pod (not recorded as a call)."""
        with self._lock:
            pod = self._pods[namespace].get(name)
            return copy.deepcopy(pod) if pod is not None else None

    def names(self, namespace: str) -> set[str]:
        with self._lock:
            return set(self._pods[namespace])

    def add(self, namespace: str, pod: Pod) -> Pod:
        """Store ``pod`` as created by someone else (not recorded as a call); returns the stored copy."""
        with self._lock:
            return copy.deepcopy(self._store(namespace, pod))

    def remove(self, namespace: str, name: str) -> None:
        """Delete the pod as someone else would (not recorded as a call)."""
        with self._lock:
            pod = self._pods[namespace].pop(name)
            self._changed("DELETED", pod)

    def set_phase(self, namespace: str, name: str, phase: str, **status: Any) -> Pod:
        """Move the pod to ``phase`` (more ``status`` fields as given), as a kubelet would; returns it."""
        with self._lock:
            pod = self._pods[namespace][name]
            pod["status"] = {**(pod.get("status") or {}), "phase": phase, **status}
            self._changed("MODIFIED", pod)
            return copy.deepcopy(pod)

    def compact(self) -> None:
        """Forget the change history: a watch from any resourceVersion seen so far is Gone (410)."""
        with self._lock:
            self._compacted = self._rv
            self._changes.clear()

    # -- the PodApi surface ------------------------------------------------------------------------
    def open_connections(self, n: int) -> int:
        return 0  # no connections to open

    def create_unread(self, namespace: str, pod: Pod, *, timeout: tuple[float, float] | None = None) -> None:
        self.create(namespace, pod, timeout=timeout)

    def create(self, namespace: str, pod: Pod, *, timeout: tuple[float, float] | None = None) -> Pod:
        name = str((pod.get("metadata") or {}).get("name") or "")
        self._before("create")
        with self._lock:
            self._record(Call("create", namespace, name, timeout=timeout))
            if not name:
                raise api_error(422, "Pod \"\" is invalid: metadata.name: Required value: name or generateName "
                                "is required")
            if (pod.get("metadata") or {}).get("namespace") not in (None, "", namespace):
                raise api_error(400, "the namespace of the provided object does not match the namespace sent "
                                "on the request")
            if name in self._pods[namespace]:
                raise api_error(409, f'pods "{name}" already exists', reason="AlreadyExists")
            return copy.deepcopy(self._store(namespace, pod))

    def get(self, namespace: str, name: str, *, timeout: tuple[float, float] | None = None) -> Pod | None:
        self._before("get")
        with self._lock:
            self._record(Call("get", namespace, name, timeout=timeout))
            pod = self._pods[namespace].get(name)
            return copy.deepcopy(pod) if pod is not None else None

    def delete(self, namespace: str, name: str, *, uid: str = "", grace_period_seconds: int | None = None,
               timeout: tuple[float, float] | None = None) -> bool:
        self._before("delete")
        with self._lock:
            self._record(Call("delete", namespace, name, uid=uid, grace_period_seconds=grace_period_seconds,
                              timeout=timeout))
            pod = self._pods[namespace].get(name)
            if pod is None:
                return False
            theirs = pod["metadata"]["uid"]
            if uid and uid != theirs:
                raise api_error(409, f'Operation cannot be fulfilled on Pod "{name}": Precondition failed: '
                                f"UID in precondition: {uid}, UID in object meta: {theirs}")
            del self._pods[namespace][name]
            self._changed("DELETED", pod)
            return True

    def list(self, namespace: str, *, label_selector: str = "", limit: int = 500,
             continue_token: str = "") -> PodList:
        self._before("list")
        with self._lock:
            self._record(Call("list", namespace))
            offset = int(continue_token or 0)
            pods = [p for _, p in sorted(self._all(namespace)) if _selected(p, label_selector)]
            page = pods[offset:offset + limit]
            more = offset + limit < len(pods)
            return PodList(copy.deepcopy(page), str(offset + limit) if more else "", str(self._rv))

    def watch(self, namespace: str, resource_version: str, *, label_selector: str = "", timeout_seconds: int = 300,
              bookmarks: bool = True) -> FakeWatch:
        self._before("watch")
        with self._lock:
            self._record(Call("watch", namespace, resource_version=resource_version))
            start = int(resource_version or 0)
            if start < self._compacted:
                raise api_error(410, f"too old resource version: {start} ({self._compacted})")
            if resource_version in ("", "0"):  # "any": the current pods as ADDED events
                events = [("ADDED", p) for _, p in sorted(self._all(namespace))]
            else:
                events = [(etype, p) for rv, etype, p in self._changes
                          if rv > start and (not namespace or p["metadata"]["namespace"] == namespace)]
            return FakeWatch([{"type": etype, "object": copy.deepcopy(p)} for etype, p in events
                              if _selected(p, label_selector)], idle_seconds=self.watch_idle_seconds)

    # -- internals -------------------------------------------------------------------------------------
    def _before(self, verb: str) -> None:
        with self._lock:
            actions = self._actions.get(verb)
            action = actions.popleft() if actions else None
        if action is not None:
            action()

    # (the lock is held below)
    def _record(self, call: Call) -> None:
        self.calls.append(call)
        faults = self._faults.get(call.verb)
        if faults:
            raise faults.popleft()

    def _all(self, namespace: str) -> list[tuple[tuple[str, str], Pod]]:
        spaces = [namespace] if namespace else list(self._pods)
        return [((ns, name), pod) for ns in spaces for name, pod in self._pods[ns].items()]

    def _store(self, namespace: str, pod: Pod) -> Pod:
        stored = copy.deepcopy(pod)
        meta = stored.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["uid"] = f"00000000-0000-4000-8000-{next(self._uids):012d}"
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stored["status"] = {"phase": "Pending"}
        self._pods[namespace][meta["name"]] = stored
        self._changed("ADDED", stored)
        return stored

    def _changed(self, event_type: str, pod: Pod) -> None:
        self._rv += 1
        pod["metadata"]["resourceVersion"] = str(self._rv)
        self._changes.append((self._rv, event_type, copy.deepcopy(pod)))


class FakeWatch:
    """The events of one watch request, then ``idle_seconds`` without any; ``interrupt()`` ends the
    iteration (any thread)."""

    def __init__(self, events: list[dict[str, Any]], *, idle_seconds: float = 0.0) -> None:
        self._events = events
        self._idle_seconds = idle_seconds
        self._interrupted = threading.Event()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    @property
    def opened(self) -> bool:
        return True  # a refused watch raised from FakePodApi.watch

    def interrupt(self) -> None:
        self._interrupted.set()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for event in self._events:
            if self._interrupted.is_set():
                return
            yield event
        self._interrupted.wait(self._idle_seconds)


def _selected(pod: Pod, selector: str) -> bool:
    """``k=v``, ``k==v``, ``k!=v`` and ``k`` (exists) terms, comma-separated, all must hold."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term not in labels:
            return False
    return True

