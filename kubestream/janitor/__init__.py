"""Maintenance that keeps Redis and the task namespaces bounded (``kubestream janitor``).

``sweeps``: gone schedulers' result streams, stale consumers, acknowledged stream entries;
``pods``: failed task pods past their retention; ``jobs``: the maintenance jobs by name;
``worker``: the rq worker and scheduler that runs them periodically (imports rq).
"""

from kubestream.janitor.sweeps import sweep_consumers, sweep_result_streams, trim_streams

__all__ = ["sweep_consumers", "sweep_result_streams", "trim_streams"]
