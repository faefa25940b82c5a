"""The apiserver's view of a benchmark run, in a process of its own: when each pod was first seen and
when it was first seen Succeeded or Failed, on the shared monotonic clock.

    python -m bench.versus_observer --kubeconfig K --namespace NS --out FILE [--ready-file F]

It lists and watches ``NS`` directly (no latency proxy) and appends one JSON line per fact to ``FILE``:
``{"e": "seen", "t": <time.monotonic()>, "uid", "key": [dag_id, task_id, run_id, try_number, map_index]}``
(the key from the pod's annotations, as both executors write them) and ``{"e": "done", "t", "uid",
"phase"}``. ``time.monotonic()`` is CLOCK_MONOTONIC, shared by every process of the machine, so the
benchmark compares these times with its own: "pod Succeeded -> event in the executor" is the report lag.
It never writes to the API. With ``--db-url`` it also plays the tasks' own DB writes (``TaskWrites``).
``read_observations`` parses the file.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kubestream.kubeapi import Gone, PodApi, api_client

FINISHED = ("Succeeded", "Failed")
Key = tuple[str, str, str, int, int]


def _key(meta: dict[str, Any]) -> list[Any] | None:
    ann = meta.get("annotations") or {}
    if "dag_id" not in ann or "task_id" not in ann:
        return None
    try:
        return [ann["dag_id"], ann["task_id"], ann.get("run_id", ""), int(ann.get("try_number", 1)),
                int(ann.get("map_index", -1))]
    except ValueError:
        return None


class TaskWrites:
    """Plays each task's own write to the metadata DB: when its pod is first seen Running, the task
    instance becomes ``success`` (a real task marks itself running, then success, through the API
    server while its pod runs; nothing runs the task here). In a thread of its own, so that the DB
    round trip never delays the observer's clock readings."""

    SQL = ("UPDATE task_instance SET state = 'success' WHERE dag_id = %s AND task_id = %s AND run_id = %s "
           "AND map_index = %s AND try_number = %s")

    def __init__(self, db_url: str) -> None:
        import psycopg2

        self.conn = psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://", 1))
        self.conn.autocommit = True
        self.queue: queue.Queue[list[Any]] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with self.conn.cursor() as cur:
            while True:
                dag_id, task_id, run_id, try_number, map_index = self.queue.get()
                cur.execute(self.SQL, (dag_id, task_id, run_id, map_index, try_number))


class Observer:
    def __init__(self, pods: PodApi, namespace: str, out: TextIO, writes: TaskWrites | None = None) -> None:
        self.pods, self.namespace, self.out, self.writes = pods, namespace, out, writes
        self.seen: set[str] = set()
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.stopping = threading.Event()
        self.listed = threading.Event()  # the first list is recorded: the watch follows from there

    def record(self, pod: dict[str, Any]) -> None:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        uid = str(meta.get("uid") or "")
        now = time.monotonic()
        if uid not in self.seen:
            self.seen.add(uid)
            self.out.write(json.dumps({"e": "seen", "t": now, "uid": uid, "key": _key(meta)}) + "\n")
        phase = status.get("phase")
        if phase in ("Running", *FINISHED) and uid not in self.running:
            self.running.add(uid)
            key = _key(meta)
            if self.writes is not None and key is not None:
                self.writes.queue.put(key)
        if phase in FINISHED and uid not in self.done:
            self.done.add(uid)
            self.out.write(json.dumps({"e": "done", "t": now, "uid": uid, "phase": phase}) + "\n")
        self.out.flush()

    def run(self) -> None:
        rv = ""
        while not self.stopping.is_set():
            try:
                if not rv:
                    page = self.pods.list(self.namespace, limit=5000)
                    for pod in page.items:
                        self.record(pod)
                    rv = page.resource_version
                    self.listed.set()
                for event in self.pods.watch(self.namespace, rv, timeout_seconds=60):
                    obj = event["object"]
                    rv = str(obj["metadata"]["resourceVersion"])
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.record(obj)
            except Gone:
                rv = ""
            except Exception:  # noqa: BLE001 - a dropped watch: resume after a pause
                self.stopping.wait(0.2)


@dataclass(frozen=True)
class PodSeen:
    uid: str
    key: Key | None
    seen_at: float
    done_at: float | None
    phase: str | None


def read_observations(path: Path) -> list[PodSeen]:
    """Every pod the observer recorded, in order of first sighting."""
    seen: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            fact = json.loads(line)
        except ValueError:  # a line being written
            continue
        if fact["e"] == "seen":
            seen.setdefault(fact["uid"], {"key": fact["key"], "t": fact["t"], "done": None, "phase": None})
        elif fact["uid"] in seen:
            seen[fact["uid"]].update(done=fact["t"], phase=fact["phase"])
    return [PodSeen(uid, tuple(v["key"]) if v["key"] else None, v["t"], v["done"], v["phase"])  # type: ignore[arg-type]
            for uid, v in seen.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versus_observer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready-file")
    parser.add_argument("--db-url", help="the Airflow metadata DB: play each task's write of its state")
    args = parser.parse_args(argv)
    writes = TaskWrites(args.db_url) if args.db_url else None
    with open(args.out, "a") as out:
        observer = Observer(PodApi(api_client(args.kubeconfig)), args.namespace, out, writes)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: observer.stopping.set())
        thread = threading.Thread(target=observer.run, daemon=True)
        thread.start()
        while not observer.listed.wait(0.1) and not observer.stopping.is_set():
            pass
        if args.ready_file:
            Path(args.ready_file).write_text("ready")
        while not observer.stopping.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
