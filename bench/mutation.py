"""What Airflow's ``pod_mutation_hook`` costs the scheduler per task, on the executor's own code path.

``python -m bench.mutation [--tasks 1000] [--rounds 3]`` builds N launch messages as
``KubeStreamExecutor._process_workloads`` does (``launch_message``, the namespace check, ``encode``,
the signature) for KubernetesExecutor-style tasks (a V1Pod ``pod_override`` and a
``pod_template_file``), with and without a hook, and measures CPU time per task (the best of
``--rounds``, so that other processes on the machine inflate it least):

- ``no_hook``: a deployment without a hook (nothing of the mutation runs: the baseline);
- ``noop_hook``: a hook that changes nothing (the fixed cost: the pod built, converted to a V1Pod
  and back, diffed);
- ``policy_hook``: a typical cluster policy (a label, a toleration, an env variable on the base
  container: the patch replaces the tolerations and containers lists);
- ``kubernetes_executor``: the provider's ``PodGenerator.construct_pod(..., with_mutation_hook=True)``
  with the same hook and the template file read per task, for scale (what the KubernetesExecutor
  spends building the same pod before it even serialises it for the API call). Skipped when the
  provider is not installed.

Also the launcher's side (``build_pod`` with and without the patch) and the launch message's size.
Prints the figures and writes them to bench/results/mutation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_FILE = Path(__file__).with_name("results") / "mutation.json"
TEMPLATE = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"labels": {"team": "data"}},
    "spec": {"restartPolicy": "Never", "serviceAccountName": "airflow-worker",
             "containers": [{"name": "base", "image": "apache/airflow:3.3.2",
                             "env": [{"name": "TZ", "value": "UTC"}],
                             "volumeMounts": [{"name": "logs", "mountPath": "/opt/airflow/logs"}]}],
             "volumes": [{"name": "logs", "emptyDir": {}}]},
}


@dataclass(frozen=True)
class Case:
    name: str
    tasks: int
    cpu_us_per_task: float  # best round
    message_bytes: int  # one encoded launch message
    patch_bytes: int  # of which the pod_mutation (msgpack), 0 without


@dataclass(frozen=True)
class Launcher:
    build_pod_us: float  # without a patch
    build_pod_with_patch_us: float


def noop_hook(pod: Any) -> None:
    pass


def policy_hook(pod: Any) -> None:
    from kubernetes.client import models as k8s

    pod.metadata.labels["cost-center"] = "analytics"
    pod.spec.tolerations = [*(pod.spec.tolerations or []),
                            k8s.V1Toleration(key="dedicated", operator="Exists", effect="NoSchedule")]
    base = pod.spec.containers[0]
    base.env = [*(base.env or []), k8s.V1EnvVar(name="POLICY", value="on")]


def _workloads(tasks: int, template_path: str) -> list[Any]:
    from kubernetes.client import models as k8s

    from devkit.workloads import workload

    override = k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(
        name="base", env=[k8s.V1EnvVar(name="FROM_OVERRIDE", value="x")],
        resources=k8s.V1ResourceRequirements(limits={"memory": "512Mi"}))]))
    config = {"pod_override": override, "pod_template_file": template_path}
    return [workload("bench_mutation", f"t{i}", executor_config=config, token="x" * 600) for i in range(tasks)]


def _best(rounds: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def executor_case(name: str, hook: Callable[[Any], None] | None, works: list[Any], rounds: int) -> Case:
    import airflow.settings

    from devkit.workloads import DEV_SIGNING_KEYS
    from kubestream.executor.launches import launch_message
    from kubestream.executor.mutation import PodMutation, airflow_hook
    from kubestream.messages import encode
    from kubestream.settings import Settings
    from kubestream.signing import Signer

    settings = Settings(namespace="airflow")
    signer = Signer.parse(DEV_SIGNING_KEYS)
    default = airflow.settings.pod_mutation_hook
    if hook is not None:
        airflow.settings.pod_mutation_hook = hook
    try:
        mutation = PodMutation.for_airflow(settings)  # what the executor finds once, at its first dispatch
        assert (mutation is None) == (hook is None) and (hook is not None or airflow_hook() is None)

        def run() -> None:
            for w in works:
                msg = launch_message(w, "sched", mutation=mutation)
                settings.namespace_for_launch(msg.queue, msg.requested_namespace)
                signer.sign("launch:default", encode(msg))

        seconds = _best(rounds, run)
        msg = launch_message(works[0], "sched", mutation=mutation)
    finally:
        airflow.settings.pod_mutation_hook = default
    size = len(encode(msg))
    return Case(name, len(works), round(seconds / len(works) * 1e6, 1), size,
                size - len(encode(dataclasses.replace(msg, pod_mutation=None))))


def provider_case(hook: Callable[[Any], None], works: list[Any], rounds: int, template_path: str) -> Case | None:
    try:
        from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    except ImportError:
        return None
    import airflow.settings

    default = airflow.settings.pod_mutation_hook
    airflow.settings.pod_mutation_hook = hook
    try:
        def run() -> None:
            for w in works:
                ti = w.ti
                base = PodGenerator.deserialize_model_file(template_path)  # per task, as its executor_config says
                PodGenerator.construct_pod(
                    dag_id=ti.dag_id, task_id=ti.task_id, pod_id=f"pod-{ti.task_id}", try_number=ti.try_number,
                    kube_image="apache/airflow:3.3.2", date=None,
                    args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string",
                          w.model_dump_json()],
                    pod_override_object=ti.executor_config["pod_override"], base_worker_pod=base,
                    namespace="airflow", scheduler_job_id="sched", run_id=ti.run_id, map_index=ti.map_index,
                    with_mutation_hook=True)

        seconds = _best(rounds, run)
    finally:
        airflow.settings.pod_mutation_hook = default
    return Case("kubernetes_executor", len(works), round(seconds / len(works) * 1e6, 1), 0, 0)


def launcher_case(works: list[Any], rounds: int) -> Launcher:
    import airflow.settings

    from kubestream.executor.launches import launch_message
    from kubestream.executor.mutation import PodMutation
    from kubestream.settings import Settings
    from kubestream.workers.podspec import build_pod

    default = airflow.settings.pod_mutation_hook
    airflow.settings.pod_mutation_hook = policy_hook
    try:
        mutation = PodMutation.for_airflow(Settings(namespace="airflow"))
        msgs = [launch_message(w, "sched", mutation=mutation) for w in works]
    finally:
        airflow.settings.pod_mutation_hook = default

    def build(with_patch: bool) -> Callable[[], None]:
        def run() -> None:
            for m in msgs:
                build_pod(key=m.key, namespace="airflow", image="apache/airflow:3.3.2", workload_json=m.workload_json,
                          scheduler_id=m.scheduler_id, template=m.pod_template, pod_override=m.pod_override,
                          pod_mutation=m.pod_mutation if with_patch else None)
        return run

    plain, patched = _best(rounds, build(False)), _best(rounds, build(True))
    return Launcher(round(plain / len(msgs) * 1e6, 1), round(patched / len(msgs) * 1e6, 1))


def measure(tasks: int, rounds: int, template_path: str) -> dict[str, Any]:
    works = _workloads(tasks, template_path)
    cases = [executor_case("no_hook", None, works, rounds), executor_case("noop_hook", noop_hook, works, rounds),
             executor_case("policy_hook", policy_hook, works, rounds)]
    provider = provider_case(policy_hook, works, rounds, template_path)
    return {"date": time.strftime("%Y-%m-%d"), "tasks": tasks, "rounds": rounds,
            "executor": [asdict(c) for c in cases + ([provider] if provider else [])],
            "launcher": asdict(launcher_case(works, rounds))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ks-mutation-") as work:
        template = Path(work) / "pod_template.json"  # JSON is YAML: read as the executor reads any template
        template.write_text(json.dumps(TEMPLATE))
        results = measure(args.tasks, args.rounds, str(template))
    print(json.dumps(results, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
