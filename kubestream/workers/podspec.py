"""Worker pod specs as plain dicts (Kubernetes API JSON form, camelCase keys).

Pure functions, no I/O, importing neither airflow nor kubernetes. They
reproduce the provider's ``KubernetesExecutor`` pod construction
(``PodGenerator.construct_pod`` / ``reconcile_pods``) on the dicts that
``ApiClient().sanitize_for_serialization`` produces, so launchers can build
pods without the Kubernetes model classes.
"""

from __future__ import annotations

import hashlib
import re
import string
from functools import reduce
from typing import Any

import yaml

from kubestream import mergepatch
from kubestream.taskkey import MANAGED_LABEL, PREFIX_ANNOTATION, TaskKey, task_annotations

__all__ = ["WORKLOAD_PLACEHOLDER", "PodSpecError", "build_pod", "conceal_workload", "load_template_yaml", "merge_pods",
           "safe_label_value", "task_labels"]

BASE_CONTAINER = "base"
EXECUTE_WORKLOAD = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string"]
WORKLOAD_PLACEHOLDER = "<kubestream:workload>"
"""Stands for the task's workload JSON in a ``pod_mutation``: its token never travels twice, and a hook
that rewrites the containers still runs this task's workload (``build_pod`` puts it back)."""
_COMMAND_FIELDS = ("command", "args")

_LABEL_MAX = 63
_LABEL_HASH_LEN = 9
_ALNUM = frozenset(string.ascii_letters + string.digits)
_LABEL_CHARS = _ALNUM | frozenset("-_.")
_SAFE_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", re.ASCII)
# Fields of V1ObjectMeta / V1PodSpec typed dict[str, str]: an empty one is
# falsy for the provider's merge, while an empty *model* (e.g. resources: {})
# is a truthy object and so still overrides the base.
_MAP_FIELDS = frozenset({"labels", "annotations", "nodeSelector", "overhead"})
_CONTAINER_LISTS = ("volumeMounts", "env", "envFrom", "ports", "volumeDevices")
_META_LISTS = ("managedFields", "finalizers", "ownerReferences")

Pod = dict[str, Any]


class PodSpecError(ValueError):
    """A pod template or pod_override is structurally invalid."""


# --------------------------------------------------------------------------- labels


def safe_label_value(value: str) -> str:
    """Same output as the provider's ``make_safe_label_value``.

    Drop leading/trailing non-alphanumerics and characters outside
    ``[A-Za-z0-9_.-]``; if that changed the value or it is over 63 chars,
    keep 53 chars and append ``-`` plus 9 hex chars of md5(value).
    """
    if _SAFE_LABEL.fullmatch(value):  # the usual case: already a valid label value, kept as it is
        return value
    start = 0
    while start < len(value) and value[start] not in _ALNUM:
        start += 1
    end = len(value)
    while end > start and value[end - 1] not in _ALNUM:
        end -= 1
    safe = "".join(ch for ch in value[start:end] if ch in _LABEL_CHARS)
    if safe != value or len(safe) > _LABEL_MAX:
        digest = hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()[:_LABEL_HASH_LEN]
        safe = f"{safe[: _LABEL_MAX - _LABEL_HASH_LEN - 1]}-{digest}"
    return safe


def _label(value: str) -> str:
    # The provider yields "-<hash>" (an invalid label value) when nothing of
    # the value survives (e.g. an all non-ASCII dag_id); drop that leading "-".
    return safe_label_value(value).lstrip("-")


def task_labels(key: TaskKey, scheduler_id: str, *, airflow_version: str | None = None) -> dict[str, str]:
    """The provider executor's worker pod labels plus ``kubestream.io/managed``.

    ``airflow_version`` (the provider's ``airflow_version`` label) is only
    added when given, since this module cannot import airflow.
    """
    labels = {
        "dag_id": _label(key.dag_id),
        "task_id": _label(key.task_id),
        "try_number": str(key.try_number),
        "kubernetes_executor": "True",
        "airflow-worker": _label(str(scheduler_id)),
    }
    if airflow_version:
        labels["airflow_version"] = _label(airflow_version.replace("+", "-"))
    if key.map_index >= 0:
        labels["map_index"] = str(key.map_index)
    if key.run_id:
        labels["run_id"] = _label(key.run_id)
    labels[MANAGED_LABEL] = "true"
    return labels


# --------------------------------------------------------------------------- validation


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A copy of ``value`` without None-valued keys (sanitize drops them)."""
    if not isinstance(value, dict):
        raise PodSpecError(f"{where} must be a mapping, got {type(value).__name__}")
    return {k: v for k, v in value.items() if v is not None}


def _check_list(obj: dict[str, Any], field: str, where: str) -> None:
    if field in obj and not isinstance(obj[field], list):
        raise PodSpecError(f"{where}.{field} must be a list, got {type(obj[field]).__name__}")


def _containers(spec: dict[str, Any], field: str, where: str) -> None:
    _check_list(spec, field, where)
    if field not in spec:
        return
    out = []
    for i, item in enumerate(spec[field]):
        container = _mapping(item, f"{where}.{field}[{i}]")
        for name in _CONTAINER_LISTS:
            _check_list(container, name, f"{where}.{field}[{i}]")
        out.append(container)
    spec[field] = out


def _copy_tree(value: Any) -> Any:
    """A deep copy of API JSON (dicts, lists, tuples; anything else is a leaf, shared: strings, numbers,
    dates), without ``copy.deepcopy``'s memo: several times faster on a pod. Shared subtrees (YAML
    aliases) come out as separate copies."""
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy_tree(v) for v in value)
    return value


def _normalize(pod: Pod | None, where: str) -> Pod | None:
    """Validate the structure merge relies on; return a deep, None-pruned copy."""
    if pod is None:
        return None
    try:
        tree = _copy_tree(pod)
    except RecursionError:  # e.g. a YAML template whose alias refers to itself
        raise PodSpecError(f"{where} nests too deep (or refers to itself)") from None
    out = _mapping(tree, where)
    if "metadata" in out:
        meta = out["metadata"] = _mapping(out["metadata"], f"{where}.metadata")
        for name in ("labels", "annotations"):
            if name in meta and not isinstance(meta[name], dict):
                raise PodSpecError(f"{where}.metadata.{name} must be a mapping")
        for name in _META_LISTS:
            _check_list(meta, name, f"{where}.metadata")
    if "spec" in out:
        spec = out["spec"] = _mapping(out["spec"], f"{where}.spec")
        _containers(spec, "containers", f"{where}.spec")
        _containers(spec, "initContainers", f"{where}.spec")
        _check_list(spec, "volumes", f"{where}.spec")
    return out


# --------------------------------------------------------------------------- merge


def _is_set(field: str, value: Any) -> bool:
    """Truthiness as the provider sees the model attribute behind ``field``."""
    if isinstance(value, dict) and field not in _MAP_FIELDS:
        return True  # a V1 model object, truthy even when empty
    return bool(value)


def _overlay(base: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    """Shallow merge: a base field fills the client's field when that one is unset."""
    out = dict(client)
    for field, value in base.items():
        if value is not None and not _is_set(field, client.get(field)):
            out[field] = value
    return {k: v for k, v in out.items() if v is not None}


def _extend(base: dict[str, Any], client: dict[str, Any], field: str) -> dict[str, Any]:
    """Client copy whose list ``field`` is base's items followed by the client's."""
    out = dict(client)
    ours, theirs = base.get(field), client.get(field)
    if ours:
        out[field] = ours + theirs if theirs else ours
    return out


def _merge_container(base: dict[str, Any], client: dict[str, Any]) -> dict[str, Any]:
    for field in _CONTAINER_LISTS:
        client = _extend(base, client, field)
    return _overlay(base, client)


def _merge_containers(base: list[Any] | None, client: list[Any] | None) -> list[Any] | None:
    """By position; the longer list's tail is kept as is."""
    if not base:
        return client
    if not client:
        return base
    merged = [_merge_container(b, c) for b, c in zip(base, client, strict=False)]  # lengths may differ
    return merged + base[len(client) :] + client[len(base) :]


def _merge_init_containers(base: list[Any], client: list[Any]) -> list[Any]:
    """By name: base order (merged where the client has the name), then the rest."""
    by_name = {c.get("name"): c for c in client}
    merged: list[Any] = []
    matched: set[Any] = set()
    for b in base:
        name = b.get("name")
        if name in by_name:
            merged.append(_merge_container(b, by_name[name]))
            matched.add(name)
        else:
            merged.append(b)
    return merged + [c for c in client if c.get("name") not in matched]


def _put(obj: dict[str, Any], field: str, value: Any) -> None:
    if value is None:
        obj.pop(field, None)
    else:
        obj[field] = value


def _merge_map(base: dict[str, Any] | None, client: dict[str, Any] | None) -> dict[str, Any] | None:
    if not base:
        return client
    if not client:
        return base
    return {**base, **client}


def _merge_metadata(base: Pod | None, client: Pod | None) -> Pod | None:
    if base is None or client is None:
        return client if base is None else base
    client = dict(client)
    for field in ("labels", "annotations"):
        _put(client, field, _merge_map(base.get(field), client.get(field)))
    # The provider's extend_object_field calls for managedFields, finalizers and
    # ownerReferences discard their result: those lists are replaced, not joined.
    return _overlay(base, client)


def _merge_spec(base: Pod | None, client: Pod | None) -> Pod | None:
    if base is None or client is None:
        return client if base is None else base
    merged = dict(client)
    _put(merged, "containers", _merge_containers(base.get("containers"), client.get("containers")))
    merged = _extend(base, merged, "initContainers")
    if base.get("initContainers") and client.get("initContainers"):
        merged["initContainers"] = _merge_init_containers(base["initContainers"], client["initContainers"])
    merged = _extend(base, merged, "volumes")
    return _overlay(base, merged)


def merge_pods(
    base: Pod | None, client: Pod | None, *, base_name: str = "base", client_name: str = "client"
) -> Pod:
    """Same result as the provider's ``PodGenerator.reconcile_pods(base, client)``.

    Client fields win when set (provider truthiness: ``False``, ``0``, ``""``,
    ``[]`` and empty label maps count as unset, so the base value stays);
    containers merge by position, init containers by name; env, envFrom,
    volumeMounts, ports, volumeDevices and volumes are concatenated
    base-first; labels and annotations are dict-merged. Other fields
    (resources, securityContext, affinity, tolerations, finalizers, ...) are
    replaced whole. ``base=None`` returns the client (the provider would
    crash). Inputs are never mutated; ``base_name``/``client_name`` prefix
    :class:`PodSpecError` messages.
    """
    b, c = _normalize(base, base_name), _normalize(client, client_name)
    if c is None or b is None:
        return (c if b is None else b) or {}
    merged = dict(c)
    _put(merged, "spec", _merge_spec(b.get("spec"), c.get("spec")))
    _put(merged, "metadata", _merge_metadata(b.get("metadata"), c.get("metadata")))
    return _overlay(b, merged)


# --------------------------------------------------------------------------- build


def _template_image(template: Pod | None) -> Any:
    containers = ((template or {}).get("spec") or {}).get("containers") or []
    return containers[0].get("image") if containers else None


def _check_kind(pod: Pod | None, where: str) -> None:
    for field, expected in (("apiVersion", "v1"), ("kind", "Pod")):
        if pod is not None and pod.get(field) not in (None, expected):
            raise PodSpecError(f"{where}.{field} must be {expected!r}, got {pod[field]!r}")


def build_pod(
    *,
    key: TaskKey,
    namespace: str,
    image: str,
    workload_json: str,
    scheduler_id: str,
    template: Pod | None,
    pod_override: Pod | None,
    airflow_version: str | None = None,
    key_prefix: str = "",
    pod_mutation: Pod | None = None,
    pod_name: str = "",
) -> Pod:
    """The worker pod for ``key``, like the provider's ``construct_pod``.

    Merges template -> generated pod -> pod_override with :func:`merge_pods`.
    The generated base container sets ``image`` only when the template's
    first container has none. Deviation from the provider, where a
    pod_override's ``metadata.name``/``namespace`` or identity labels win:
    here the name is always ``key.pod_name()`` (launch idempotency relies on
    a redelivered launch hitting 409 AlreadyExists), the namespace is always
    ``namespace``, and the task labels/annotations are re-applied over any
    template/override values (other labels/annotations are kept).
    ``restartPolicy`` defaults to ``"Never"``. ``key_prefix`` (the launcher's) is written as the
    ``kubestream.io/key-prefix`` annotation: another kubestream sharing the namespace leaves the pod alone.

    ``pod_mutation`` (the scheduler's ``pod_mutation_hook`` as a JSON merge patch) is applied to the merged
    pod, as the provider runs the hook after its merge; then ``WORKLOAD_PLACEHOLDER`` becomes
    ``workload_json`` again, a ``base`` container the patch left without an image gets ``image``, and the
    identity above is re-asserted (name, namespace, task labels and annotations): a patch cannot move,
    rename or disown a pod. A result that is no valid pod raises :class:`PodSpecError`.

    ``pod_name``: ``key.pod_name()`` when the caller has worked it out already (a hash of the key: the
    launcher needs it before); it must be that.
    """
    tmpl = _normalize(template, "template")
    override = _normalize(pod_override, "pod_override")
    _check_kind(tmpl, "template")
    _check_kind(override, "pod_override")
    name = pod_name or key.pod_name()
    labels = task_labels(key, scheduler_id, airflow_version=airflow_version)
    annotations = task_annotations(key)
    if key_prefix:
        annotations[PREFIX_ANNOTATION] = key_prefix
    container: dict[str, Any] = {
        "name": BASE_CONTAINER,
        "args": [*EXECUTE_WORKLOAD, workload_json],
        "env": [{"name": "AIRFLOW_IS_K8S_EXECUTOR_POD", "value": "True"}],
    }
    if image and not _template_image(tmpl):
        container["image"] = image
    dynamic: Pod = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        },
        "spec": {"containers": [container]},
    }
    layers = [p for p in (tmpl, dynamic, override) if p is not None]
    pod = reduce(merge_pods, layers)
    if pod_mutation is not None:
        pod = _mutated(pod, pod_mutation, workload_json, image)
    meta = pod.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    spec = pod.setdefault("spec", {})
    if not spec.get("restartPolicy"):
        spec["restartPolicy"] = "Never"
    return {"apiVersion": "v1", "kind": "Pod", **pod}  # _check_kind: any set ones match


def _swap_in_commands(pod: Pod, old: str, new: str) -> Pod:
    """``pod`` with the ``base`` container's command/args items equal to ``old`` reading ``new``: only that
    container (no other gets the workload, and its token, this way). Copies the path it changes, shares the rest."""
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        return pod
    containers = []
    for container in spec["containers"]:
        if isinstance(container, dict) and container.get("name") == BASE_CONTAINER:
            container = dict(container)
            for name in _COMMAND_FIELDS:
                items = container.get(name)
                if isinstance(items, list):
                    container[name] = [new if item == old else item for item in items]
        containers.append(container)
    return {**pod, "spec": {**spec, "containers": containers}}


def conceal_workload(pod: Pod, workload_json: str) -> Pod:
    """``pod`` whose ``base`` container's command/args items equal to ``workload_json`` read
    ``WORKLOAD_PLACEHOLDER`` (a new pod sharing what it did not change with ``pod``)."""
    return _swap_in_commands(pod, workload_json, WORKLOAD_PLACEHOLDER)


def _mutated(pod: Pod, pod_mutation: Pod, workload_json: str, image: str) -> Pod:
    if not isinstance(pod_mutation, dict):
        raise PodSpecError(f"pod_mutation must be a mapping, got {type(pod_mutation).__name__}")
    out = _normalize(mergepatch.apply(pod, pod_mutation), "pod_mutation")
    _check_kind(out, "pod_mutation")
    assert out is not None  # apply() of a mapping is a mapping
    out = _swap_in_commands(out, WORKLOAD_PLACEHOLDER, workload_json)
    for container in (out.get("spec") or {}).get("containers") or []:
        if container.get("name") == BASE_CONTAINER and not container.get("image") and image:
            container["image"] = image
    return out


def load_template_yaml(text: str) -> Pod:
    """Parse a pod template YAML document into a validated pod dict."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PodSpecError(f"pod template is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PodSpecError(f"pod template must be a YAML mapping (a Pod), got {type(data).__name__}")
    pod = _normalize(data, "template")
    _check_kind(pod, "template")
    return pod  # type: ignore[return-value]
