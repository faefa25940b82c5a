"""A standby watcher's warm list: the task pods of one namespace kept in memory (list, then watch),
nothing published.

When the standby takes over and the checkpointed resourceVersion is missing or expired (410), the
relist is done from this copy instead of listing every task pod from the apiserver at the worst
moment: one cheap list (``limit=1``) reads the apiserver's current resourceVersion, and once the copy
has caught up with it (it holds every pod the old leader could have seen, so no task is failed as
vanished by a stale copy) its pods are published and the new leader watches from the copy's
resourceVersion. With a fresh checkpoint a takeover needs no list at all: it resumes the watch from
the checkpoint, and the copy is dropped at the first event.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kubestream.backoff import backoff_delay
from kubestream.kubeapi import Gone, PodApi, PodWatch

log = logging.getLogger("kubestream.watcher")


class WarmList:
    def __init__(self, pods: PodApi, namespace: str, selector: str, *, watch_timeout_seconds: int = 300) -> None:
        self.api, self.ns, self.selector, self.watch_timeout = pods, namespace, selector, watch_timeout_seconds
        self._pods: dict[str, dict[str, Any]] = {}  # by uid
        self._rv = ""  # the resourceVersion the copy is consistent with; "" until the first list is done
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: PodWatch | None = None
        self._thread = threading.Thread(target=self._run, name=f"warm-{namespace}", daemon=True)

    def start(self) -> WarmList:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.interrupt()
        self._thread.join(timeout=10)

    def caught_up(self, current: str, timeout: float) -> tuple[list[dict[str, Any]], str] | None:
        """The pods and the resourceVersion they are consistent with, once that resourceVersion is at
        least ``current`` (read from the apiserver after the old leader died, so the copy holds every
        pod the old leader could have published); None if it is not within ``timeout`` seconds, or if
        resourceVersions are not integers here (they cannot be compared)."""
        if not current.isdigit():
            return None
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._rv.isdigit() and int(self._rv) >= int(current):
                    return list(self._pods.values()), self._rv
            if time.monotonic() >= deadline or self._stop.wait(0.05):
                return None

    def _run(self) -> None:
        failures = 0
        rv = ""
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._list()
                rv = self._follow(rv)
                failures = 0
            except Gone:
                rv = ""
            except Exception as exc:  # noqa: BLE001 - a standby's copy: retried, never fatal
                delay = backoff_delay(failures, base=0.5, cap=10.0)
                failures += 1
                log.info("warm list of %s: %s; retrying in %.1fs", self.ns, exc, delay, extra={"namespace": self.ns})
                self._stop.wait(delay)

    def _list(self) -> str:
        pods: dict[str, dict[str, Any]] = {}
        cont = ""
        while True:
            page = self.api.list(self.ns, label_selector=self.selector, limit=500, continue_token=cont)
            pods.update((_uid(p), p) for p in page.items)
            cont = page.continue_token
            if not cont:
                break
        with self._lock:
            self._pods, self._rv = pods, page.resource_version
        return page.resource_version

    def _follow(self, rv: str) -> str:
        watch = self.api.watch(self.ns, rv, label_selector=self.selector, timeout_seconds=self.watch_timeout)
        self._watch = watch
        if self._stop.is_set():
            watch.interrupt()
        try:
            for event in watch:
                etype, obj = event.get("type", ""), event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                with self._lock:
                    if etype == "DELETED":
                        self._pods.pop(_uid(obj), None)
                    elif etype in ("ADDED", "MODIFIED"):
                        self._pods[_uid(obj)] = obj
                    self._rv = rv
        finally:
            self._watch = None
        return rv


def _uid(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
