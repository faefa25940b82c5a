"""`airflow kubestream ...`: the kubestream CLI verbs as an Airflow CLI group."""

from __future__ import annotations

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


def _run(argv_prefix: list[str]) -> Any:
    def func(args: Any) -> None:
        from kubestream.cli import main

        _settings_to_env()
        argv = list(argv_prefix)
        if getattr(args, "check", False):
            argv.append("--check")
        if getattr(args, "json", False):
            argv.append("--json")
        raise SystemExit(main(argv))

    return func


def cli_commands() -> list[Any]:
    from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand

    check = Arg(("--check",), help="exit 0 if a local process of this kind is healthy", action="store_true")
    as_json = Arg(("--json",), help="machine-readable output", action="store_true")
    return [GroupCommand(
        name="kubestream",
        help="kubestream launchers, watcher and status",
        subcommands=(
            ActionCommand(name="launcher", help="create pods from the launch streams", func=_run(["launcher"]),
                          args=(check,)),
            ActionCommand(name="watcher", help="publish pod state changes to the result streams",
                          func=_run(["watcher"]), args=(check,)),
            ActionCommand(name="status", help="streams, lag, pending, dead letters, watcher lease",
                          func=_run(["status"]), args=(as_json,)),
        ),
    )]
