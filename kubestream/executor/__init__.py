"""The Airflow executor side of kubestream (the only subpackage that imports airflow).

``KubeStreamExecutor`` is imported on first access, so that Airflow can read
``kubestream.executor.provider`` while its own configuration is still loading.
"""

from typing import Any

__all__ = ["KubeStreamExecutor"]


def __getattr__(name: str) -> Any:
    if name == "KubeStreamExecutor":
        from kubestream.executor.executor import KubeStreamExecutor

        return KubeStreamExecutor
    raise AttributeError(f"module 'kubestream.executor' has no attribute {name!r}")
