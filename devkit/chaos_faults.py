"""The faults ``python -m bench.chaos`` plays against a running pipeline, one kind per phase.

Each ``Fault`` breaks one thing kubestream promises to survive, the way it breaks in production:

=====================  ==========================================================================
name                   one strike
=====================  ==========================================================================
launcher-kill          kill -9 of a launcher (round robin), a new one started (a Deployment would)
launcher-term          SIGTERM of a launcher, a new one started at once; the old one must exit 0
watcher-kill           kill -9 of the watcher, a new one started (it waits out the dead one's lease)
apiserver-restart      the kube-apiserver stopped (SIGTERM and SIGKILL in turn) and started again:
                       watches end, and resuming one from its resourceVersion meets a real 410
redis-restart-aof      redis-server stopped (SIGKILL and SIGTERM in turn) and started again with its
                       AOF (appendfsync everysec): up to a second of writes lost
redis-restart-empty    redis-server killed and started again with no persistence: everything lost
api-errors             a proxy in front of the apiserver (launchers and watcher go through it)
                       answers bursts of 429 (Retry-After) and 503 to pod creates, 503 to the
                       watcher's list/watch, 500 to pod deletes, or cuts every live connection
quota                  a ResourceQuota on pods of the task namespace tightened to a few pods for a
                       while, then lifted; a controller thread recounts the pods still running
                       (no kube-controller-manager here), so the quota fills and drains
launcher-stop          a launcher paused (SIGSTOP) past ``reclaim_idle_seconds``, then resumed
=====================  ==========================================================================

``python -m bench.failover`` builds its own variants: ``LauncherKill(every=2, same_name=True)`` and
``WatcherKill(every=4, leader=True)`` restart the victim under its own name (a stable identity), the latter
kills whichever watcher holds the lease and times each takeover; ``NoFault`` is its baseline.

A fault works on a ``Stage`` (the phase's cluster, Redis, namespace and pipeline): ``prepare`` runs before
the phase's components start (a proxy, a quota, the AOF), ``strike`` once every ``every`` seconds while
the fault plays (it returns what it did), ``heal`` when the fault window ends (lift what lasts; the
components keep running) and ``close`` after the phase. ``FaultPlayer`` plays one in a thread.
Components are replaced under ``Stage.lock``, so a supervisor holding it never mistakes a component
killed on purpose for one that died; the replacement is started by the phase's main thread
(``Stage.want`` / ``Stage.start_wanted``).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devkit.cluster import ClusterState, LocalCluster
from devkit.faultproxy import HttpFaultProxy
from devkit.isolated import proxied_kubeconfig
from devkit.pipeline import Pipeline
from devkit.redisserver import RedisServer
from kubestream.keys import Keys
from kubestream.kubeapi import MERGE_PATCH, PodApi, request
from kubestream.settings import Settings

Proc = subprocess.Popen[bytes]


@dataclass
class Stage:
    """What the faults of one phase act on. ``pipeline`` is set once the phase's components start."""

    local: LocalCluster
    cluster: ClusterState
    redis: RedisServer | None  # None: Redis is not ours to restart (a test's shared server)
    admin: Any  # an ApiClient acting as the admin
    namespace: str
    work: Path
    settings: Settings
    launcher_overrides: dict[str, str] = field(default_factory=dict)
    launcher_kubeconfig: str | None = None  # None: direct to the apiserver
    watcher_kubeconfig: str | None = None
    pipeline: Pipeline | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    _serial: itertools.count[int] = field(default_factory=itertools.count)
    _wanted: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def pipe(self) -> Pipeline:
        if self.pipeline is None:
            raise RuntimeError("the phase's components are not started")
        return self.pipeline

    def new_launcher(self, name: str | None = None) -> Proc:
        """One more launcher, named like a new pod of a Deployment would be (a new consumer) unless ``name``
        is given (a stable identity: a StatefulSet's pod, a restarted container)."""
        with self.lock:
            return self.pipe.launcher(consumer_name=name or f"launcher-{next(self._serial)}",
                                      **self.launcher_overrides)

    def new_watcher(self, name: str | None = None) -> Proc:
        with self.lock:
            return self.pipe.watcher(consumer_name=name or f"watcher-{next(self._serial)}")

    def want(self, kind: str, name: str | None = None) -> None:
        """Ask for a replacement ``kind`` (launcher or watcher; named ``name``, else a new name), started by
        ``start_wanted``. Faults run in a thread of their own, and a child gets SIGTERM when the *thread* that
        started it ends (PR_SET_PDEATHSIG): children are started by the phase's main thread only."""
        with self.lock:
            self._wanted.append((kind, name))

    def start_wanted(self) -> int:
        """Start the replacements asked for (call from the thread that outlives the phase); how many."""
        with self.lock:
            wanted, self._wanted = self._wanted, []
            for kind, name in wanted:
                self.new_launcher(name) if kind == "launcher" else self.new_watcher(name)
        return len(wanted)

    def forget(self, proc: Proc) -> None:
        """``proc`` is no longer one of the pipeline's launchers or watchers (it is being stopped)."""
        with self.lock:
            for procs in (self.pipe.launchers, self.pipe.watchers):
                if proc in procs:
                    procs.remove(proc)

    def reap(self, proc: Proc) -> None:
        """Stop tracking an exited (or exiting) child: waits for it, SIGKILL after 15 s."""
        self.pipe.components.stop([proc])

    def name_of(self, proc: Proc) -> str:
        for name, child in zip(self.pipe.components.names(), self.pipe.components.procs, strict=True):
            if child is proc:
                return name
        return f"pid {proc.pid}"


class Fault:
    name = ""
    summary = ""
    every = 5.0  # seconds between strikes (after the previous strike returned)
    first = 3.0  # seconds before the first strike

    def prepare(self, stage: Stage) -> None:
        """Before the phase's components start."""

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        """Break something once; returns what was done."""
        raise NotImplementedError

    def heal(self, stage: Stage) -> None:
        """The fault window is over: undo what lasts (components keep running)."""

    def close(self, stage: Stage) -> None:
        """The phase is over."""


# -- processes ----------------------------------------------------------------------------------------


class NoFault(Fault):
    """Nothing breaks: the baseline a fault's figures are compared with. Never strikes."""

    name, summary, every, first = "none", "no fault", 3600.0, 3600.0

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        return "nothing"


class LauncherKill(Fault):
    """kill -9 of a launcher, in turn. ``same_name``: the replacement keeps the victim's consumer name (a
    restarted container, a StatefulSet's pod), else it gets a new one (a Deployment's new pod)."""

    name, summary, every = "launcher-kill", "kill -9 of a launcher, restarted", 4.0

    def __init__(self, *, every: float | None = None, first: float | None = None, same_name: bool = False) -> None:
        self._turn = itertools.count()
        self.same_name = same_name
        self.every = self.every if every is None else every
        self.first = self.first if first is None else first
        self._names: list[str] = []  # same_name: the launchers, in the order they are killed
        if same_name:
            self.summary = "kill -9 of a launcher, restarted under the same name"

    def _victim(self, stage: Stage) -> Proc:
        launchers = stage.pipe.launchers
        if not self.same_name:
            return launchers[next(self._turn) % len(launchers)]
        by_name = {stage.name_of(proc): proc for proc in launchers}
        self._names = self._names or sorted(by_name)
        for _ in self._names:  # round robin by name; one not restarted yet is skipped
            proc = by_name.get(self._names[next(self._turn) % len(self._names)])
            if proc is not None:
                return proc
        raise RuntimeError("no launcher to kill")

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        with stage.lock:
            victim = self._victim(stage)
            name = stage.name_of(victim)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            stage.forget(victim)
            stage.reap(victim)
            stage.want("launcher", name if self.same_name else None)
        return f"kill -9 {name}, " + ("restarted" if self.same_name else "replaced")


class LauncherTerm(Fault):
    name, summary, every = "launcher-term", "SIGTERM of a launcher, restarted", 6.0
    unclean: list[str]

    def __init__(self) -> None:
        self._turn = itertools.count()
        self.unclean = []  # launchers that did not exit 0 after SIGTERM

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        with stage.lock:
            launchers = stage.pipe.launchers
            victim = launchers[next(self._turn) % len(launchers)]
            name = stage.name_of(victim)
            victim.send_signal(signal.SIGTERM)
            stage.forget(victim)
            stage.want("launcher")  # the Deployment's replacement starts at once
        try:
            code = victim.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        stage.reap(victim)
        if code != 0:
            self.unclean.append(f"{name} exited with {code} after SIGTERM")
        return f"SIGTERM {name} (exit {code}), replaced"


class WatcherKill(Fault):
    """kill -9 of the watcher (the first one), replaced under a new name. ``leader``: the watcher holding a lease
    acquired since the last kill is killed instead and restarted under the same name; a strike that finds no
    such leader kills nothing (a new leader is never killed the moment it appears). Every acquisition of the
    lease is timed (``takeovers()``)."""

    name, summary, every = "watcher-kill", "kill -9 of the watcher, restarted", 8.0

    def __init__(self, *, every: float | None = None, first: float | None = None, leader: bool = False) -> None:
        self.every = self.every if every is None else every
        self.first = self.first if first is None else first
        self.leader = leader
        if leader:
            self.summary = "kill -9 of the leading watcher, restarted under the same name"
        self.kills: list[tuple[float, int]] = []  # (time.monotonic(), lease epoch) of each kill
        self.acquisitions: list[tuple[float, int]] = []  # (time.monotonic() first seen, epoch)
        self._client: redis.Redis | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lease, as Redis has it
    def _keys(self, stage: Stage) -> tuple[str, str]:
        keys = Keys(stage.settings.key_prefix)
        return keys.watcher_lease, keys.watcher_fence

    def _epoch(self, stage: Stage) -> int:
        assert self._client is not None
        return int(self._client.hget(self._keys(stage)[1], "epoch") or 0)

    def _monitor(self, stage: Stage) -> None:
        """Note when each new lease epoch first shows (every 20 ms)."""
        last = -1
        while not self._stopping.wait(0.02):
            try:
                epoch = self._epoch(stage)
            except redis.RedisError:
                continue
            if epoch != last:
                self.acquisitions.append((time.monotonic(), epoch))
                last = epoch

    def prepare(self, stage: Stage) -> None:
        if self.leader:
            self._client = redis.Redis.from_url(stage.settings.redis_url, socket_timeout=5)
            self._thread = threading.Thread(target=self._monitor, args=(stage,), name="lease-monitor", daemon=True)
            self._thread.start()

    def close(self, stage: Stage) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.close()

    def takeovers(self) -> list[float | None]:
        """Per kill: seconds until the lease was next acquired (None: not before the phase ended)."""
        out: list[float | None] = []
        for at, epoch in self.kills:
            later = [t for t, e in self.acquisitions if e > epoch and t >= at]
            out.append(round(min(later) - at, 3) if later else None)
        return out

    def _leader(self, stage: Stage) -> tuple[Proc, int] | None:
        """The live watcher holding a lease acquired since the last kill, and its epoch; None if there is none."""
        assert self._client is not None
        since = self.kills[-1][1] if self.kills else 0
        raw = self._client.get(self._keys(stage)[0])
        epoch = self._epoch(stage)
        holder = raw.decode() if isinstance(raw, bytes) else raw
        if not holder or epoch <= since:
            return None
        for proc in stage.pipe.watchers:
            if stage.name_of(proc) == holder and proc.poll() is None:
                return proc, epoch
        return None

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        with stage.lock:
            found = self._leader(stage) if self.leader else (stage.pipe.watchers[0], 0)
            if found is None:
                return "no leader (no lease acquired since the last kill): nothing killed"
            victim, epoch = found
            name = stage.name_of(victim)
            os.kill(victim.pid, signal.SIGKILL)
            self.kills.append((time.monotonic(), epoch))
            victim.wait()
            stage.forget(victim)
            stage.reap(victim)
            stage.want("watcher", name if self.leader else None)
        return f"kill -9 {name}" + (f" (leading, lease epoch {epoch}), restarted" if self.leader else ", replaced")


class LauncherStop(Fault):
    name, summary, every = "launcher-stop", "SIGSTOP of a launcher past reclaim_idle_seconds, then SIGCONT", 3.0

    def __init__(self) -> None:
        self._turn = itertools.count()

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        pause = stage.settings.reclaim_idle_seconds + 5
        with stage.lock:
            launchers = stage.pipe.launchers
            victim = launchers[next(self._turn) % len(launchers)]
            name = stage.name_of(victim)
            os.kill(victim.pid, signal.SIGSTOP)
        try:
            stop.wait(pause)  # resumed even when the fault window ends meanwhile
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        return f"SIGSTOP {name} for {pause:.0f} s, then SIGCONT"


# -- servers ------------------------------------------------------------------------------------------------


class ApiserverRestart(Fault):
    name, summary, every, first = "apiserver-restart", "kube-apiserver restarts (SIGTERM, SIGKILL)", 15.0, 5.0

    def __init__(self) -> None:
        self._signals = itertools.cycle((signal.SIGTERM, signal.SIGKILL))

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        sig = next(self._signals)
        t0 = time.monotonic()
        stage.local.restart_apiserver(sig=sig)
        return f"apiserver {signal.Signals(sig).name}, ready again after {time.monotonic() - t0:.1f} s"


class RedisRestart(Fault):
    every, first = 12.0, 5.0

    def __init__(self, *, aof: bool) -> None:
        self.aof = aof
        if aof:
            self.name, self.summary = "redis-restart-aof", "redis-server restarts with AOF everysec (SIGKILL, SIGTERM)"
            self._signals = itertools.cycle((signal.SIGKILL, signal.SIGTERM))
        else:
            self.name, self.summary = "redis-restart-empty", "redis-server restarts with no persistence (data lost)"
            self._signals = itertools.cycle((signal.SIGKILL,))

    def _server(self, stage: Stage) -> RedisServer:
        if stage.redis is None:
            raise RuntimeError(f"{self.name} needs a Redis server of its own to restart")
        return stage.redis

    def prepare(self, stage: Stage) -> None:
        self._server(stage).set_appendonly(self.aof)

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        sig = next(self._signals)
        t0 = time.monotonic()
        server = self._server(stage)
        server.restart(sig=sig)
        with redis.Redis.from_url(server.url, socket_timeout=5) as client:
            keys = int(client.dbsize())
        return (f"redis-server {signal.Signals(sig).name}, serving again after {time.monotonic() - t0:.1f} s "
                f"with {keys} keys")

    def close(self, stage: Stage) -> None:
        if self.aof:
            self._server(stage).set_appendonly(False)


# -- the API -------------------------------------------------------------------------------------------------


class ApiErrors(Fault):
    name, summary, every, first = "api-errors", "429/503/500 bursts and cut connections from a proxy", 2.0, 2.0

    def __init__(self) -> None:
        self.proxy: HttpFaultProxy | None = None
        self._turn = itertools.count()

    def prepare(self, stage: Stage) -> None:
        cluster = stage.cluster
        self.proxy = HttpFaultProxy("127.0.0.1", cluster.apiserver_port, ca_file=cluster.ca_file).start()
        for identity in ("launcher", "watcher"):
            path = proxied_kubeconfig(stage.work, self.proxy.url, cluster.tokens[identity], identity)
            setattr(stage, f"{identity}_kubeconfig", path)

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        proxy = self.proxy
        assert proxy is not None
        strikes: list[tuple[str, Callable[[], None]]] = [
            ("429 (Retry-After: 1) to the next 20 pod creates",
             lambda: proxy.fail_next(20, status=429, retry_after="1", only_method="POST")),
            ("cut every live connection", proxy.cut_all),
            ("503 to the next 20 pod creates", lambda: proxy.fail_next(20, status=503, retry_after=None)),
            ("503 to the next 3 pod lists/watches",
             lambda: proxy.fail_next(3, status=503, retry_after=None, only_method="GET")),
            ("500 to the next 5 pod deletes",
             lambda: proxy.fail_next(5, status=500, retry_after=None, only_method="DELETE")),
            ("503 to 30% of pod creates for 2 s", lambda: proxy.fail_randomly(0.3, status=503)),
        ]
        what, act = strikes[next(self._turn) % len(strikes)]
        act()
        if "for 2 s" in what:
            stop.wait(2.0)
            proxy.fail_randomly(0)
        return what

    def heal(self, stage: Stage) -> None:
        if self.proxy is not None:
            self.proxy.clear_faults()

    def close(self, stage: Stage) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


QUOTA = "chaos-pods"
LIFTED = 100000


class Quota(Fault):
    name, summary, every = "quota", "a ResourceQuota on pods that fills (a few pods) and drains", 4.0

    def __init__(self, tight: int = 8, tight_seconds: float = 8.0) -> None:
        self.tight, self.tight_seconds = tight, tight_seconds
        self._hard = LIFTED
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.most_used = 0  # the most pods counted while the quota was tight

    def _patch(self, stage: Stage, path: str, body: dict[str, Any]) -> None:
        request(stage.admin, "PATCH", f"/api/v1/namespaces/{stage.namespace}/resourcequotas/{QUOTA}{path}", body,
                content_type=MERGE_PATCH, timeout=(5.0, 10.0))

    def _recount(self, stage: Stage) -> None:
        """Play the quota controller: ``used`` = pods not finished (what the admission plugin counts)."""
        pods = PodApi(stage.admin).list(stage.namespace, limit=5000).items
        used = sum(1 for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        self._patch(stage, "/status", {"status": {"hard": {"pods": str(self._hard)}, "used": {"pods": str(used)}}})
        self.refreshes += 1
        if self._hard != LIFTED:
            self.most_used = max(self.most_used, used)

    def _controller(self, stage: Stage) -> None:
        while not self._stopping.wait(0.5):
            try:
                self._recount(stage)
            except Exception:  # noqa: BLE001 - the apiserver may be busy: next round
                continue

    def _set_hard(self, stage: Stage, hard: int) -> None:
        self._hard = hard
        self._patch(stage, "", {"spec": {"hard": {"pods": str(hard)}}})
        self._recount(stage)

    def prepare(self, stage: Stage) -> None:
        request(stage.admin, "POST", f"/api/v1/namespaces/{stage.namespace}/resourcequotas", {
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": QUOTA},
            "spec": {"hard": {"pods": str(LIFTED)}}}, timeout=(5.0, 10.0))
        self._recount(stage)
        self._thread = threading.Thread(target=self._controller, args=(stage,), name="quota-controller", daemon=True)
        self._thread.start()

    def strike(self, stage: Stage, stop: threading.Event) -> str:
        self.most_used = 0
        self._set_hard(stage, self.tight)
        try:
            stop.wait(self.tight_seconds)
        finally:
            self._set_hard(stage, LIFTED)
        return (f"quota of {self.tight} pods for {self.tight_seconds:.0f} s "
                f"({self.most_used} pods not finished at most), then lifted")

    def heal(self, stage: Stage) -> None:
        self._set_hard(stage, LIFTED)

    def close(self, stage: Stage) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            request(stage.admin, "DELETE", f"/api/v1/namespaces/{stage.namespace}/resourcequotas/{QUOTA}",
                    timeout=(5.0, 10.0))
        except Exception:  # noqa: BLE001 - the namespace is left behind anyway
            pass


FAULTS: dict[str, Callable[[], Fault]] = {
    "launcher-kill": LauncherKill,
    "launcher-term": LauncherTerm,
    "watcher-kill": WatcherKill,
    "apiserver-restart": ApiserverRestart,
    "redis-restart-aof": lambda: RedisRestart(aof=True),
    "redis-restart-empty": lambda: RedisRestart(aof=False),
    "api-errors": ApiErrors,
    "quota": Quota,
    "launcher-stop": LauncherStop,
}


def make_fault(name: str) -> Fault:
    try:
        return FAULTS[name]()
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


# -- playing one ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strike:
    at: float  # seconds since the player started
    took: float
    what: str


class FaultPlayer:
    """Plays ``fault`` on ``stage`` in a thread: a strike every ``fault.every`` seconds until ``stop()``,
    which waits for a strike in progress to end (a paused launcher is resumed) and heals."""

    def __init__(self, fault: Fault, stage: Stage) -> None:
        self.fault, self.stage = fault, stage
        self.strikes: list[Strike] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fault-{fault.name}", daemon=True)
        self._t0 = 0.0

    def start(self) -> FaultPlayer:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = self.fault.first
        while not self._stop.wait(wait):
            t = time.monotonic()
            try:
                what = self.fault.strike(self.stage, self._stop)
            except Exception as exc:  # noqa: BLE001 - reported with the phase's figures
                self.errors.append(f"{self.fault.name} strike failed: {type(exc).__name__}: {exc}")
                what = "failed"
            self.strikes.append(Strike(round(t - self._t0, 2), round(time.monotonic() - t, 2), what))
            wait = self.fault.every

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.fault.heal(self.stage)
