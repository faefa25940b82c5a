"""The whole kubestream pipeline for one key prefix and one namespace, wired once:

    executor (DbStandIn, driven like a scheduler loop) -> launch stream -> launcher processes ->
    apiserver -> simulated kubelet -> watcher process -> result stream -> executor.sync()

so that a test says ``pipeline.start(); pipeline.submit(work); pipeline.run_until(keys)``. Launchers
and the watcher are the real CLI (``Components``); the simulated kubelet is whatever the caller runs
for the namespace (a thread in tests, a process in the benchmark).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

from devkit.cluster import ClusterState
from devkit.components import Components
from devkit.probe import Streams
from devkit.scheduler import DbStandIn, Driver, start_executor
from kubestream.settings import Settings


class Pipeline:
    """Launchers, the watcher and executors for ``settings``; ``stop()`` ends all of them.

    ``setenv`` sets the executor's ``AIRFLOW__KUBESTREAM__*`` variables (``monkeypatch.setenv`` in
    tests). Launchers and the watcher reach the apiserver with ``cluster``'s kubeconfigs of their
    identities unless given others (``launcher_kubeconfig`` / ``watcher_kubeconfig``, e.g. through a proxy).
    """

    def __init__(self, settings: Settings, cluster: ClusterState, components: Components, *,
                 setenv: Callable[[str, str], object] = os.environ.__setitem__, kubelet: Any = None,
                 launcher_kubeconfig: str | None = None, watcher_kubeconfig: str | None = None) -> None:
        self.settings, self.cluster, self.components = settings, cluster, components
        self.kubelet = kubelet
        self.launcher_kubeconfig = launcher_kubeconfig or cluster.kubeconfig("launcher")
        self.watcher_kubeconfig = watcher_kubeconfig or cluster.kubeconfig("watcher")
        self._setenv = setenv
        self._executors: list[DbStandIn] = []
        self._driver: Driver | None = None
        self.launchers: list[subprocess.Popen[bytes]] = []
        self.watchers: list[subprocess.Popen[bytes]] = []

    # -- components ---------------------------------------------------------------------------------
    def launcher(self, *, kubeconfig: str | None = None, **overrides: str) -> subprocess.Popen[bytes]:
        """One more ``kubestream launcher`` (settings overrides as keywords: ``launch_concurrency="2"``)."""
        proc = self.components.start("launcher", self.settings, kubeconfig or self.launcher_kubeconfig, **overrides)
        self.launchers.append(proc)
        return proc

    def watcher(self, *, kubeconfig: str | None = None, **overrides: str) -> subprocess.Popen[bytes]:
        """One more ``kubestream watcher`` (the first one leads, the others stand by)."""
        proc = self.components.start("watcher", self.settings, kubeconfig or self.watcher_kubeconfig, **overrides)
        self.watchers.append(proc)
        return proc

    def start(self, launchers: int = 1, **launcher_overrides: str) -> list[subprocess.Popen[bytes]]:
        """``launchers`` launchers (with the overrides) and one watcher; returns the launchers."""
        procs = [self.launcher(**launcher_overrides) for _ in range(launchers)]
        self.watcher()
        return procs

    def wait_serving(self, streams: Streams, *, timeout: float = 90) -> None:
        """Until every launcher has read its launch streams once and, if a watcher runs, one watches
        (it has checkpointed a resourceVersion); fails at once if one of them exits."""
        procs = [*self.launchers, *self.watchers]

        def serving() -> bool:
            launchers = all(streams.consumers(q) >= len(self.launchers) for q in self.settings.queues)
            return launchers and (not self.watchers or all(streams.watching(ns)
                                                           for ns in self.settings.namespaces_to_watch()))

        self.components.wait(serving, timeout=timeout, interval=0.2, what="launchers and watcher serving",
                             procs=procs)

    # -- the scheduler's side -----------------------------------------------------------------------
    @property
    def driver(self) -> Driver:
        """The current executor's driver (the first executor starts on first use)."""
        if self._driver is None:
            self._driver = self.new_driver()
        return self._driver

    @property
    def executor(self) -> DbStandIn:
        executor: DbStandIn = self.driver.executor
        return executor

    def new_driver(self, **overrides: str) -> Driver:
        """A freshly started executor (settings overrides as keywords: ``scheduler_id="b"``), now the current one."""
        executor = start_executor(self.settings, self._setenv, **overrides)
        self._executors.append(executor)
        self._driver = Driver(executor)
        return self._driver

    def submit(self, workloads: Iterable[Any]) -> None:
        self.driver.submit(workloads)

    def step(self) -> None:
        self.driver.step()

    def run_until(self, keys: Iterable[Any], *, timeout: float, what: str = "final states") -> dict[Any, str]:
        """Drive the current executor until every key has a final state; returns every final state."""
        return self.driver.run_until(keys, timeout=timeout, what=what)

    # -- teardown -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Terminate every executor, then stop this pipeline's launchers and watchers."""
        for executor in self._executors:
            executor.terminate()
        self._executors.clear()
        self._driver = None
        self.components.stop([*self.launchers, *self.watchers])
        self.launchers.clear()
        self.watchers.clear()
