"""The local demo: a real Airflow running kubestream on this machine, end to end.

Brings up PostgreSQL, Redis, the local kube-apiserver + etcd, the simulated
kubelet in process mode (each pod's command really runs), two launchers and
the watcher, and Airflow (api-server, dag-processor, scheduler) with
``KubeStreamExecutor``; triggers the ``kubestream_demo`` DAG, shows progress,
prints where the UI is and a summary, and stops everything it started (also on
Ctrl-C). ``--keep`` leaves it running for the UI until Ctrl-C; ``--down``
stops a demo left running by a terminal that went away. ``--real-node`` runs the
pods on a real kubelet + Docker node instead (``devkit.realnode``: root, dockerd
and the cached kubelet needed): each task in a container of the node's Debian
base image with this machine's Python and Airflow mounted read-only. Logs stay in the state
directory (``KUBESTREAM_DEMO_DIR``, default /tmp/kubestream-demo-<uid>)
until the next run, which starts from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kubernetes import client as k8s

from devkit.airflowstack import AirflowStack
from devkit.cluster import LocalCluster
from devkit.kubelet import SimKubelet
from devkit.postgres import PostgresServer
from devkit.procs import spawn, stop_pid, wait_for
from devkit.realnode import RealNode, host_runtime_template
from devkit.redisserver import RedisServer
from devkit.workloads import DEV_SIGNING_KEYS
from kubestream.kubeapi import api_client

DAG_ID = "kubestream_demo"
NAMESPACE = "kubestream-demo"
STATE_DIR = Path(os.environ.get("KUBESTREAM_DEMO_DIR", Path(tempfile.gettempdir()) / f"kubestream-demo-{os.getuid()}"))
NODE_DIR = Path(f"/tmp/ks-demo-node-{os.getuid()}")  # short: the node's dockerd sockets live under it


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class Demo:
    def __init__(self, work: Path, *, real_node: bool = False) -> None:
        self.work = work
        self.real_node = real_node
        self.node: RealNode | None = None
        self.pids: list[int] = []
        self.postgres = PostgresServer(data_dir=work / "postgres")
        self.redis = RedisServer(data_dir=work / "redis")
        self.cluster = LocalCluster(work / "cluster", real_node=real_node)
        self.kubelet: SimKubelet | None = None
        self.stack: AirflowStack | None = None

    def _record(self, pid: int) -> None:
        self.pids.append(pid)
        (self.work / "pids.json").write_text(json.dumps(self.pids))

    def up(self) -> AirflowStack:
        _say(f"state and logs in {self.work}")
        self.postgres.start()
        self._record(self.postgres.pid)
        self.redis.start()
        self._record(self.redis.pid)
        _say("starting the local Kubernetes control plane (etcd + kube-apiserver)")
        state = self.cluster.up((NAMESPACE,))
        dags = Path(__file__).with_name("demo_dags")
        stack = self.stack = AirflowStack(self.work / "airflow", dags, self.postgres.url, {
            "redis_url": self.redis.url, "namespace": NAMESPACE, "signing_keys": DEV_SIGNING_KEYS},
            extra={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"})
        env = {**os.environ, "KUBESTREAM_REDIS_URL": self.redis.url, "KUBESTREAM_NAMESPACE": NAMESPACE,
               "KUBESTREAM_SIGNING_KEYS": DEV_SIGNING_KEYS}
        if self.real_node:
            _say("starting a real node: kubelet v1.20 + Docker in namespaces of their own")
            self.node = RealNode(state, NODE_DIR)
            node = self.node.up()
            template = self.work / "pod_template.yaml"
            template.write_text(json.dumps(host_runtime_template(node.base_image, stack.task_env(), [stack.home])))
            env |= {"KUBESTREAM_POD_TEMPLATE_FILE": str(template), "KUBESTREAM_POD_POLICY": "off",
                    "KUBESTREAM_WORKER_IMAGE": node.base_image}
        else:
            self.kubelet = SimKubelet(api_client(state.kubeconfig("kubelet")), node_name="demo-node", mode="process",
                                      namespaces=[NAMESPACE], work_dir=self.work / "pods",
                                      extra_env=stack.task_env()).start()
        for name, identity in (("launcher-1", "launcher"), ("launcher-2", "launcher"), ("watcher", "watcher")):
            proc = spawn([sys.executable, "-m", "kubestream.cli", identity],
                         self.work / f"{name}.log", env={**env, "KUBESTREAM_KUBE_CONFIG": state.kubeconfig(identity),
                                                         "KUBESTREAM_CONSUMER_NAME": name})
            self._record(proc.pid)
        _say("2 launchers and the watcher are running; migrating the Airflow database")
        stack.migrate()
        stack.start_api_server()
        stack.start_dag_processor()
        stack.start_scheduler()
        for proc in stack.procs.values():
            self._record(proc.pid)
        _say(f"Airflow UI: {stack.env['AIRFLOW__API__BASE_URL']} (no login needed)")
        _say(f"kubectl --kubeconfig {state.kubeconfig('admin')} get pods -n {NAMESPACE}")
        return stack

    def down(self) -> None:
        _say("stopping everything the demo started")
        if self.stack is not None:
            self.stack.stop()
        if self.kubelet is not None:
            self.kubelet.stop()
        for pid in reversed(self.pids):
            stop_pid(pid, timeout=15)
        if self.node is not None:
            self.node.down()
        self.cluster.down()
        self.redis.stop()
        self.postgres.stop()


def run(stack: AirflowStack, timeout: float, admin_kubeconfig: str) -> int:
    stack.wait_dag_parsed(DAG_ID)
    run_id = time.strftime("demo__%Y-%m-%dT%H:%M:%S")
    started = time.monotonic()
    stack.trigger(DAG_ID, run_id)
    _say(f"triggered {DAG_ID} run {run_id}")
    last = ""

    def finished() -> bool:
        nonlocal last
        states = stack.task_states(DAG_ID, run_id)
        line = ", ".join(f"{s or 'none'}: {n}" for s, n in sorted(Counter(v["state"] for v in states.values()).items(),
                                                                 key=lambda x: str(x[0])))
        if line != last:
            _say(f"{time.monotonic() - started:5.1f}s  {len(states)} task instances  {line}")
            last = line
        return stack.run_state(DAG_ID, run_id) in ("success", "failed")

    wait_for(finished, timeout=timeout, interval=1, what=f"the {DAG_ID} run")
    elapsed = time.monotonic() - started
    states = stack.task_states(DAG_ID, run_id)
    pods = k8s.CoreV1Api(api_client(admin_kubeconfig)).list_namespaced_pod(NAMESPACE).items
    result = stack.run_state(DAG_ID, run_id)
    print(flush=True)
    phases = Counter(p.status.phase for p in pods)
    _say(f"summary: DAG run {result} in {elapsed:.1f}s; {len(states)} task instances, one pod each; "
         f"pods not yet deleted by the watcher: {dict(phases) or 'none'}")
    for (task_id, map_index), v in sorted(states.items()):
        label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        _say(f"  {label:<16} {v['state']:<10} try {v['try_number']}")
    return 0 if result == "success" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubestream-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running after the run (Ctrl-C stops)")
    parser.add_argument("--down", action="store_true", help="stop a demo left running")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--real-node", action="store_true",
                        help="run the pods on a real kubelet + Docker node (needs root, dockerd, the cached kubelet)")
    args = parser.parse_args(argv)
    if args.down:
        return _down_leftover()
    if (STATE_DIR / "pids.json").exists():
        _down_leftover()
    shutil.rmtree(STATE_DIR, ignore_errors=True)  # the previous run's logs and data: each run starts fresh
    STATE_DIR.mkdir(parents=True)
    demo = Demo(STATE_DIR, real_node=args.real_node)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack = demo.up()
        code = run(stack, args.timeout, demo.cluster.load().kubeconfig("admin"))
        if args.keep:
            _say("running until Ctrl-C (or `./scripts/demo --down` from another terminal)")
            signal.pause()
        return code
    except KeyboardInterrupt:
        print(flush=True)
        _say("interrupted")
        return 130
    finally:
        demo.down()
        (STATE_DIR / "pids.json").unlink(missing_ok=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _down_leftover() -> int:
    pids_file = STATE_DIR / "pids.json"
    pids = json.loads(pids_file.read_text()) if pids_file.exists() else []
    for pid in reversed(pids):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        stop_pid(pid, timeout=15)
    cluster = LocalCluster(STATE_DIR / "cluster").load()
    if cluster is not None:
        RealNode(cluster, NODE_DIR).down()  # nothing to do without a node state there
    LocalCluster(STATE_DIR / "cluster").down()
    pids_file.unlink(missing_ok=True)
    _say(f"stopped {len(pids)} leftover processes and the local cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
