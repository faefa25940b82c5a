"""kubestream's settings read from Airflow's configuration (section ``[kubestream]``)."""

from __future__ import annotations

from typing import Any, Protocol

from kubestream.settings import AIRFLOW_SECTION, FIELDS, Settings


class AirflowConf(Protocol):
    """What kubestream reads of Airflow's ``conf`` (``AirflowConfigParser`` or an executor's team conf)."""

    def get(self, section: str, key: str, **kwargs: Any) -> str | None: ...


def settings_from_airflow(conf: AirflowConf) -> Settings:
    """Every setting from ``[kubestream]`` (config file, ``AIRFLOW__KUBESTREAM__*``, ``_cmd``, ``_secret``)."""
    values = {}
    for f in FIELDS:
        value = conf.get(AIRFLOW_SECTION, f.name, fallback=None)
        if value is not None:
            values[f.name] = value
    return Settings.from_mapping(values, source=AIRFLOW_SECTION)
