"""A simulated kubelet (after KWOK's pod stages) that acts only through the real Kubernetes API.

With only etcd + kube-apiserver nothing schedules or runs pods. ``SimKubelet`` registers a
Ready Node, binds unscheduled pods to it and writes pod status as a kubelet would: Pending
(ContainerCreating) -> Running -> Succeeded/Failed, or one of the waiting errors. What happens
to a pod is its ``kubestream.io/sim`` rule (``kubelet_rules``); in ``mode="process"`` pods
without that annotation run their first container's command as a local subprocess instead.

Design: one watch thread (JSON list+watch through ``kubestream.kubeapi.PodApi``; relists on 410
or when the API server comes back), one timer thread (a heap of due transitions; also reaps
subprocesses and sends the node heartbeat) and a small pool of workers for the API calls.
Level-triggered: every event re-plans the pod from its current status (``kubelet_rules.plan``),
and a step is identified by a token naming the state it leaves, so re-seen pods never restart
their lifecycle.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit import kubelet_rules as kr
from devkit.kubeletlogs import KubeletLogServer, NoLog, log_refusal
from kubestream.backoff import backoff_delay
from kubestream.kubeapi import MERGE_PATCH, ApiError, Gone, PodApi, PodWatch, request

log = logging.getLogger("kubestream.kubelet")

HEARTBEAT_SECONDS = 10.0
WATCH_SECONDS = 60  # server-side timeout of one watch request; then it resumes from its RV
REQUEST_TIMEOUT = (5.0, 30.0)
KILL_GRACE_CAP = 5.0  # SIGKILL a deleted pod's process after min(grace, this) seconds
HOST_IP = "127.0.0.1"


@functools.lru_cache(maxsize=512)
def _rule(text: str) -> kr.Rule:
    try:
        return kr.parse_rule(text)
    except ValueError as exc:  # surfaced on the pod, as a kubelet surfaces a bad pod spec
        return kr.Rule("createcontainerconfigerror", message=f"invalid {kr.SIM_ANNOTATION} annotation: {exc}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _transient(exc: BaseException) -> bool:
    """A kubelet keeps retrying: only 404 (pod gone), 409 (replaced / bound elsewhere) and 422 are final.
    401/403 included: a restarting apiserver answers them until its RBAC caches are loaded. Any other
    error (connection errors...) is retried too."""
    if isinstance(exc, ApiError):
        return exc.status not in (404, 409, 422)
    return True


@dataclass(eq=False)
class _Track:
    """What this kubelet knows about one pod (by namespace/name; a new uid is a new track)."""

    namespace: str
    name: str
    uid: str
    pod: dict[str, Any]
    step: kr.Step | None = None  # scheduled, not yet done
    seq: int = 0  # heap entries with another seq are stale
    done: str | None = None  # token of the last step carried out
    attempts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    kill_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one action at a time per pod

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class SimKubelet:
    """A kubelet for one Node, acting only through ``api`` (the kubelet identity).

    ``mode="rules"``: every pod follows its ``kubestream.io/sim`` rule, else ``default_rule``.
    ``mode="process"``: a pod without that annotation runs its first container's command as a
    local subprocess (cwd ``<work_dir>/<ns>/<pod>/``, output ``<work_dir>/<ns>/<pod>.log``, env
    ``os.environ + extra_env + the container's literal env``); the other containers share its
    state. ``namespaces``: only pods there (None: all namespaces).
    """

    def __init__(self, api: Any, *, node_name: str = "kubestream-node",
                 mode: str = "rules", default_rule: str = "succeed", namespaces: Collection[str] | None = None,
                 work_dir: Path | None = None, extra_env: Mapping[str, str] | None = None, workers: int = 8) -> None:
        if mode not in ("rules", "process"):
            raise ValueError(f"mode must be 'rules' or 'process', got {mode!r}")
        self.api, self.node_name, self.mode = api, node_name, mode
        self.pods = PodApi(api)
        self.default_rule = kr.parse_rule(default_rule)
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        self.work_dir = Path(work_dir) if work_dir else None
        self.extra_env = dict(extra_env or {})
        # one namespace: list and watch it only; else every namespace ("")
        self._list_ns = next(iter(self.namespaces)) if self.namespaces and len(self.namespaces) == 1 else ""
        self._workers = workers
        self._cv = threading.Condition()  # guards everything below
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._heap: list[tuple[float, int, _Track]] = []
        self._live: set[_Track] = set()  # tracks with a running subprocess
        self._seq, self._ips = itertools.count(1), itertools.count(1)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._watch_handle: PodWatch | None = None
        self._since = _now()
        self._logs: KubeletLogServer | None = None
        self.pod_ordinals = kr.PodOrdinals()  # errimagepull:times=N counts the pods of each name

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> SimKubelet:
        if self.mode == "process" and self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="kubestream-kubelet-"))
        self._logs = KubeletLogServer(self._container_log, host=HOST_IP).start()  # pods/log, via the apiserver
        self._register_node()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"kubelet-{self.node_name}")
        for target, name in ((self._watch_loop, "watch"), (self._timer_loop, "timer")):
            thread = threading.Thread(target=target, name=f"kubelet-{self.node_name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("kubelet %s started (%s mode, pods of %s)", self.node_name, self.mode,
                 ", ".join(sorted(self.namespaces)) if self.namespaces is not None else "all namespaces")
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cv:
            self._cv.notify_all()
        watch = self._watch_handle
        if watch is not None:
            watch.interrupt()  # unblocks the watch thread's read
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads.clear()
        if self._logs is not None:
            self._logs.stop()
            self._logs = None
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._cv:
            procs = [t.proc for t in self._live if t.proc]
            self._live.clear()
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 2
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        log.info("kubelet %s stopped", self.node_name)

    def run_forever(self) -> None:
        done = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> SimKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API plumbing -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        """One request: JSON in, JSON out (no model (de)serialization); ApiError on non-2xx."""
        return request(self.api, method, path, body, content_type=content_type, timeout=REQUEST_TIMEOUT)

    def _submit(self, fn: Any, *args: Any) -> None:
        if self._pool and not self._stopping.is_set():
            try:
                self._pool.submit(fn, *args)
            except RuntimeError:  # shut down meanwhile
                pass

    # -- node ---------------------------------------------------------------------------------------
    def _register_node(self) -> None:
        name = self.node_name
        try:
            self._call("POST", "/api/v1/nodes", kr.node_object(name, _now(), self._since, host_ip=HOST_IP,
                                                              runtime=f"kubestream-sim://{self.mode}"))
        except ApiError as exc:
            if exc.status != 409:
                raise
        # The TaintNodesByCondition admission plugin taints new nodes not-ready; with no node
        # controller to lift it, the kubelet does (kubelet RBAC allows patching its node).
        taints = (self._call("GET", f"/api/v1/nodes/{name}").get("spec") or {}).get("taints") or []
        kept = [t for t in taints if not t.get("key", "").startswith("node.kubernetes.io/not-ready")]
        if kept != taints:
            self._call("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": kept or None}}, content_type=MERGE_PATCH)
        self._heartbeat()
        log.info("node %s registered and Ready", name)

    def _heartbeat(self) -> None:
        status: dict[str, Any] = {"conditions": kr.node_conditions(_now(), self._since)}
        if self._logs is not None:  # where the apiserver reads pods/log: this process's log server
            status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self._logs.port}}
        try:
            self._call("PATCH", f"/api/v1/nodes/{self.node_name}/status", {"status": status},
                       content_type=MERGE_PATCH)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self._register_node()

    def _safe_heartbeat(self) -> None:
        try:
            self._heartbeat()
        except Exception as exc:  # noqa: BLE001 - retried at the next beat
            log.warning("node %s heartbeat failed: %s", self.node_name, exc)

    # -- watch ----------------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        rv: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                began = time.monotonic()
                rv = self._watch(rv)
                failures = 0
                if time.monotonic() - began < 0.5:  # a watch that ends at once: do not spin
                    self._stopping.wait(0.5)
            except Gone:
                log.info("kubelet %s: watch expired (410), relisting", self.node_name)
                rv = None
            except Exception as exc:  # noqa: BLE001 - connection lost: resume from rv
                failures = self._watch_failed(exc, failures)

    def _watch_failed(self, exc: BaseException, failures: int) -> int:
        if not self._stopping.is_set():
            log.log(logging.WARNING if failures == 0 else logging.DEBUG,
                    "kubelet %s: watch failed (%s); retrying", self.node_name, exc)
            self._stopping.wait(backoff_delay(failures, base=0.1, cap=2.0))
        return failures + 1

    def _in_scope(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def _relist(self) -> str:
        seen: set[tuple[str, str]] = set()
        token = ""
        while True:
            page = self.pods.list(self._list_ns, limit=500, continue_token=token)
            for pod in page.items:
                self._observe(pod)
                seen.add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
            token = page.continue_token
            if not token:
                break
        with self._cv:
            for key in [key for key in self._tracks if key not in seen]:
                self._orphan(self._tracks.pop(key))
        log.debug("kubelet %s: listed %d pods at rv %s", self.node_name, len(seen), page.resource_version)
        return page.resource_version

    def _watch(self, rv: str) -> str:
        """Observe the events after ``rv`` until the watch ends (``Gone`` when ``rv`` expired)."""
        watch = self.pods.watch(self._list_ns, rv, timeout_seconds=WATCH_SECONDS)
        self._watch_handle = watch
        if self._stopping.is_set():
            watch.interrupt()
        try:
            for event in watch:
                kind, obj = event["type"], event["object"]
                rv = obj["metadata"]["resourceVersion"]
                if kind == "DELETED":
                    self._forget(obj)
                elif kind in ("ADDED", "MODIFIED"):
                    self._observe(obj)
        finally:
            self._watch_handle = None
        return rv

    # -- level-triggered state ----------------------------------------------------------------------
    def _observe(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if not self._in_scope(meta["namespace"]):
            return
        key = (meta["namespace"], meta["name"])
        with self._cv:
            track = self._tracks.get(key)
            if track is None or track.uid != meta.get("uid"):
                if track is not None:
                    self._orphan(track)
                track = self._tracks[key] = _Track(key[0], key[1], meta.get("uid", ""), pod)
            track.pod = pod
            self._reconcile(track)

    def _forget(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._cv:
            track = self._tracks.get(key)
            if track is not None and track.uid == meta.get("uid"):
                self._orphan(self._tracks.pop(key))

    def _orphan(self, track: _Track) -> None:
        """The pod is gone (or replaced): cancel its steps, kill its process (caller holds the lock)."""
        track.step = None
        if track.proc is not None and track.exit_code is None:
            log.info("%s: pod gone, killing its process %d", track.ref, track.proc.pid)
            _signal_group(track.proc, signal.SIGKILL)

    def _rule_for(self, pod: dict[str, Any]) -> kr.Rule | None:
        text = ((pod.get("metadata") or {}).get("annotations") or {}).get(kr.SIM_ANNOTATION)
        fallback = None if self.mode == "process" else self.default_rule
        if text is None:
            return fallback
        meta = pod.get("metadata") or {}
        ordinal = self.pod_ordinals.of(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))
        return kr.rule_for_attempt(_rule(text), ordinal, fallback)

    def _reconcile(self, track: _Track) -> None:
        """Plan the pod's next step from its current status (caller holds the lock)."""
        proc = kr.Proc(True, track.exit_code) if track.proc is not None else None
        step = kr.plan(track.pod, self.node_name, self._rule_for(track.pod), proc)
        if step is None:
            track.step = None
            if track.proc is None or track.exit_code is not None:  # nothing more to do: forget it
                if self._tracks.get((track.namespace, track.name)) is track:
                    del self._tracks[(track.namespace, track.name)]
            return
        if step.token == track.done or (track.step is not None and step.token == track.step.token):
            return
        track.step, track.attempts = step, 0
        self._push(track, step.delay + (random.uniform(0, step.jitter) if step.jitter else 0.0))

    def _push(self, track: _Track, delay: float) -> None:
        track.seq = next(self._seq)
        heapq.heappush(self._heap, (time.monotonic() + delay, track.seq, track))
        self._cv.notify()

    def _timer_loop(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        while not self._stopping.is_set():
            try:
                next_beat = self._tick(next_beat)
            except Exception:  # keep the clock running (logged with its traceback)
                log.exception("kubelet %s: timer loop error", self.node_name)
                self._stopping.wait(0.1)

    def _tick(self, next_beat: float) -> float:
        """Hand due steps to the workers, reap processes, heartbeat; returns the next beat time."""
        due: list[tuple[_Track, kr.Step, int]] = []
        with self._cv:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                _, seq, track = heapq.heappop(self._heap)
                if track.step is not None and track.seq == seq:  # else superseded
                    due.append((track, track.step, seq))
            if not due:
                wait = min(self._heap[0][0] - now if self._heap else 1.0, next_beat - now)
                self._cv.wait(max(0.0, min(wait, 0.05) if self._live else wait))
        for track, step, seq in due:
            self._submit(self._execute, track, step, seq)
        if self._live:
            self._poll_processes()
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + HEARTBEAT_SECONDS
            self._submit(self._safe_heartbeat)
        return next_beat

    def _execute(self, track: _Track, step: kr.Step, seq: int) -> None:
        with track.lock:
            with self._cv:
                if track.step is not step or track.seq != seq:
                    return  # superseded by a newer event
                pod = track.pod
            try:
                self._act(track, step, pod)
                failure: BaseException | None = None
            except Exception as exc:  # noqa: BLE001 - classified below
                failure = exc
            with self._cv:
                if track.step is not step or track.seq != seq:
                    return
                if failure is not None and _transient(failure) and not self._stopping.is_set():
                    track.attempts += 1
                    log.log(logging.WARNING if track.attempts == 1 else logging.DEBUG,
                            "%s: %s failed (%s); retrying", track.ref, step.action, failure)
                    self._push(track, backoff_delay(track.attempts - 1, base=0.1, cap=2.0))
                    return
                if failure is not None:  # 404: the pod is gone; 409: bound elsewhere / replaced
                    level = logging.DEBUG if getattr(failure, "status", None) in (404, 409) else logging.WARNING
                    log.log(level, "%s: %s failed: %s", track.ref, step.action, failure)
                track.step, track.done, track.attempts = None, step.token, 0

    # -- actions -------------------------------------------------------------------------------------
    def _act(self, track: _Track, step: kr.Step, pod: dict[str, Any]) -> None:
        action, now = step.action, _now()
        if action == "bind":
            self._call("POST", f"/api/v1/namespaces/{track.namespace}/pods/{track.name}/binding", {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": track.name, "uid": track.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}})
            log.debug("%s: bound to %s", track.ref, self.node_name)
        elif action == "kill":
            grace = float((pod["metadata"].get("deletionGracePeriodSeconds")) or 0)
            if track.proc is not None and track.proc.poll() is None:
                log.info("%s: deleted, terminating process %d", track.ref, track.proc.pid)
                track.kill_at = time.monotonic() + min(grace, KILL_GRACE_CAP)
                _signal_group(track.proc, signal.SIGTERM)
        elif action == "delete":
            if self.pods.delete(track.namespace, track.name, uid=track.uid, grace_period_seconds=0):
                log.info("%s: deletion finished", track.ref)
        elif action == "spawn":
            self._spawn(track, pod, now)
        else:
            self._patch_status(track, kr.status_for(step, pod, now, host_ip=HOST_IP, pod_ip=self._pod_ip()))
            log.info("%s: %s", track.ref, step.reason or action)

    def _pod_ip(self) -> str:
        n = next(self._ips)
        return f"10.244.{n // 254 % 256}.{n % 254 + 1}"

    def _patch_status(self, track: _Track, status: dict[str, Any]) -> None:
        self._call("PATCH", f"/api/v1/namespaces/{track.namespace}/pods/{track.name}/status",
                   {"metadata": {"uid": track.uid}, "status": status}, content_type=MERGE_PATCH)

    # -- pods/log ------------------------------------------------------------------------------------
    def _container_log(self, namespace: str, name: str, container: str) -> bytes | None:
        """What ``/containerLogs`` serves: a process-mode pod's captured output, else fixed lines
        (``rule_log_lines``); None for a pod of a namespace this kubelet does not serve or that is gone.
        A container that never started has no log (``NoLog``, as a kubelet refuses it)."""
        if not self._in_scope(namespace):
            return None
        pod = self.pods.get(namespace, name, timeout=REQUEST_TIMEOUT)
        if pod is None:
            return None
        refusal = log_refusal(pod, container)
        if refusal is not None:
            raise NoLog(refusal)
        if self.work_dir is not None:
            path = self.work_dir / namespace / f"{name}.log"
            if path.is_file():
                return path.read_bytes()
        return rule_log_lines(namespace, name, container)

    # -- process mode --------------------------------------------------------------------------------
    def _spawn(self, track: _Track, pod: dict[str, Any], now: str) -> None:
        if track.proc is None:  # not on a retry of the Running patch
            container = (pod["spec"].get("containers") or [{}])[0]
            argv = kr.container_argv(container)
            assert self.work_dir is not None
            pod_dir = self.work_dir / track.namespace / track.name
            pod_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **self.extra_env, **kr.container_env(container)}
            try:
                if not argv:
                    raise OSError("no command or args: process mode cannot run an image's entrypoint")
                with open(self.work_dir / track.namespace / f"{track.name}.log", "ab") as out:
                    proc = subprocess.Popen(argv, cwd=pod_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                log.info("%s: cannot start %s: %s", track.ref, argv[:1], exc)
                self._patch_status(track, kr.status_terminated(pod, now, 128, "StartError", host_ip=HOST_IP,
                                                               message=str(exc)))
                return
            with self._cv:
                track.proc = proc
                self._live.add(track)
            log.info("%s: started process %d: %s", track.ref, proc.pid, argv)
        self._patch_status(track, kr.status_running(pod, now, host_ip=HOST_IP, pod_ip=self._pod_ip()))

    def _poll_processes(self) -> None:
        with self._cv:
            live = list(self._live)
        now = time.monotonic()
        for track in live:
            assert track.proc is not None
            code = track.proc.poll()
            if code is None:
                if track.kill_at is not None and now >= track.kill_at:
                    log.info("%s: grace period over, killing process %d", track.ref, track.proc.pid)
                    _signal_group(track.proc, signal.SIGKILL)
                    track.kill_at = None
                continue
            with self._cv:
                self._live.discard(track)
                track.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
                log.info("%s: process %d exited with %d", track.ref, track.proc.pid, track.exit_code)
                if self._tracks.get((track.namespace, track.name)) is track:
                    self._reconcile(track)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # started in its own session: its group is its pid
    except (ProcessLookupError, PermissionError):
        pass


RULE_LOG_LINES = 50


def rule_log_lines(namespace: str, name: str, container: str) -> bytes:
    """The fixed log of a rule-driven pod's container: ``RULE_LOG_LINES`` numbered lines."""
    return b"".join(f"simulated log of {namespace}/{name} container {container}: line {i}\n".encode()
                    for i in range(1, RULE_LOG_LINES + 1))
