"""The apiserver's side of a run: every pod object of one namespace, as a list+watch sees it.

``PodLedger(api, namespace).start()`` lists and watches the namespace's pods in a thread of its own
(resuming from its resourceVersion after a dropped connection, relisting on 410 Gone, e.g. after an
apiserver restart) and records each pod object by uid: its name, its dispatch annotation
(``kubestream.io/dispatch``, the external executor id whose launch made it) and the phases it was seen
in. It never writes to the API. From that record:

- ``creations()``: how many distinct pod objects (uids) were seen per (name, dispatch); more than one is
  a duplicate pod for one dispatch;
- ``outcome(name)``: what the newest finished pod of that name did (``"success"`` for Succeeded,
  ``"failed"`` for Failed), None if none was seen finishing;
- ``started(name, dispatch)``: a pod of that dispatch was seen Running or finished (its task started);
- ``catch_up()``: wait until every change made so far is recorded, so that a question asked right after
  a pod changed gets the answer a later look would give. It touches a sentinel pod of the ledger's own
  (bound to no real node, without kubestream's label: nothing runs or reports it) and waits for the watch
  to deliver that change: events arrive in resourceVersion order, so everything before it is in.

Blind spot: a pod created and deleted entirely while the watch is away and its resourceVersion expired
(410, relist) is not seen. The gap is the time between the last event the old watch delivered and the
relist, a fraction of a second around an apiserver restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubestream.backoff import backoff_delay
from kubestream.kubeapi import MERGE_PATCH, ApiError, Gone, PodApi, PodWatch, pods_path, request
from kubestream.taskkey import DISPATCH_ANNOTATION

log = logging.getLogger("devkit.podwatch")

WATCH_SECONDS = 60
SENTINEL = "podledger-sentinel"
FINISHED = {"Succeeded": "success", "Failed": "failed"}


@dataclass
class PodRecord:
    """One pod object (one uid) as seen through the API."""

    name: str
    uid: str
    dispatch: str
    seen_at: float  # time.monotonic() of the first sighting
    phases: set[str] = field(default_factory=set)
    finished_at: float | None = None

    @property
    def outcome(self) -> str | None:
        for phase, outcome in FINISHED.items():
            if phase in self.phases:
                return outcome
        return None


class PodLedger:
    """Records every pod object of ``namespace`` (``api``: an ApiClient allowed to list, watch, create and
    patch pods there, e.g. the admin's)."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.pods = PodApi(api)
        self.namespace = namespace
        self.relists = 0
        self._lock = threading.Condition()
        self._by_uid: dict[str, PodRecord] = {}
        self._by_name: dict[str, list[PodRecord]] = {}
        self._started: set[tuple[str, str]] = set()  # (name, dispatch) seen Running or finished
        self._rv = 0  # the newest resourceVersion whose changes are recorded
        self._ticks = 0
        self._stopping = threading.Event()
        self._watch: PodWatch | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> PodLedger:
        """Create the sentinel pod, start watching; returns once the first list is recorded."""
        try:
            self.pods.create(self.namespace, {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": SENTINEL},
                "spec": {"nodeName": "podledger-nowhere", "containers": [{"name": "c", "image": "none"}]}})
        except ApiError as exc:
            if exc.status != 409:
                raise
        self._thread = threading.Thread(target=self._loop, name=f"podledger-{self.namespace}", daemon=True)
        self._thread.start()
        with self._lock:
            if not self._lock.wait_for(lambda: self._rv > 0, timeout=60):
                raise TimeoutError(f"pods of {self.namespace} not listed within 60 s")
        return self

    def stop(self) -> None:
        self._stopping.set()
        watch = self._watch
        if watch is not None:
            watch.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=15)

    # -- questions ---------------------------------------------------------------------------
    def records(self, name: str | None = None) -> list[PodRecord]:
        """Every pod object seen (of that name, when given)."""
        with self._lock:
            return list(self._by_uid.values()) if name is None else list(self._by_name.get(name, ()))

    def creations(self) -> Counter[tuple[str, str]]:
        """(pod name, dispatch) -> distinct pod objects seen."""
        with self._lock:
            return Counter((r.name, r.dispatch) for r in self._by_uid.values())

    def outcome(self, name: str) -> str | None:
        """What the newest finished pod named ``name`` did ("success" / "failed"), None if none finished."""
        with self._lock:
            done = [r for r in self._by_name.get(name, ()) if r.finished_at is not None]
        return max(done, key=lambda r: r.finished_at or 0.0).outcome if done else None

    def started(self, name: str, dispatch: str) -> bool:
        """A pod of this name and dispatch was seen Running or finished."""
        with self._lock:
            return (name, dispatch) in self._started

    def catch_up(self, timeout: float = 30.0) -> bool:
        """Wait until every change made before this call is recorded; False if the API did not answer or
        the watch did not get there within ``timeout`` (e.g. the apiserver is restarting)."""
        deadline = time.monotonic() + timeout
        target = 0
        while not target:
            self._ticks += 1
            try:
                touched = request(self.api, "PATCH", pods_path(self.namespace, SENTINEL),
                                  {"metadata": {"annotations": {"devkit/tick": str(self._ticks)}}},
                                  content_type=MERGE_PATCH, timeout=(5.0, 10.0))
                target = int(touched["metadata"]["resourceVersion"])
            except Exception as exc:  # noqa: BLE001 - the apiserver may be restarting: try again
                if time.monotonic() > deadline:
                    log.warning("catch_up: the sentinel pod of %s could not be touched: %s", self.namespace, exc)
                    return False
                time.sleep(0.2)
        with self._lock:
            return self._lock.wait_for(lambda: self._rv >= target, timeout=max(0.0, deadline - time.monotonic()))

    # -- the watch --------------------------------------------------------------------------------
    def _loop(self) -> None:
        rv = ""
        failures = 0
        while not self._stopping.is_set():
            try:
                if not rv:
                    rv = self._relist()
                rv = self._follow(rv)
                failures = 0
            except Gone:
                rv = ""  # expired (an apiserver restart, a compaction): list again
            except Exception as exc:  # noqa: BLE001 - connection lost: resume from rv after a pause
                if self._stopping.is_set():
                    return
                log.debug("pod ledger of %s: watch failed (%s), retrying", self.namespace, exc)
                self._stopping.wait(backoff_delay(failures, base=0.1, cap=2.0))
                failures += 1

    def _relist(self) -> str:
        token, rv = "", ""
        while True:
            page = self.pods.list(self.namespace, limit=500, continue_token=token)
            for pod in page.items:
                self._record(pod)
            rv = rv or page.resource_version
            token = page.continue_token
            if not token:
                break
        self.relists += 1
        self._advance(rv)
        return rv

    def _follow(self, rv: str) -> str:
        watch = self.pods.watch(self.namespace, rv, timeout_seconds=WATCH_SECONDS)
        self._watch = watch
        if self._stopping.is_set():
            watch.interrupt()
        try:
            for event in watch:
                obj = event["object"]
                rv = str(obj["metadata"]["resourceVersion"])
                if event["type"] != "BOOKMARK":
                    self._record(obj)
                self._advance(rv)
        finally:
            self._watch = None
        return rv

    def _record(self, pod: dict[str, Any]) -> None:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("name") == SENTINEL:
            return
        uid = str(meta.get("uid") or "")
        with self._lock:
            record = self._by_uid.get(uid)
            if record is None:
                dispatch = str((meta.get("annotations") or {}).get(DISPATCH_ANNOTATION) or "")
                record = self._by_uid[uid] = PodRecord(str(meta.get("name")), uid, dispatch, time.monotonic())
                self._by_name.setdefault(record.name, []).append(record)
            phase = str(status.get("phase") or "")
            if phase:
                record.phases.add(phase)
                if phase == "Running" or phase in FINISHED:
                    self._started.add((record.name, record.dispatch))
                if phase in FINISHED and record.finished_at is None:
                    record.finished_at = time.monotonic()

    def _advance(self, rv: str) -> None:
        try:
            value = int(rv)
        except ValueError:  # resourceVersions are etcd revisions here; anything else is not comparable
            return
        with self._lock:
            if value > self._rv:
                self._rv = value
                self._lock.notify_all()
