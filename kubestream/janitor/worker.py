"""``kubestream janitor``: an rq worker, with rq's scheduler, for the maintenance jobs of ``jobs.JOBS``.

rq's keys live under ``{<key_prefix>}:rq`` (``RQ_KEY_PREFIX``, which must be set before rq is
imported: ``kubestream janitor`` sets it), so they share kubestream's hash slot; the queue is
``<key_prefix>-janitor``. Nothing dispatches through rq: it only carries maintenance.

Repetition needs no rq-scheduler: every job first schedules its own next run
(``enqueue_at`` the next multiple of ``janitor_interval_seconds``) under an id naming that
time slot, so several janitors schedule one and the same next run; at start each job is
enqueued once at once. A job that raises still has its next run scheduled.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import redis

from kubestream.janitor import jobs
from kubestream.keys import Keys
from kubestream.settings import Settings

log = logging.getLogger("kubestream.janitor")


def rq_key_prefix(settings: Settings) -> str:
    return f"{Keys(settings.key_prefix).base}:rq"


def queue_name(settings: Settings) -> str:
    return f"{settings.key_prefix.replace(':', '-').replace('.', '-')}-janitor"


def _check_rq_prefix(settings: Settings) -> None:
    from rq.defaults import RQ_KEY_PREFIX

    if RQ_KEY_PREFIX != rq_key_prefix(settings):
        raise RuntimeError(f"rq was imported with RQ_KEY_PREFIX={RQ_KEY_PREFIX!r}; the janitor needs "
                           f"{rq_key_prefix(settings)!r} (set it before rq is imported)")


def _job_id(name: str, slot: int) -> str:
    return f"janitor-{name.replace('_', '-')}-{slot}"


def schedule_next(client: redis.Redis, settings: Settings, name: str, now: float) -> str:
    """Schedule the next run of ``name`` at the next slot boundary; the same id from every janitor."""
    from rq import Queue

    interval = settings.janitor_interval_seconds
    slot = int(now // interval) + 1
    job_id = _job_id(name, slot)
    Queue(queue_name(settings), connection=client).enqueue_at(
        datetime.fromtimestamp(slot * interval, UTC), run_job, name, job_id=job_id,
        result_ttl=int(max(interval * 2, 60)), failure_ttl=86400)
    return job_id


def run_job(name: str) -> Any:
    """The rq job: schedule the next run, then do the work (settings from the worker's environment)."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job runs inside an rq worker")
    settings = Settings.from_env(os.environ)
    try:
        schedule_next(job.connection, settings, name, time.time())
    finally:
        result = jobs.run(name, job.connection, settings)
    log.info("janitor job done", extra={"job": name})
    return result


def enqueue_all(client: redis.Redis, settings: Settings) -> list[str]:
    """Enqueue every maintenance job now (start-up)."""
    from rq import Queue

    queue = Queue(queue_name(settings), connection=client)
    slot = int(time.time() // settings.janitor_interval_seconds)
    ids = []
    for name in jobs.JOBS:
        job = queue.enqueue(run_job, name, job_id=_job_id(name, slot) + "-start",
                            result_ttl=int(max(settings.janitor_interval_seconds * 2, 60)), failure_ttl=86400)
        ids.append(job.id)
    return ids


def work(client: redis.Redis, settings: Settings, *, burst: bool = False) -> None:
    """Seed the jobs and run the worker (with rq's scheduler) until SIGTERM/SIGINT (rq's own handlers)."""
    from rq import Queue, SimpleWorker

    _check_rq_prefix(settings)
    enqueue_all(client, settings)
    worker = SimpleWorker([Queue(queue_name(settings), connection=client)], connection=client,
                          name=f"janitor-{socket.gethostname()}-{os.getpid()}")
    worker.work(burst=burst, with_scheduler=True, logging_level=logging.getLevelName(log.getEffectiveLevel()))
