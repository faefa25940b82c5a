"""`airflow kubestream ...`: the kubestream CLI verbs as an Airflow CLI group, plus generate-dag-yaml.

Every verb takes Airflow's usual ``-v/--verbose`` and ``--team`` (settings from that team's configuration, as its
executor reads them). The long-running ones (launcher, watcher, janitor) also take ``--log-level``,
``-l/--log-file``, ``-D/--daemon``, ``--pid``, ``--stdout`` and ``--stderr``, as ``airflow scheduler`` does.
No verb touches the Airflow metadata DB: launchers and the watcher have no access to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

LONG_RUNNING = ("launcher", "watcher", "janitor")


def _settings_to_env(team: str | None = None) -> None:
    """Under ``airflow kubestream``, settings come from Airflow's ``[kubestream]`` section (config file or
    AIRFLOW__KUBESTREAM__*), or a team's (AIRFLOW__<TEAM>___KUBESTREAM__*, [<team>=kubestream]) with
    ``--team``; an explicit KUBESTREAM_* variable still wins."""
    import os

    from airflow.configuration import conf

    from kubestream.executor.config import check_team_prefix, prefixes_taken, settings_from_airflow
    from kubestream.settings import SettingsError

    try:
        if team:
            from airflow.executors.base_executor import ExecutorConf

            settings = settings_from_airflow(ExecutorConf(team_name=team), team)
            check_team_prefix(settings, team, prefixes_taken(conf, team, {"KubeStreamExecutor"}))
        else:
            settings = settings_from_airflow(conf)
    except SettingsError as exc:
        raise SystemExit(f"kubestream: configuration error: {exc}") from None
    for name, value in settings.to_env().items():
        os.environ.setdefault(name, value)


def _forwarded(args: Any, options: Sequence[str]) -> list[str]:
    """The kubestream CLI arguments for the Airflow arguments named in ``options`` (flags, values, lists)."""
    argv: list[str] = []
    for name in options:
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif value not in (None, False):
            argv += [flag, str(value)]
    return argv


def log_level(args: Any) -> str | None:
    """The log level the flags ask for: DEBUG with ``--verbose``, else ``--log-level`` (None: the default)."""
    if getattr(args, "verbose", False):
        return "DEBUG"
    level = getattr(args, "log_level", None)
    return str(level).upper() if level else None


def _apply_verbose(args: Any) -> None:
    """``--verbose`` as Airflow applies it to its own commands: the root logger and its handlers at DEBUG."""
    if getattr(args, "verbose", False):
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        for handler in root.handlers:
            handler.setLevel(logging.DEBUG)


def _log_to(path: str) -> None:
    """Send this process's log lines (kubestream logs JSON lines to stderr) to ``path``, appended."""
    import os
    import sys

    sys.stderr.flush()
    with open(path, "a", buffering=1) as log_file:
        os.dup2(log_file.fileno(), sys.stderr.fileno())


def _daemon_or_foreground(args: Any, name: str, run: Callable[[], None]) -> None:
    """Run in the foreground, or daemonized with a PID file and redirected output (``-D``), as Airflow runs
    ``airflow scheduler``; ``--log-file`` (daemon default: $AIRFLOW_HOME/airflow-kubestream-<verb>.log) gets
    the log lines."""
    from airflow.cli.commands.daemon_utils import run_command_with_daemon_option

    log_file = getattr(args, "log_file", None)
    if getattr(args, "daemon", False) and not log_file:
        from airflow.utils.cli import setup_locations

        log_file = setup_locations(f"kubestream-{name}")[3]

    def callback() -> None:
        if log_file:
            _log_to(log_file)
        run()

    run_command_with_daemon_option(args=args, process_name=f"kubestream-{name}", callback=callback)


def _run(argv_prefix: list[str], options: Sequence[str] = ("check", "json")) -> Any:
    name = argv_prefix[0]

    def func(args: Any) -> None:
        from kubestream.cli import main

        _apply_verbose(args)
        _settings_to_env(getattr(args, "team", None))
        argv = [*argv_prefix, *_forwarded(args, options)]
        if name not in LONG_RUNNING:
            raise SystemExit(main(argv))
        level = log_level(args)
        if level and not getattr(args, "check", False):
            argv += ["--log-level", level]

        def run() -> None:
            raise SystemExit(main(argv))

        if getattr(args, "check", False):
            run()
        _daemon_or_foreground(args, name, run)

    return func


def _dlq(args: Any) -> None:
    from kubestream.cli import main

    _apply_verbose(args)
    _settings_to_env(getattr(args, "team", None))
    argv = ["dlq", args.action]
    if args.action in ("show", "replay"):
        if not args.id:
            raise SystemExit(f"kubestream: dlq {args.action} needs a dead letter id")
        argv.append(args.id)
    elif args.action == "list":
        argv += _forwarded(args, ("json",))
    else:
        argv += _forwarded(args, ("all", "older_than"))
    raise SystemExit(main(argv))


def _generate_dag_yaml(args: Any) -> None:
    import os
    from pathlib import Path

    from kubestream.executor.dagyaml import load_dag, render
    from kubestream.settings import Settings

    _apply_verbose(args)
    _settings_to_env(getattr(args, "team", None))
    settings = Settings.from_env(os.environ)
    for done in render(load_dag(args.dag_file, args.dag_id), settings, Path(args.output_path)):
        print(f"{done.path}" + (f"  (refused by pod_policy: {done.refused})" if done.refused else ""))


def cli_commands() -> list[Any]:
    from airflow.cli.cli_config import (
        ARG_DAEMON,
        ARG_LOG_FILE,
        ARG_PID,
        ARG_STDERR,
        ARG_STDOUT,
        ARG_VERBOSE,
        ActionCommand,
        Arg,
        GroupCommand,
    )

    team = Arg(("--team",), default=None,
               help="a team's kubestream (multi-team): its settings from AIRFLOW__<TEAM>___KUBESTREAM__* or "
                    "[<team>=kubestream], as that team's executor reads them")
    common = (ARG_VERBOSE, team)
    level = Arg(("--log-level",), default=None, help="log level (DEBUG, INFO, WARNING, ...); -v means DEBUG",
                type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    daemon = (level, ARG_LOG_FILE, ARG_DAEMON, ARG_PID, ARG_STDOUT, ARG_STDERR, *common)
    check = Arg(("--check",), help="exit 0 if a local process of this kind is healthy", action="store_true")
    as_json = Arg(("--json",), help="machine-readable output", action="store_true")
    namespace = Arg(("--namespace",), help="a namespace to clean (repeatable; default: the task namespaces)",
                    action="append")
    dry_run = Arg(("--dry-run",), help="only print the pods that would be deleted", action="store_true")
    return [GroupCommand(
        name="kubestream",
        help="kubestream launchers, watcher, janitor, dead letters and status",
        subcommands=(
            ActionCommand(name="launcher", help="create pods from the launch streams", func=_run(["launcher"]),
                          args=(check, *daemon)),
            ActionCommand(name="watcher", help="publish pod state changes to the result streams",
                          func=_run(["watcher"]), args=(check, *daemon)),
            ActionCommand(name="status", help="streams, lag, pending, dead letters, watcher lease",
                          func=_run(["status"]), args=(as_json, *common)),
            ActionCommand(name="janitor", help="maintenance jobs on an rq worker (streams, consumers, failed pods)",
                          func=_run(["janitor"], ("once", "burst")),
                          args=(Arg(("--once",), help="run every job once inline and exit", action="store_true"),
                                Arg(("--burst",), help="rq burst mode", action="store_true"), *daemon)),
            ActionCommand(name="dlq", help="dead letters: list, show ID, replay ID, purge (--all | --older-than S)",
                          func=_dlq,
                          args=(Arg(("action",), choices=("list", "show", "replay", "purge"), help="what to do"),
                                Arg(("id",), nargs="?", help="a dead letter id (show, replay)"),
                                as_json,
                                Arg(("--all",), help="purge every dead letter", action="store_true"),
                                Arg(("--older-than",), help="purge dead letters older than SECONDS", type=float),
                                *common)),
            ActionCommand(name="cleanup-pods", help="delete finished kubestream pods in the task namespaces",
                          func=_run(["cleanup-pods"], ("namespace", "dry_run")), args=(namespace, dry_run, *common)),
            ActionCommand(name="generate-dag-yaml",
                          help="render the pods a DAG's tasks would get (kubestream's pod builder and pod policy), "
                               "offline, to a directory",
                          func=_generate_dag_yaml,
                          args=(Arg(("dag_id",), help="the DAG id"),
                                Arg(("--dag-file",), help="the DAG file or folder to parse", required=True),
                                Arg(("-o", "--output-path"), help="output directory", default="."), *common)),
        ),
    )]
