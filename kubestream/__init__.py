"""kubestream: an Airflow executor that runs each task as a Kubernetes pod,
with the scheduler decoupled from the Kubernetes API by Redis Streams.

Importing this package has no side effects and imports neither airflow nor
kubernetes; components live in subpackages:

- ``kubestream.executor``: the Airflow executor (imports airflow).
- ``kubestream.workers``: the launchers that create pods.
- ``kubestream.watcher``: the watcher that publishes pod state changes.

The local control plane, simulated kubelet and demo are development tools in
the repository's top-level ``devkit`` package, which the wheel does not ship.
"""

__version__ = "0.1.0"
