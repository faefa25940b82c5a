"""A no-op launcher for the scale benchmark's dispatch-path phase: no Kubernetes at all.

    python -m bench.scale_noop --name NAME [--ready-file F]      (settings from KUBESTREAM_* variables)

A consumer named NAME in the launchers' consumer group of every launch stream of the configured queues.
For each launch it verifies the entry's signature, decodes it, publishes a SUCCEEDED result for the task
through kubestream's own ``TaskStore.publish_many`` (two round trips per batch read; signed for the owner's
result stream, as a launcher's results are) and acknowledges the entry. It stands in for "launcher + pod +
watcher" so that what is measured is kubestream's path alone: executor -> Redis -> consumer -> result -> ``sync()``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from kubestream.keys import LAUNCH_GROUP, Keys
from kubestream.messages import LaunchTask, TaskState, TaskStateChanged, decode
from kubestream.settings import Settings
from kubestream.signing import signer_for
from kubestream.store import TaskStore
from kubestream.text import stream_entries

BATCH = 500


def ensure_groups(client: redis.Redis, streams: Sequence[str]) -> None:
    for stream in streams:
        try:
            client.xgroup_create(stream, LAUNCH_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def serve(settings: Settings, name: str, ready_file: str | None, stopping: list[bool]) -> int:
    """Answer every launch until ``stopping[0]``; returns how many results were published."""
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    signer = signer_for(settings)
    store = TaskStore(client, keys, settings, signer)
    streams = settings.launch_streams(keys, settings.queues)
    ensure_groups(client, streams)
    if ready_file:
        Path(ready_file).write_text("ready")
    published = 0
    while not stopping[0]:
        rows = stream_entries(client.xreadgroup(LAUNCH_GROUP, name, {s: ">" for s in streams}, count=BATCH,
                                                block=200))
        acks = client.pipeline(transaction=False)
        events: list[tuple[TaskStateChanged, str | None]] = []
        for stream, entry_id, fields in rows:
            acks.xack(stream, LAUNCH_GROUP, entry_id)
            if fields is None:
                continue
            msg = decode(signer.verify(stream, fields))
            if not isinstance(msg, LaunchTask):
                continue
            events.append((TaskStateChanged(key=msg.key, state=TaskState.SUCCEEDED, pod_name=msg.pod_name,
                                            at=time.time()), msg.external_executor_id))
        published += sum(p.published for p in store.publish_many(events))
        if rows:
            acks.execute()
    client.close()
    return published


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_noop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="consumer name in the launchers' group")
    parser.add_argument("--ready-file", help="written once the consumer groups exist")
    args = parser.parse_args(argv)
    stopping = [False]

    def stop(*_: object) -> None:
        stopping[0] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    serve(Settings.from_env(os.environ), args.name, args.ready_file, stopping)
    return 0


if __name__ == "__main__":
    sys.exit(main())
