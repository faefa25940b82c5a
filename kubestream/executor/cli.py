"""`airflow kubestream ...`: the kubestream CLI verbs as an Airflow CLI group, plus generate-dag-yaml."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _settings_to_env() -> None:
    """Under ``airflow kubestream``, settings come from Airflow's ``[kubestream]`` section
    (config file or AIRFLOW__KUBESTREAM__*); an explicit KUBESTREAM_* variable still wins."""
    import os

    from airflow.configuration import conf

    from kubestream.executor.config import settings_from_airflow
    from kubestream.settings import SettingsError

    try:
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


def _run(argv_prefix: list[str], options: Sequence[str] = ("check", "json")) -> Any:
    def func(args: Any) -> None:
        from kubestream.cli import main

        _settings_to_env()
        raise SystemExit(main([*argv_prefix, *_forwarded(args, options)]))

    return func


def _dlq(args: Any) -> None:
    from kubestream.cli import main

    _settings_to_env()
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

    _settings_to_env()
    settings = Settings.from_env(os.environ)
    for done in render(load_dag(args.dag_file, args.dag_id), settings, Path(args.output_path)):
        print(f"{done.path}" + (f"  (refused by pod_policy: {done.refused})" if done.refused else ""))


def cli_commands() -> list[Any]:
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

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
                          args=(check,)),
            ActionCommand(name="watcher", help="publish pod state changes to the result streams",
                          func=_run(["watcher"]), args=(check,)),
            ActionCommand(name="status", help="streams, lag, pending, dead letters, watcher lease",
                          func=_run(["status"]), args=(as_json,)),
            ActionCommand(name="janitor", help="maintenance jobs on an rq worker (streams, consumers, failed pods)",
                          func=_run(["janitor"], ("once", "burst")),
                          args=(Arg(("--once",), help="run every job once inline and exit", action="store_true"),
                                Arg(("--burst",), help="rq burst mode", action="store_true"))),
            ActionCommand(name="dlq", help="dead letters: list, show ID, replay ID, purge (--all | --older-than S)",
                          func=_dlq,
                          args=(Arg(("action",), choices=("list", "show", "replay", "purge"), help="what to do"),
                                Arg(("id",), nargs="?", help="a dead letter id (show, replay)"),
                                as_json,
                                Arg(("--all",), help="purge every dead letter", action="store_true"),
                                Arg(("--older-than",), help="purge dead letters older than SECONDS", type=float))),
            ActionCommand(name="cleanup-pods", help="delete finished kubestream pods in the task namespaces",
                          func=_run(["cleanup-pods"], ("namespace", "dry_run")), args=(namespace, dry_run)),
            ActionCommand(name="generate-dag-yaml",
                          help="render the pods a DAG's tasks would get (kubestream's pod builder and pod policy), "
                               "offline, to a directory",
                          func=_generate_dag_yaml,
                          args=(Arg(("dag_id",), help="the DAG id"),
                                Arg(("--dag-file",), help="the DAG file or folder to parse", required=True),
                                Arg(("-o", "--output-path"), help="output directory", default="."))),
        ),
    )]
