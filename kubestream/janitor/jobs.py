"""The janitor's maintenance jobs: each is one idempotent step, run inline (``--once``) or as an rq job."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from kubestream.janitor.sweeps import sweep_consumers, sweep_result_streams, trim_streams
from kubestream.keys import Keys
from kubestream.settings import Settings


def _result_streams(client: redis.Redis, settings: Settings) -> Any:
    return sweep_result_streams(client, Keys(settings.key_prefix), settings.stale_after_seconds)


def _consumers(client: redis.Redis, settings: Settings) -> Any:
    return sweep_consumers(client, Keys(settings.key_prefix), settings.stale_after_seconds)


def _trim(client: redis.Redis, settings: Settings) -> Any:
    return trim_streams(client, Keys(settings.key_prefix))


def _failed_pods(_client: redis.Redis, settings: Settings) -> Any:
    from kubestream.janitor.pods import delete_failed_pods
    from kubestream.kubeapi import PodApi, api_client

    api = api_client(settings.kube_config, settings.kube_context, pool_size=2)
    try:
        return delete_failed_pods(PodApi(api), settings.namespaces_to_watch(),
                                  settings.failed_pod_retention_seconds, time.time(), key_prefix=settings.key_prefix)
    finally:
        api.close()


JOBS: dict[str, Callable[[redis.Redis, Settings], Any]] = {
    "result_streams": _result_streams,
    "consumers": _consumers,
    "trimmed": _trim,
    "failed_pods": _failed_pods,
}


def run(name: str, client: redis.Redis, settings: Settings) -> Any:
    """Run the maintenance job ``name`` (a key of ``JOBS``); returns what it removed."""
    return JOBS[name](client, settings)


def run_all(client: redis.Redis, settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """Every job once (``--once``): what each removed, and the error of each job that failed (the others
    still run: e.g. no Kubernetes access only stops the failed-pod job)."""
    done: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in JOBS:
        try:
            done[name] = run(name, client, settings)
        except redis.ConnectionError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per job; the CLI exits non-zero
            errors[name] = f"{type(exc).__name__}: {exc}"
    return done, errors
