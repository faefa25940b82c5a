"""kubestream's settings read from Airflow's configuration (section ``[kubestream]``, or a team's own).

A team's executor (Airflow multi-team, ``[core] executor = ...;team_a=kubestream.executor.KubeStreamExecutor``)
reads its settings through its ``ExecutorConf``: ``AIRFLOW__TEAM_A___KUBESTREAM__*`` variables or the
``[team_a=kubestream]`` section, never the global ``[kubestream]`` values. Its ``key_prefix`` must be its
own: two teams (or a team and the global executor) on one prefix would share launch and result streams.
"""

from __future__ import annotations

from typing import Any, Protocol

from kubestream.settings import AIRFLOW_SECTION, FIELDS, Settings, SettingsError

# Airflow's separator between a team's name and the section it overrides in the config file
TEAM_SECTION_SEPARATOR = "="


class AirflowConf(Protocol):
    """What kubestream reads of Airflow's ``conf`` (``AirflowConfigParser`` or an executor's team conf)."""

    def get(self, section: str, key: str, **kwargs: Any) -> str | None: ...


def section_name(team_name: str | None = None) -> str:
    """The config section a team's settings come from, as errors name it (``team_a=kubestream``)."""
    return f"{team_name}{TEAM_SECTION_SEPARATOR}{AIRFLOW_SECTION}" if team_name else AIRFLOW_SECTION


def team_variable(team_name: str, name: str) -> str:
    """The environment variable that sets one of a team's settings (Airflow's naming)."""
    return f"AIRFLOW__{team_name.upper()}___{AIRFLOW_SECTION.upper()}__{name.upper()}"


def settings_from_airflow(conf: AirflowConf, team_name: str | None = None) -> Settings:
    """Every setting from ``[kubestream]`` (config file, ``AIRFLOW__KUBESTREAM__*``, ``_cmd``, ``_secret``),
    or, for ``team_name``, from what ``conf`` (that team's ``ExecutorConf``) holds for the team.
    A wrong value raises ``SettingsError`` naming the section and option."""
    values = {}
    for f in FIELDS:
        value = conf.get(AIRFLOW_SECTION, f.name, fallback=None)
        if value is not None:
            values[f.name] = value
    return Settings.from_mapping(values, source=section_name(team_name))


def teams_running(executor_setting: str, class_names: set[str]) -> list[str]:
    """The teams whose executors in ``[core] executor`` (``"A,B;team_a=C,D;team_b=E"``, entries optionally
    ``alias:module.Class``) include one of ``class_names`` (a class name or its full path)."""
    teams = []
    for part in executor_setting.split(";"):
        team, sep, names = part.strip().rpartition("=")
        if not sep or not team.strip():
            continue
        for name in names.split(","):
            path = name.strip().rsplit(":", 1)[-1]
            if path in class_names or path.rsplit(".", 1)[-1] in class_names:
                teams.append(team.strip())
                break
    return teams


def check_team_prefix(settings: Settings, team_name: str, taken: dict[str, str]) -> None:
    """A team's executor must use a key prefix of its own: not the default, not one in ``taken`` (prefix ->
    whose it is: the global executor's, other teams')."""
    taken = {**taken, Settings().key_prefix: "the default"}
    if settings.key_prefix in taken:
        raise SettingsError(
            f"[{section_name(team_name)}] key_prefix={settings.key_prefix!r} is {taken[settings.key_prefix]}: "
            f"team {team_name!r} needs a key_prefix of its own (set {team_variable(team_name, 'key_prefix')} or "
            f"key_prefix in [{section_name(team_name)}]; its launchers and watcher use the same "
            f"KUBESTREAM_KEY_PREFIX), or its tasks would share streams with another team's")


def prefixes_taken(conf: Any, team_name: str, class_names: set[str]) -> dict[str, str]:
    """The key prefixes a team's executor may not use, read from Airflow's ``conf``: the global
    ``[kubestream]`` one and those of the other teams that run a kubestream executor (``[core] executor``)."""
    taken: dict[str, str] = {}
    for other in teams_running(conf.get("core", "executor", fallback="") or "", class_names):
        if other != team_name:
            prefix = (conf.get(AIRFLOW_SECTION, "key_prefix", fallback=None, team_name=other) or "").strip()
            taken[prefix] = f"team {other!r}'s key_prefix too"
    taken[(conf.get(AIRFLOW_SECTION, "key_prefix", fallback=None) or "").strip()] = \
        "the global [kubestream] key_prefix"
    return taken
