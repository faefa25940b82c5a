"""Recover a TaskKey from a pod's annotations (the provider's annotation names), without airflow."""

from __future__ import annotations

from collections.abc import Mapping

from kubestream.taskkey import TaskKey


def key_from_annotations(annotations: Mapping[str, str] | None) -> TaskKey | None:
    """The task key the launcher wrote on the pod, or None if it is not a task pod."""
    if not annotations:
        return None
    try:
        return TaskKey(
            dag_id=annotations["dag_id"],
            task_id=annotations["task_id"],
            run_id=annotations["run_id"],
            try_number=int(annotations["try_number"]),
            map_index=int(annotations.get("map_index", -1)),
        )
    except (KeyError, ValueError, TypeError):
        return None
