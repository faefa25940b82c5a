"""The scheduler's part, played for tests and the benchmark: the real executor with the Airflow DB
stood in for (``DbStandIn``), configured like given Settings (``start_executor``), and a loop that
triggers, syncs and collects the event buffer (``Driver``). Imports Airflow."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from devkit.procs import wait_for
from kubestream.executor import KubeStreamExecutor
from kubestream.settings import AIRFLOW_ENV_PREFIX, Settings


class DbStandIn(KubeStreamExecutor):
    """The executor, with the Airflow DB answering 'success' for tasks whose pod succeeded
    (nothing here runs a scheduler that would write it; the e2e tests do)."""

    def task_states_from_db(self, keys: Sequence[Any]) -> dict[Any, str | None]:
        return {k: "success" for k in keys}


def executor_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """``AIRFLOW__KUBESTREAM__*`` variables for ``settings`` and keyword overrides (``scheduler_id="b"``)."""
    env = settings.to_env(AIRFLOW_ENV_PREFIX)
    env.update({f"{AIRFLOW_ENV_PREFIX}{k.upper()}": v for k, v in overrides.items()})
    return env


def start_executor(settings: Settings, setenv: Callable[[str, str], object] = os.environ.__setitem__,
                   **overrides: str) -> DbStandIn:
    """A started executor that read ``settings`` (plus overrides) from Airflow's config, as a scheduler's
    would: the variables are set with ``setenv`` (``monkeypatch.setenv`` in tests)."""
    for name, value in executor_env(settings, **overrides).items():
        setenv(name, value)
    executor = DbStandIn()
    executor.start()
    return executor


class Driver:
    """Plays the scheduler loop for one executor: trigger, sync, collect the event buffer.

    ``events`` holds every (key, state, info) reported, in order; ``calls`` the wall time of each
    ``trigger_tasks`` and ``sync`` call."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.events: list[tuple[Any, str, Any]] = []
        self.calls: list[tuple[str, float]] = []

    def submit(self, workloads: Iterable[Any]) -> None:
        """Queue the workloads and trigger them all in one ``trigger_tasks`` call."""
        for w in workloads:
            self.executor.queue_workload(w, session=None)
        self._timed("trigger_tasks", lambda: self.executor.trigger_tasks(len(self.executor.queued_tasks)))

    def _timed(self, name: str, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return call()
        finally:
            self.calls.append((name, time.perf_counter() - t0))

    def step(self) -> None:
        """One ``sync()`` and one ``get_event_buffer()``."""
        self._timed("sync", self.executor.sync)
        for key, (state, info) in self.executor.get_event_buffer().items():
            self.events.append((key, str(state.value if hasattr(state, "value") else state), info))

    def finals(self) -> dict[Any, str]:
        """Each finished task's last reported state."""
        return {k: s for k, s, _ in self.events if s not in ("running", "queued")}

    def final_counts(self) -> Counter[Any]:
        """How many final events each task got (exactly one is right)."""
        return Counter(k for k, s, _ in self.events if s not in ("running", "queued"))

    def failures(self, key: Any) -> list[str]:
        """The info of each 'failed' event of a task."""
        return [info or "" for k, s, info in self.events if k == key and s == "failed"]

    def run_until(self, keys: Iterable[Any], *, timeout: float, what: str = "final states") -> dict[Any, str]:
        """Step until every key has a final state; returns ``finals()``."""
        wanted = set(keys)

        def done() -> bool:
            self.step()
            return wanted <= set(self.finals())

        wait_for(done, timeout=timeout, interval=0.05, what=what)
        return self.finals()
