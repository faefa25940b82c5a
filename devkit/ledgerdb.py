"""The executor with the Airflow DB stood in for by what the task pods did (``bench.chaos``). Imports Airflow.

In Airflow, a task's process writes the task's final state to the DB before its pod ends; the executor reads
it for pods that succeeded, and for running tasks whose Redis record vanished (``reconcile``). ``DbStandIn``
answers "success" for every task, which would hide a task reported final although its pod never ran.
``LedgerDb`` answers what a ``PodLedger`` saw the task's newest pod do: "success" (Succeeded), "failed"
(Failed), or nothing (no pod of the task finished: the DB would still say queued or running). When a task's
pod is not known to have finished yet, the ledger first catches up with the API, so a pod that finished a
moment before the question is never missed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from devkit.podwatch import PodLedger
from devkit.scheduler import DbStandIn, executor_env
from kubestream.settings import Settings


class LedgerDb(DbStandIn):
    ledger: PodLedger | None = None

    def task_states_from_db(self, keys: Sequence[Any]) -> dict[Any, str | None]:
        if self.ledger is None:
            raise RuntimeError("LedgerDb needs a PodLedger")
        answers = {k: self.ledger.outcome(k.pod_name()) for k in keys}
        if any(state is None for state in answers.values()) and self.ledger.catch_up():
            answers = {k: self.ledger.outcome(k.pod_name()) for k in keys}
        return answers


def start_ledger_executor(settings: Settings, ledger: PodLedger,
                          setenv: Callable[[str, str], object] = os.environ.__setitem__,
                          logger: logging.Logger | None = None, **overrides: str) -> LedgerDb:
    """A started ``LedgerDb`` configured like ``settings`` (see ``devkit.scheduler.start_executor``), logging
    to ``logger`` when given (instead of Airflow's console logging)."""
    for name, value in executor_env(settings, **overrides).items():
        setenv(name, value)
    executor = LedgerDb()
    executor.ledger = ledger
    if logger is not None:
        executor._log = logger
    executor.start()
    return executor
