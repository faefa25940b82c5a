"""What kubestream reads of Airflow's objects, as Protocols.

The executor is handed Airflow objects (``TaskInstanceKey``, ``TaskInstance`` or
its DTO, ``ExecuteTask``) and calls back into ``BaseExecutor``. These Protocols
name exactly the attributes kubestream relies on, so the type checker sees them
without importing Airflow's classes into kubestream's own code paths.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

from kubestream.taskkey import TaskKey


class TaskInstanceKeyLike(Protocol):
    """Airflow's ``TaskInstanceKey`` (a NamedTuple)."""

    @property
    def dag_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def try_number(self) -> int: ...
    @property
    def map_index(self) -> int: ...


class TaskInstanceLike(Protocol):
    """A ``TaskInstance`` or the ``TaskInstanceDTO`` inside a workload."""

    @property
    def key(self) -> Any: ...  # a TaskInstanceKey: kept as Airflow's own type for Airflow's dicts
    @property
    def dag_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def map_index(self) -> int: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def executor_config(self) -> Any: ...
    @property
    def external_executor_id(self) -> str | None: ...


class WorkloadLike(Protocol):
    """An ``ExecuteTask`` workload."""

    @property
    def ti(self) -> TaskInstanceLike: ...
    def model_dump_json(self) -> str: ...


class LoggerLike(Protocol):
    """The executor's logger (a stdlib or structlog logger)."""

    def info(self, event: str, *args: Any) -> Any: ...
    def warning(self, event: str, *args: Any) -> Any: ...
    def error(self, event: str, *args: Any) -> Any: ...


class ResultSink(Protocol):
    """What applying results needs of the executor (``BaseExecutor`` plus kubestream's lookups)."""

    @property
    def running(self) -> Collection[Any]: ...
    @property
    def log(self) -> LoggerLike: ...
    def fail(self, key: Any, info: Any = None) -> None: ...
    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True) -> None: ...
    def running_state(self, key: Any, info: Any = None) -> None: ...
    def external_id(self, ti_key: Any) -> str | None: ...
    def task_states_from_db(self, keys: Sequence[TaskKey]) -> dict[TaskKey, str | None]: ...
