"""kubestream as an Airflow provider (entry point ``apache_airflow_provider``).

This is how Airflow 3 finds the ``airflow kubestream ...`` CLI group and lists
the ``[kubestream]`` config section (``airflow config list``) with each
option's description and default, generated from the one settings model.
"""

from __future__ import annotations

from typing import Any

from kubestream import __version__

SENSITIVE = frozenset({"redis_url", "signing_keys"})


def get_provider_info() -> dict[str, Any]:
    from kubestream.settings import FIELDS, format_value

    options = {}
    for f in FIELDS:
        options[f.name] = {"description": f.metadata["doc"], "version_added": "0.1.0", "type": "string",
                           "example": None, "default": format_value(f.default),
                           # credentials: hidden by `airflow config list`, and _cmd / _secret work for it
                           "sensitive": f.name in SENSITIVE}
    return {
        "package-name": "kubestream",
        "name": "kubestream",
        "description": "Airflow tasks as Kubernetes pods, decoupled from the Kubernetes API by Redis Streams",
        "versions": [__version__],
        "executors": ["kubestream.executor.KubeStreamExecutor"],
        "cli": ["kubestream.executor.cli.cli_commands"],
        "config": {"kubestream": {"description": "kubestream executor, launchers and watcher", "options": options}},
    }
