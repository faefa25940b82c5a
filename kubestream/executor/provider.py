"""kubestream as an Airflow provider (entry point ``apache_airflow_provider``).

This is how Airflow 3 finds the ``airflow kubestream ...`` CLI group and lists
the ``[kubestream]`` config section (``airflow config list``) with each
option's description, type and default, generated from the one settings model.
"""

from __future__ import annotations

from dataclasses import Field
from typing import Any

from kubestream import __version__

SENSITIVE = frozenset({"redis_url", "signing_keys"})

# a setting's Python type -> the option type Airflow's config descriptions use (config.yml, provider.yaml)
OPTION_TYPES = {"int": "integer", "float": "float", "bool": "boolean", "str": "string", "tuple[str, ...]": "string",
                "tuple[int, ...]": "string"}


def option_type(f: Field[Any]) -> str:
    """The Airflow option type of a setting: integer, float, boolean or string (lists are comma-separated)."""
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        return OPTION_TYPES[name]
    except KeyError:
        raise TypeError(f"setting {f.name}: no Airflow option type for {name!r}") from None


def option_default(value: object) -> str:
    """A default as Airflow writes it: booleans ``True``/``False``, lists comma-separated."""
    from kubestream.settings import format_value

    if isinstance(value, bool):
        return str(value)
    return format_value(value)


def get_provider_info() -> dict[str, Any]:
    from kubestream.settings import FIELDS

    options = {}
    for f in FIELDS:
        options[f.name] = {"description": f.metadata["doc"], "version_added": "0.1.0", "type": option_type(f),
                           "example": None, "default": option_default(f.default),
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
