"""JSON merge patch (RFC 7386) between two JSON documents: pure, no I/O, inputs never mutated.

``diff(before, after)`` returns the patch ``p`` with ``apply(before, p) == after``; ``apply`` is the
RFC's ``MergePatch`` algorithm. Objects merge key by key, ``None`` (JSON null) removes a key, and
anything else (lists included) replaces the target whole. So a document holding a ``None`` value
cannot be reached exactly: ``diff`` treats a ``None`` value in ``after`` as an absent key (the
Kubernetes API JSON kubestream diffs never holds one: serialisation drops them).

kubestream uses it to ship the effect of Airflow's ``pod_mutation_hook`` from the scheduler to the
launchers (``LaunchTask.pod_mutation``, docs/architecture.md).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["apply", "diff"]


def apply(target: Any, patch: Any) -> Any:
    """RFC 7386 ``MergePatch(target, patch)``: a new document; neither input is changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = apply(out.get(name), value)
    return out


def diff(before: Any, after: Any) -> Any:
    """The merge patch turning ``before`` into ``after`` (``{}`` when they are equal objects).

    When ``after`` is not an object the patch is ``after`` itself; when ``before`` is not an object
    the patch is ``after`` with its nulls dropped (applying it builds ``after`` from ``{}``).
    """
    if not isinstance(after, dict):
        return copy.deepcopy(after)
    if not isinstance(before, dict):
        return _pruned(after)
    patch: dict[str, Any] = {}
    for name, value in before.items():
        if value is not None and after.get(name) is None:
            patch[name] = None
    for name, value in after.items():
        if value is None or (name in before and before[name] == value):
            continue
        if isinstance(value, dict) and isinstance(before.get(name), dict):
            patch[name] = diff(before[name], value)
        else:
            patch[name] = _pruned(value) if isinstance(value, dict) else copy.deepcopy(value)
    return patch


def _pruned(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without its null-valued keys, at every object level (as applying it to ``{}`` gives)."""
    return {k: _pruned(v) if isinstance(v, dict) else copy.deepcopy(v) for k, v in doc.items() if v is not None}
