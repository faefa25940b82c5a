"""The identity of one task instance try, independent of Airflow's classes.

``TaskKey`` mirrors Airflow's ``TaskInstanceKey`` (dag_id, task_id, run_id,
try_number, map_index) so the launchers and watcher can handle keys without
importing airflow. ``pod_name`` is a deterministic function of the key: every
redelivery of the same launch meets 409 AlreadyExists instead of a second pod.
The key travels on its pod as annotations: ``task_annotations`` writes them
(the launcher), ``key_from_annotations`` reads them back (the watcher).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POD_NAME_MAX = 63
MANAGED_LABEL = "kubestream.io/managed"  # "true" on every task pod: the watcher's selector
DISPATCH_ANNOTATION = "kubestream.io/dispatch"  # the external executor id of the dispatch that made the pod
# the key prefix of the kubestream deployment (or team) that made the pod: others leave it alone
PREFIX_ANNOTATION = "kubestream.io/key-prefix"
_HASH_LEN = 10
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class TaskKey:
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int = -1

    def digest(self) -> str:
        """A stable hex digest of every field (the key's unique part)."""
        raw = "\x1f".join(
            (self.dag_id, self.task_id, self.run_id, str(self.try_number), str(self.map_index))
        )
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def pod_name(self) -> str:
        """A DNS-1123 subdomain-safe pod name (<= 63 chars), unique per key.

        Readable part from dag and task ids (lowercased, non [a-z0-9-] runs
        collapsed to '-'), then a hash of the whole key, so two keys never
        share a name even when their readable parts do.
        """
        readable = _NOT_DNS.sub("-", f"{self.dag_id}-{self.task_id}".lower()).strip("-")
        suffix = self.digest()[:_HASH_LEN]
        room = POD_NAME_MAX - len("ks-") - 1 - len(suffix)
        readable = readable[:room].strip("-")
        return f"ks-{readable}-{suffix}" if readable else f"ks-{suffix}"

    def as_tuple(self) -> tuple[str, str, str, int, int]:
        return (self.dag_id, self.task_id, self.run_id, self.try_number, self.map_index)

    def __str__(self) -> str:
        mi = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"{self.dag_id}.{self.task_id}{mi} run={self.run_id} try={self.try_number}"


def task_annotations(key: TaskKey) -> dict[str, str]:
    """Exact key values under the provider's annotation names (see its ``annotations_to_key``).

    Unlike the provider, ``run_id`` is written even when empty, so the round
    trip through :func:`key_from_annotations` is exact for every key.
    """
    annotations = {"dag_id": key.dag_id, "task_id": key.task_id, "try_number": str(key.try_number)}
    if key.map_index >= 0:
        annotations["map_index"] = str(key.map_index)
    annotations["run_id"] = key.run_id
    return annotations


def made_by(pod: Mapping[str, Any], key_prefix: str) -> bool:
    """Whether the kubestream of ``key_prefix`` made ``pod``: its prefix annotation names it (a pod
    without one, made before pods carried it, counts as its own). Another deployment's or team's pods
    in a shared namespace are neither published nor deleted."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(PREFIX_ANNOTATION, key_prefix) == key_prefix)


def key_from_annotations(annotations: Mapping[str, str] | None) -> TaskKey | None:
    """The task key :func:`task_annotations` wrote on a pod, or None if it is not a task pod."""
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
