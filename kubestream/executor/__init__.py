"""The Airflow executor side of kubestream (the only subpackage that imports airflow)."""

from kubestream.executor.executor import KubeStreamExecutor

__all__ = ["KubeStreamExecutor"]
