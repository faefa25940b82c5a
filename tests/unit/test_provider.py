"""kubestream as an Airflow provider: typed config options, errors naming the option, a team's own settings,
and the `airflow kubestream` commands' usual flags (-v/--verbose, --team, logging and daemon flags)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from devkit.procs import free_port, wait_for
from kubestream.executor.cli import log_level
from kubestream.executor.config import settings_from_airflow, teams_running
from kubestream.executor.provider import get_provider_info
from kubestream.settings import FIELDS, Settings, SettingsError

OPTIONS = get_provider_info()["config"]["kubestream"]["options"]


@pytest.fixture(autouse=True)
def _no_kubestream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from Airflow's defaults: no [kubestream] or team variable of the caller's environment."""
    for name in list(os.environ):
        if "KUBESTREAM__" in name or name.startswith("KUBESTREAM_"):
            monkeypatch.delenv(name)


# -- option types ----------------------------------------------------------------------------------
def test_provider_info_is_valid_for_airflow() -> None:
    import jsonschema
    from airflow._shared.providers_discovery.providers_discovery import (
        _read_schema_from_resources_or_local_file,
    )

    jsonschema.validate(get_provider_info(), _read_schema_from_resources_or_local_file("provider_info.schema.json"))


def test_every_option_has_the_type_of_its_setting() -> None:
    expected = {"int": "integer", "float": "float", "bool": "boolean", "str": "string", "tuple[str, ...]": "string",
                "tuple[int, ...]": "string"}
    assert {f.name: OPTIONS[f.name]["type"] for f in FIELDS} == {f.name: expected[str(f.type)] for f in FIELDS}
    assert OPTIONS["launch_concurrency"]["type"] == "integer" and OPTIONS["create_rate"]["type"] == "float"
    assert OPTIONS["delete_worker_pods"] == {**OPTIONS["delete_worker_pods"], "type": "boolean", "default": "True"}
    assert OPTIONS["queues"]["type"] == "string"  # a comma-separated list


def test_airflow_typed_getters_read_every_default() -> None:
    from airflow.configuration import conf

    getters = {"integer": conf.getint, "float": conf.getfloat, "boolean": conf.getboolean, "string": conf.get}
    defaults = Settings()
    for f in FIELDS:
        value = getters[OPTIONS[f.name]["type"]]("kubestream", f.name)
        if OPTIONS[f.name]["type"] != "string":
            assert value == getattr(defaults, f.name), f.name
    assert settings_from_airflow(conf) == defaults  # the typed defaults parse back to the same settings


@pytest.mark.parametrize(("name", "value", "says"), [
    ("launch_concurrency", "many", "expected an integer >= 1"),
    ("launch_concurrency", "0", "expected an integer >= 1"),
    ("create_rate", "fast", "expected a number >= 0"),
    ("delete_worker_pods", "maybe", "expected true or false"),
    ("redis_url", "http://redis:6379", "expected a redis://"),
])
def test_a_wrong_value_names_the_option(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    from airflow.configuration import conf

    monkeypatch.setenv(f"AIRFLOW__KUBESTREAM__{name.upper()}", value)
    with pytest.raises(SettingsError, match=f"^\\[kubestream\\] {name}={value!r}: {says}"):
        settings_from_airflow(conf)


def test_a_teams_wrong_value_names_the_teams_section(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubestream.executor import KubeStreamExecutor

    monkeypatch.setenv("AIRFLOW__KUBESTREAM__BLOCK_MS", "500")  # the global value is fine and not read
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBESTREAM__BLOCK_MS", "soon")
    with pytest.raises(SettingsError, match=r"^\[team_a=kubestream\] block_ms='soon': expected an integer"):
        KubeStreamExecutor(team_name="team_a").load_settings()


def test_a_team_reads_its_own_settings_never_the_global_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubestream.executor import KubeStreamExecutor

    monkeypatch.setenv("AIRFLOW__KUBESTREAM__KEY_PREFIX", "global")
    monkeypatch.setenv("AIRFLOW__KUBESTREAM__NAMESPACE", "global-ns")
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBESTREAM__KEY_PREFIX", "team-a")
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBESTREAM__SYNC_BATCH", "7")
    team = KubeStreamExecutor(team_name="team_a").load_settings()
    assert (team.key_prefix, team.sync_batch, team.namespace) == ("team-a", 7, "default")
    assert KubeStreamExecutor().load_settings().key_prefix == "global"
    assert KubeStreamExecutor.supports_multi_team


@pytest.mark.parametrize("prefix", [None, "kubestream", "shared"])
def test_a_team_without_a_key_prefix_of_its_own_refuses_to_start(monkeypatch: pytest.MonkeyPatch,
                                                                 prefix: str | None) -> None:
    from kubestream.executor import KubeStreamExecutor

    monkeypatch.setenv("AIRFLOW__KUBESTREAM__KEY_PREFIX", "shared")
    if prefix:
        monkeypatch.setenv("AIRFLOW__TEAM_B___KUBESTREAM__KEY_PREFIX", prefix)
    with pytest.raises(SettingsError, match=r"^\[team_b=kubestream\] key_prefix=.*AIRFLOW__TEAM_B___KUBESTREAM__KEY"
                                            r"_PREFIX"):
        KubeStreamExecutor(team_name="team_b").start()


def test_teams_running_kubestream_from_the_executor_setting() -> None:
    names = {"KubeStreamExecutor"}
    assert teams_running("kubestream.executor.KubeStreamExecutor,LocalExecutor", names) == []
    setting = ("LocalExecutor;team_a=kubestream.executor.KubeStreamExecutor;team_b=LocalExecutor;"
               "team_c=LocalExecutor, ks:kubestream.executor.KubeStreamExecutor")
    assert teams_running(setting, names) == ["team_a", "team_c"]


def test_two_teams_on_one_key_prefix_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubestream.executor import KubeStreamExecutor

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor;team_a=kubestream.executor.KubeStreamExecutor;"
                                                  "team_b=kubestream.executor.KubeStreamExecutor")
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBESTREAM__KEY_PREFIX", "ours")
    monkeypatch.setenv("AIRFLOW__TEAM_B___KUBESTREAM__KEY_PREFIX", "ours")
    with pytest.raises(SettingsError, match=r"^\[team_b=kubestream\] key_prefix='ours' is team 'team_a''s key_prefix"):
        KubeStreamExecutor(team_name="team_b").load_settings()
    monkeypatch.setenv("AIRFLOW__TEAM_B___KUBESTREAM__KEY_PREFIX", "theirs")
    assert KubeStreamExecutor(team_name="team_b").load_settings().key_prefix == "theirs"
    assert KubeStreamExecutor(team_name="team_a").load_settings().key_prefix == "ours"


# -- the `airflow kubestream` flags ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def airflow_parser() -> argparse.ArgumentParser:
    from airflow.cli.cli_parser import get_parser

    return get_parser()


@pytest.mark.parametrize("argv", [
    ["launcher", "-v", "--team", "team_a", "-l", "/tmp/l.log", "-D", "--pid", "/tmp/l.pid", "--stdout", "/tmp/o",
     "--stderr", "/tmp/e", "--log-level", "warning"],
    ["watcher", "--verbose", "--log-file", "/tmp/w.log", "--check"],
    ["janitor", "--once", "-v", "--log-level", "ERROR"],
    ["status", "--json", "-v", "--team", "team_a"],
    ["dlq", "list", "--json", "--verbose"],
    ["cleanup-pods", "--dry-run", "-v", "--team", "team_a"],
    ["generate-dag-yaml", "d", "--dag-file", "f.py", "-v", "--team", "team_a"],
])
def test_every_verb_takes_airflows_usual_flags(airflow_parser: argparse.ArgumentParser, argv: list[str]) -> None:
    args = airflow_parser.parse_args(["kubestream", *argv])
    assert args.verbose == ("-v" in argv or "--verbose" in argv)
    assert args.team == ("team_a" if "--team" in argv else None)


def test_log_level_from_the_flags(airflow_parser: argparse.ArgumentParser) -> None:
    def level(*argv: str) -> str | None:
        return log_level(airflow_parser.parse_args(["kubestream", "launcher", *argv]))

    assert level() is None and level("-v") == "DEBUG" and level("--log-level", "warning") == "WARNING"
    assert level("-v", "--log-level", "ERROR") == "DEBUG"
    with pytest.raises(SystemExit):
        level("--log-level", "chatty")
    with pytest.raises(SystemExit):  # the short verbs have no daemon flags
        airflow_parser.parse_args(["kubestream", "status", "-D"])


def _airflow(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "airflow", "kubestream", *argv], env=env, capture_output=True,
                          text=True, timeout=180)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "KUBESTREAM_" not in k}
    return {**env, "AIRFLOW__KUBESTREAM__SIGNING_KEYS": "", "AIRFLOW__KUBESTREAM__ALLOW_UNSIGNED": "True", **extra}


def test_log_file_gets_the_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "launcher.log"
    out = _airflow(_env(AIRFLOW__KUBESTREAM__REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
                   "launcher", "-v", "--log-file", str(log))
    assert out.returncode == 3, out.stderr[-2000:]  # Redis unreachable
    assert "cannot reach Redis" in log.read_text()
    assert "cannot reach Redis" not in out.stderr


def test_daemon_mode_detaches_and_logs_to_the_default_log_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(AIRFLOW_HOME=str(home), AIRFLOW__KUBESTREAM__REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    out = _airflow(env, "watcher", "-D", "--pid", str(tmp_path / "watcher.pid"))
    assert out.returncode == 0, out.stderr[-2000:]  # the foreground process returns once detached
    log = home / "airflow-kubestream-watcher.log"
    wait_for(lambda: log.exists() and "cannot reach Redis" in log.read_text(), timeout=120, interval=0.5,
             what="the daemon's log line in its default log file")


def test_team_flag_reads_the_teams_settings(redis_server: Any, redis_client: Any) -> None:
    team_prefix, global_prefix = f"ta{uuid.uuid4().hex[:8]}", f"gl{uuid.uuid4().hex[:8]}"
    for prefix in (team_prefix, global_prefix):
        redis_client.xadd("{" + prefix + "}:launch:default", {"m": b"x"})
    env = _env(AIRFLOW__KUBESTREAM__REDIS_URL=redis_server.url, AIRFLOW__KUBESTREAM__KEY_PREFIX=global_prefix,
               AIRFLOW__TEAM_A___KUBESTREAM__REDIS_URL=redis_server.url,
               AIRFLOW__TEAM_A___KUBESTREAM__ALLOW_UNSIGNED="True",
               AIRFLOW__TEAM_A___KUBESTREAM__KEY_PREFIX=team_prefix)
    team = _airflow(env, "status", "--json", "--team", "team_a")
    assert team.returncode == 0, team.stderr[-2000:]
    assert team_prefix in team.stdout and global_prefix not in team.stdout
    assert global_prefix in json.dumps(json.loads(_airflow(env, "status", "--json").stdout))
    refused = _airflow(env, "status", "--team", "team_b")  # no key_prefix of its own
    assert refused.returncode != 0 and "AIRFLOW__TEAM_B___KUBESTREAM__KEY_PREFIX" in refused.stderr
