"""kubestream as an Airflow provider (entry point ``apache_airflow_provider``).

This is how Airflow 3 finds the ``airflow kubestream ...`` CLI group and lists
the ``[kubestream]`` config section (``airflow config list``) with each
option's description and default, generated from the one settings model.
"""

from __future__ import annotations

from typing import Any

from kubestream import __version__


def get_provider_info() -> dict[str, Any]:
    from kubestream.settings import FIELDS

    options = {}
    for f in FIELDS:
        default = ",".join(f.default) if isinstance(f.default, tuple) else str(f.default).lower() \
            if isinstance(f.default, bool) else str(f.default)
        options[f.name] = {"description": f.metadata["doc"], "version_added": "0.1.0", "type": "string",
                           "example": None, "default": default}
    return {
        "package-name": "kubestream",
        "name": "kubestream",
        "description": "Airflow tasks as Kubernetes pods, decoupled from the Kubernetes API by Redis Streams",
        "versions": [__version__],
        "executors": ["kubestream.executor.KubeStreamExecutor"],
        "cli": ["kubestream.executor.cli.cli_commands"],
        "config": {"kubestream": {"description": "kubestream executor, launchers and watcher", "options": options}},
    }
