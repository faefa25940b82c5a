"""``airflow kubestream generate-dag-yaml``: the pods a DAG's tasks would get, offline.

Each task is rendered as a launcher would: ``executor_config`` split into pod_override /
pod_template (``launches.executor_config_parts``), ``build_pod`` over the configured
``pod_template_file``, then the launcher's pod policy (``pod_policy``, allowed images and
service accounts, the operator's overlay). No Redis, no Kubernetes, no Airflow database:
the DAG file is parsed with a DagBag. The workload argument is a placeholder (the real
one, with its token, exists only when the scheduler queues the task). A pod the policy
refuses is still written, with the refusal reported, since it is what a launcher would
fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubestream.executor.launches import executor_config_parts
from kubestream.settings import Settings
from kubestream.taskkey import TaskKey
from kubestream.workers.podpolicy import PolicyViolation, apply_policy
from kubestream.workers.podspec import build_pod, load_template_yaml
from kubestream.workers.policyload import load_pod_policy

RUN_ID = "generate-dag-yaml"
PLACEHOLDER_WORKLOAD = json.dumps({"generated": "the scheduler's ExecuteTask workload, with its token, goes here"})


@dataclass(frozen=True)
class Rendered:
    task_id: str
    path: Path
    refused: str  # the pod policy's refusal ('' = a launcher would create it)


def load_dag(dag_file: str, dag_id: str) -> Any:
    """The DAG ``dag_id`` parsed from ``dag_file`` (a file or folder), without the Airflow database."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dag_file, safe_mode=False)
    dag = bag.dags.get(dag_id)
    if dag is None:
        errors = "; ".join(f"{f}: {e}" for f, e in bag.import_errors.items()) or f"found {sorted(bag.dags)}"
        raise SystemExit(f"kubestream: no DAG {dag_id!r} in {dag_file} ({errors})")
    return dag


def render(dag: Any, settings: Settings, output: Path) -> list[Rendered]:
    """Write ``<output>/<dag_id>/<task_id>.yaml`` for every task of ``dag``."""
    template = (load_template_yaml(Path(settings.pod_template_file).read_text())
                if settings.pod_template_file else None)
    policy = load_pod_policy(settings)
    folder = output / dag.dag_id
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for task in dag.tasks:
        queue = getattr(task, "queue", None) or "default"
        namespace = settings.namespace_for_queue(queue)
        override, task_template = executor_config_parts(getattr(task, "executor_config", None) or {},
                                                        settings.pod_template_dir)
        pod = build_pod(key=TaskKey(dag.dag_id, task.task_id, RUN_ID, 1), namespace=namespace,
                        image=settings.worker_image, workload_json=PLACEHOLDER_WORKLOAD,
                        scheduler_id=settings.scheduler_id or RUN_ID, template=task_template or template,
                        pod_override=override)
        refused = ""
        try:
            pod = apply_policy(pod, policy, namespace=namespace)
        except PolicyViolation as exc:
            refused = str(exc)
        path = folder / f"{task.task_id}.yaml"
        path.write_text(yaml.safe_dump(pod, sort_keys=False))
        done.append(Rendered(task.task_id, path, refused))
    return done
