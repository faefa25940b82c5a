"""Turn Airflow workloads into LaunchTask messages (airflow-aware, no I/O but template files)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubestream.executor.airflowtypes import WorkloadLike
from kubestream.messages import LaunchTask
from kubestream.taskkey import TaskKey
from kubestream.workers.policyload import template_file_allowed

if TYPE_CHECKING:
    from kubestream.executor.mutation import PodMutation


class ExecutorConfigError(ValueError):
    """The task's executor_config cannot be shipped (the task fails with this reason)."""


def task_key(ti_key: Any) -> TaskKey:
    """kubestream's key for an Airflow TaskInstanceKey (kept behind one helper for Airflow 3.4)."""
    return TaskKey(ti_key.dag_id, ti_key.task_id, ti_key.run_id, int(ti_key.try_number), int(ti_key.map_index))


def airflow_key(key: TaskKey) -> Any:
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey(key.dag_id, key.task_id, key.run_id, key.try_number, key.map_index)


def pod_to_dict(pod: Any) -> dict[str, Any]:
    """A V1Pod (or a dict already in API form) as an API JSON dict."""
    if isinstance(pod, dict):
        return pod
    to_dict = getattr(pod, "to_dict", None)
    if to_dict is None:
        raise ExecutorConfigError(f"pod_override must be a kubernetes.client.models.V1Pod, got {type(pod).__name__}")
    from kubestream.kubeapi import to_api_dict

    return to_api_dict(pod)


def executor_config_parts(
    executor_config: dict[str, Any] | None, template_dir: str = "",
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(pod_override, pod_template) from a KubernetesExecutor-style executor_config; a ``pod_template_file``
    must lie inside ``template_dir`` when one is configured (``pod_template_dir``)."""
    if not executor_config:
        return None, None
    if not isinstance(executor_config, dict):
        raise ExecutorConfigError(f"executor_config must be a dict, got {type(executor_config).__name__}")
    if executor_config.get("KubernetesExecutor"):
        raise ExecutorConfigError("the legacy executor_config={'KubernetesExecutor': {...}} form is not supported; "
                                  "use {'pod_override': V1Pod(...)}")
    override = executor_config.get("pod_override")
    template = None
    if path := executor_config.get("pod_template_file"):
        if not template_file_allowed(str(path), template_dir):
            raise ExecutorConfigError(f"pod_template_file {path!r} is outside pod_template_dir {template_dir!r}")
        try:
            template = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ExecutorConfigError(f"cannot read pod_template_file {path!r}: {exc}") from None
        if not isinstance(template, dict):
            raise ExecutorConfigError(f"pod_template_file {path!r} does not hold a pod mapping")
    return (pod_to_dict(override) if override is not None else None), template


def launch_message(workload: WorkloadLike, scheduler_id: str, template_dir: str = "", *,
                   mutation: PodMutation | None = None, ti_key: Any = None) -> LaunchTask:
    """The LaunchTask for one ExecuteTask workload; with ``mutation`` (the deployment's pod_mutation_hook) it
    carries the hook's changes to the task's pod as ``pod_mutation``. ``ti_key``: ``workload.ti.key`` when the
    caller has it already (Airflow builds a new one on each read).
    Raises ExecutorConfigError (a refused namespace, an invalid pod) or PodMutationHookError (the hook raised)."""
    ti = workload.ti
    override, template = executor_config_parts(ti.executor_config, template_dir)
    msg = LaunchTask(
        key=task_key(ti.key if ti_key is None else ti_key),
        queue=ti.queue or "default",
        scheduler_id=scheduler_id,
        workload_json=workload.model_dump_json(),
        external_executor_id=ti.external_executor_id or "",
        pod_override=override,
        pod_template=template,
    )
    if mutation is None:
        return msg
    try:
        namespace = mutation.settings.namespace_for_launch(msg.queue, msg.requested_namespace)
    except ValueError as exc:
        raise ExecutorConfigError(str(exc)) from None
    return replace(msg, pod_mutation=mutation.patch(msg, namespace))
