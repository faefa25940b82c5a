"""Airflow's ``pod_mutation_hook`` for kubestream's pods: run in the scheduler, shipped as a JSON merge patch.

The KubernetesExecutor builds each worker pod in the scheduler (template -> generated -> pod_override) and
hands it to ``airflow.settings.pod_mutation_hook`` before creating it. kubestream's launchers build pods
without Airflow, so the scheduler does the part only it can: when the deployment defines a hook
(``airflow_local_settings`` or an ``airflow.policy`` plugin; found once, at the first dispatch), it builds
the pod it can see with the launchers' own pure merge (``podspec.build_pod``: the task's
``pod_template_file``, else the executor's ``pod_template_file`` setting), runs the hook on it as a
``V1Pod``, and ships what the hook changed as ``LaunchTask.pod_mutation``, an RFC 7386 merge patch
(``kubestream.mergepatch``). The launcher applies it to the pod it builds, re-asserts the pod's identity,
then applies its own pod policy, which a message can never override.

Without a hook nothing of this runs: no pod is built in the scheduler and messages carry no patch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubestream import mergepatch
from kubestream.executor.launches import ExecutorConfigError
from kubestream.kubeapi import ModelCodec
from kubestream.messages import LaunchTask
from kubestream.settings import Settings
from kubestream.workers.podspec import Pod, PodSpecError, build_pod, conceal_workload, load_template_yaml

log = logging.getLogger(__name__)

Hook = Callable[[Any], object]


class PodMutationHookError(Exception):
    """The deployment's pod_mutation_hook raised for a task (the task fails with this reason)."""


def airflow_hook() -> Hook | None:
    """The deployment's pod mutation hook as Airflow calls it, or None when it is Airflow's default no-op.

    ``airflow.settings.pod_mutation_hook`` dispatches to the hook implementations registered with
    Airflow's policy plugin manager (``airflow_local_settings`` functions, ``airflow.policy`` plugins);
    with none registered it does nothing. A replaced ``airflow.settings.pod_mutation_hook`` counts as
    defined too. Read at call time, as the provider's pod generator reads it.
    """
    import airflow.settings

    current = airflow.settings.pod_mutation_hook
    default = (getattr(current, "__module__", "") == "airflow.settings"
               and getattr(current, "__qualname__", "") == "pod_mutation_hook")
    if default and not airflow.settings.get_policy_plugin_manager().hook.pod_mutation_hook.get_hookimpls():
        return None

    def call(pod: Any) -> object:
        hook: Hook = airflow.settings.pod_mutation_hook
        return hook(pod)

    return call


@dataclass
class PodMutation:
    """Runs one deployment's hook on the pods of this scheduler's tasks (see the module docstring)."""

    hook: Hook
    settings: Settings
    template: Pod | None  # the executor's pod_template_file: what the hook sees for tasks without their own
    codec: ModelCodec

    @classmethod
    def for_airflow(cls, settings: Settings) -> PodMutation | None:
        """The mutation for this deployment, None when it defines no pod_mutation_hook (then nothing runs)."""
        hook = airflow_hook()
        if hook is None:
            return None
        return cls(hook, settings, load_executor_template(settings.pod_template_file), ModelCodec())

    def patch(self, msg: LaunchTask, namespace: str) -> dict[str, Any] | None:
        """The merge patch of the hook's changes to ``msg``'s pod in ``namespace`` (None: it changed nothing).

        Raises PodMutationHookError when the hook raises (the provider raises PodMutationHookException).
        """
        try:
            pod = build_pod(key=msg.key, namespace=namespace, image=self.settings.worker_image,
                            workload_json=msg.workload_json, scheduler_id=msg.scheduler_id,
                            template=msg.pod_template or self.template, pod_override=msg.pod_override,
                            key_prefix=self.settings.key_prefix)
        except PodSpecError as exc:
            raise ExecutorConfigError(f"invalid pod spec: {exc}") from None
        v1pod = self.codec.from_dict(pod, "V1Pod")
        before = self.codec.to_dict(v1pod)  # as the model holds it: fields the client does not know are gone
        try:
            self.hook(v1pod)
        except Exception as exc:  # whatever the deployment's hook raises fails the task
            raise PodMutationHookError(f"pod_mutation_hook failed: {type(exc).__name__}: {exc}") from exc
        try:
            after = self.codec.to_dict(v1pod)
        except Exception as exc:  # e.g. a hook that set a field to something unserialisable
            raise PodMutationHookError(f"pod_mutation_hook left a pod that does not serialise: "
                                       f"{type(exc).__name__}: {exc}") from exc
        patch = mergepatch.diff(conceal_workload(before, msg.workload_json),
                                conceal_workload(after, msg.workload_json))
        return patch or None


def load_executor_template(path: str) -> Pod | None:
    """The pod template the scheduler shows the hook for tasks without a ``pod_template_file`` of their own:
    the ``pod_template_file`` setting when the scheduler can read it (the same file as the launchers', so
    the hook sees what they build), else none (logged: a hook editing a list the launchers' template
    fills, e.g. containers or volumes, replaces that list as the hook saw it)."""
    if not path:
        return None
    try:
        return load_template_yaml(Path(path).read_text())
    except (OSError, PodSpecError) as exc:
        log.warning("pod_mutation_hook: cannot read pod_template_file %s (%s); the hook sees pods without it",
                    path, exc)
        return None
