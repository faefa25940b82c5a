"""One settings model for every kubestream component.

The executor reads these names from the Airflow config section
``[kubestream]`` (so ``AIRFLOW__KUBESTREAM__REDIS_URL`` works); launchers and
the watcher read the same names from ``KUBESTREAM_*`` environment variables.
Same names, same defaults. A wrong value fails at start with the variable's
name in the message (``SettingsError``).

The README's configuration table is generated from ``FIELDS`` by
``kubestream settings --markdown`` and checked by a test, so docs and code agree.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from kubestream.keys import Keys

ENV_PREFIX = "KUBESTREAM_"
AIRFLOW_SECTION = "kubestream"
AIRFLOW_ENV_PREFIX = "AIRFLOW__KUBESTREAM__"

DEFAULT_FATAL_REASONS = (
    "CreateContainerConfigError",
    "ErrImagePull",
    "CreateContainerError",
    "ImageInspectError",
    "InvalidImageName",
)


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable."""


def _doc(text: str, parse: Callable[[str], Any]) -> dict[str, Any]:
    return {"doc": text, "parse": parse}


def _int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            value = float("nan")
        if not value >= minimum:
            raise ValueError(f"expected a number >= {minimum}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _name(raw: str) -> str:
    value = raw.strip()
    if value and not _NAME.match(value):
        raise ValueError("expected 1-64 characters of [A-Za-z0-9_.-]")
    return value


def _names(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    if not values:
        raise ValueError("expected a comma-separated list with at least one name")
    for value in values:
        _name(value)
    return values


def _thresholds(raw: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in _csv(raw))
    if any(a <= b for a, b in zip(values, values[1:], strict=False)):
        raise ValueError("expected integers, highest first, each one smaller than the one before")
    return values


def _namespaces(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    for value in values:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a valid namespace name")
    return values


def _namespace(raw: str) -> str:
    values = _namespaces(raw)
    if len(values) != 1:
        raise ValueError("expected one namespace name")
    return values[0]


_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,99}$")


def _reasons(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    for value in values:
        if not _REASON.match(value):
            raise ValueError(f"{value!r} is not a container reason (letters and digits, e.g. ErrImagePull)")
    return values


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^(redis|rediss|unix)://", value):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return value


def _cluster(raw: str) -> str:
    return Keys("kubestream", raw.strip()).cluster  # keys.py owns the rule


def _prefix(raw: str) -> str:
    return Keys(raw.strip()).prefix  # keys.py is the one owner of the key-prefix rule


def _str(raw: str) -> str:
    return raw.strip()


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _patterns(raw: str) -> tuple[str, ...]:
    values = _csv(raw)
    if not values:
        raise ValueError("expected a comma-separated list with at least one pattern (`*` allows everything)")
    return values


@dataclass(frozen=True)
class Settings:
    """Every setting, with its default. Construct with ``from_env`` or ``from_mapping``."""

    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata=_doc(
        "Redis server for every stream and key (redis://, rediss:// or unix://).", _redis_url))
    redis_tls_ca_file: str = field(default="", metadata=_doc(
        "CA bundle that signs the Redis server's certificate (rediss:// URLs). Empty: the system's CAs.", _str))
    redis_tls_cert_file: str = field(default="", metadata=_doc(
        "Client certificate for Redis servers that require one (rediss://).", _str))
    redis_tls_key_file: str = field(default="", metadata=_doc(
        "Private key of `redis_tls_cert_file`.", _str))
    signing_keys: str = field(default="", metadata=_doc(
        "Keys that sign and verify every stream message, `id=base64key,...` (32+ bytes each; the first signs, all "
        "verify). The same on the scheduler, launchers and watcher; never stored in Redis. Use a Secret / "
        "Airflow `_secret`.", _str))
    signing_keys_file: str = field(default="", metadata=_doc(
        "File holding `signing_keys` (one entry per line), e.g. a mounted Kubernetes Secret; wins over "
        "`signing_keys`.", _str))
    allow_unsigned: bool = field(default=False, metadata=_doc(
        "Run without signing keys: anyone who can write to Redis can then start pods. Logged as a warning at "
        "every start. Never in production.", _bool))
    key_prefix: str = field(default="kubestream", metadata=_doc(
        "Prefix of every Redis key; wrapped in braces so all keys share one Redis Cluster slot.", _prefix))
    scheduler_id: str = field(default="", metadata=_doc(
        "Executor only: name of this scheduler's result stream. Empty: the scheduler job id.", _name))
    namespace: str = field(default="default", metadata=_doc(
        "Namespace where task pods are created (a task's queue may not override it).", _namespace))
    watch_namespaces: tuple[str, ...] = field(default=(), metadata=_doc(
        "Watcher: comma-separated namespaces to watch. Empty: `namespace` plus every `queue_namespaces` target.",
        _namespaces))
    queues: tuple[str, ...] = field(default=("default",), metadata=_doc(
        "Launcher: comma-separated Airflow queues (launch streams) this launcher serves.", _names))
    allowed_namespaces: tuple[str, ...] = field(default=(), metadata=_doc(
        "Namespaces a task's `pod_override` may put its pod in (`metadata.namespace`) besides its queue's, as "
        "the KubernetesExecutor honours it; the watcher watches them too (launchers need RBAC there). Any other "
        "namespace fails the task with the reason.", _namespaces))
    priority_bands: tuple[int, ...] = field(default=(), metadata=_doc(
        "Executor/launcher: `priority_weight` thresholds of the launch bands, highest first (e.g. `100,10`: "
        "weights >= 100, >= 10, the rest). Launchers read a higher band first, so when launches back up "
        "pods are created in priority order across the whole backlog. Empty: one stream per queue.",
        _thresholds))
    queue_namespaces: str = field(default="", metadata=_doc(
        "Launcher/watcher: per-queue namespace overrides, `queue=namespace,...` (e.g. `gpu=gpu-pool`).", _str))
    worker_image: str = field(default="apache/airflow:3.3.2", metadata=_doc(
        "Image of the task container `base` when the pod template does not set one.", _str))
    pod_template_file: str = field(default="", metadata=_doc(
        "Launcher: default pod template (YAML) that every task pod starts from. Executor, only with a "
        "`pod_mutation_hook`: the template the hook is shown for tasks without their own (give it the same file).",
        _str))
    pod_template_dir: str = field(default="", metadata=_doc(
        "Executor: directory a task's `executor_config` `pod_template_file` must resolve into (symlinks and `..` "
        "resolved); others fail the task. Empty: any file the scheduler can read, so a DAG author can use any "
        "readable YAML file (e.g. another team's template) as a template. The launcher's own default template is "
        "`pod_template_file`, read by the launcher, never taken from a message.", _str))
    pod_policy: str = field(default="baseline", metadata=_doc(
        "Launcher: what a task pod may be, checked on the final pod (template, pod_override, then "
        "`pod_policy_overlay_file`) before it is created; a refused pod fails its task. `baseline` or `restricted`: "
        "the Kubernetes Pod Security Standard of that name, plus no `nodeName`, `allowed_images`, "
        "`allowed_service_accounts` and the queue's namespace. `off`: no check at all.", _choice(
            "baseline", "restricted", "off")))
    allowed_images: tuple[str, ...] = field(default=("*",), metadata=_doc(
        "Launcher: comma-separated patterns (fnmatch, as written, e.g. `registry.example.com/airflow:*`) that every "
        "container image of a task pod must match. The default `*` allows any image: narrow it.", _patterns))
    allowed_service_accounts: tuple[str, ...] = field(default=("default",), metadata=_doc(
        "Launcher: comma-separated patterns (fnmatch) a task pod's service account must match (unset counts as "
        "`default`).", _patterns))
    pod_policy_overlay_file: str = field(default="", metadata=_doc(
        "Launcher: a YAML Pod merged last onto every task pod, over pod_override (same merge; every field it sets "
        "wins, also false, 0 and empty ones), e.g. `automountServiceAccountToken: false` or a securityContext. Read "
        "once at start; it may not set the pod's name, namespace or task labels.", _str))
    kube_config: str = field(default="", metadata=_doc(
        "Launcher/watcher: kubeconfig path. Empty: in-cluster config, then ~/.kube/config.", _str))
    kube_context: str = field(default="", metadata=_doc(
        "Launcher/watcher: kubeconfig context. Empty: the current context.", _str))
    launch_concurrency: int = field(default=16, metadata=_doc(
        "Launcher: pod creations in flight per launcher process.", _int(1)))
    create_rate: float = field(default=0.0, metadata=_doc(
        "Cluster-wide pod creations per second shared by all launchers through Redis. 0: unlimited.", _float(0)))
    create_burst: int = field(default=50, metadata=_doc(
        "Token bucket size for `create_rate`.", _int(1)))
    max_deliveries: int = field(default=5, metadata=_doc(
        "Launcher: deliveries of one launch message before it is dead-lettered and its task failed.", _int(1)))
    reclaim_idle_seconds: float = field(default=60.0, metadata=_doc(
        "Launcher: a launch message pending this long on another launcher is reclaimed. Must exceed "
        "`retry_budget_seconds`. The fallback for a launcher that is alive but stuck: a dead one's messages "
        "are claimed once its liveness key expires (`liveness_seconds`).", _float(1)))
    liveness_seconds: float = field(default=3.0, metadata=_doc(
        "Launcher: lifetime of its liveness key, refreshed every third of it by a thread of its own. Once "
        "it has expired (the process died) the other launchers claim its pending messages at once.", _float(1)))
    retry_budget_seconds: float = field(default=30.0, metadata=_doc(
        "Launcher: time spent retrying transient API errors for one delivery before leaving it for redelivery.",
        _float(0)))
    retry_base_seconds: float = field(default=0.2, metadata=_doc(
        "First backoff delay for transient API errors (jittered, doubling).", _float(0)))
    retry_max_seconds: float = field(default=10.0, metadata=_doc(
        "Cap of one backoff delay.", _float(0)))
    delete_worker_pods: bool = field(default=True, metadata=_doc(
        "Watcher: delete a pod once its final state is published.", _bool))
    delete_worker_pods_on_failure: bool = field(default=False, metadata=_doc(
        "Watcher: also delete pods that failed (kept for debugging when false).", _bool))
    fatal_container_reasons: tuple[str, ...] = field(default=DEFAULT_FATAL_REASONS, metadata=_doc(
        "Watcher: waiting reasons of a Pending pod that fail its task "
        "(ErrImagePull with 'pull QPS exceeded' is never fatal).", _csv))
    watch_timeout_seconds: int = field(default=300, metadata=_doc(
        "Watcher: server-side timeout of one watch request before it is renewed.", _int(1)))
    lease_seconds: float = field(default=3.0, metadata=_doc(
        "Watcher: leadership lease, renewed every third of it; a standby (trying every sixth) takes over "
        "at most this long after the leader died. A restarted watcher of the same name takes it at once.",
        _float(1)))
    health_ttl_seconds: float = field(default=30.0, metadata=_doc(
        "Lifetime of a component's health key (refreshed every third of it).", _float(1)))
    block_ms: int = field(default=1000, metadata=_doc(
        "Launcher: XREADGROUP BLOCK timeout in milliseconds (kept <= 2000, see docs).", _int(1)))
    sync_batch: int = field(default=2000, metadata=_doc(
        "Executor: maximum results applied per sync() call.", _int(1)))
    results_maxlen: int = field(default=100000, metadata=_doc(
        "Approximate MAXLEN of each result stream (acknowledged entries are trimmed).", _int(100)))
    task_ttl_seconds: int = field(default=7 * 24 * 3600, metadata=_doc(
        "Lifetime of a task's Redis record after its dispatch or revoke (while it has no final state).",
        _int(60)))
    final_record_ttl_seconds: int = field(default=3600, metadata=_doc(
        "Lifetime of a task's Redis record once its final state is published (at most `task_ttl_seconds`): "
        "`get_task_log` and adoption know the task that long after it ended.", _int(60)))
    dead_letters_maxlen: int = field(default=10000, metadata=_doc(
        "Approximate MAXLEN of the dead-letter stream (the oldest dead letters are trimmed).",
        _int(100)))
    reconcile_seconds: float = field(default=60.0, metadata=_doc(
        "Executor: how often `running` is checked against the task records in Redis; a task whose record "
        "vanished (Redis lost its data) is reported with the state it wrote to the Airflow DB.", _float(1)))
    pod_launch_failure_retries: int = field(default=1, metadata=_doc(
        "Executor: times a task whose pod failed before the task process started (its task instance still "
        "queued in the Airflow DB: image pull error, CreateContainerConfigError, admission denial, node gone) "
        "is launched again without consuming a task try, as the KubernetesExecutor's `[kubernetes_executor] "
        "pod_launch_failure_retries`. -1: no limit (a pod that can never start is launched forever), 0: off.",
        _int(-1)))
    pod_launch_failure_excluded_container_reasons: tuple[str, ...] = field(default=("Error",), metadata=_doc(
        "Executor: comma-separated container reasons never launched again (the failure is reported and "
        "consumes a try). `Error`: the container ran and exited before its task told Airflow it runs. Empty: "
        "none excluded.", _reasons))
    janitor_interval_seconds: float = field(default=300.0, metadata=_doc(
        "Janitor: seconds between runs of each maintenance job (the janitor's rq scheduler enqueues them).", _float(1)))
    stale_after_seconds: float = field(default=3600.0, metadata=_doc(
        "Janitor: a result stream of a scheduler gone this long, or a consumer idle this long with nothing "
        "pending, is deleted.", _float(60)))
    failed_pod_retention_seconds: float = field(default=86400.0, metadata=_doc(
        "Janitor: a failed task pod (kept by the watcher for its logs) is deleted this long after it "
        "finished.", _float(0)))
    metrics_host: str = field(default="127.0.0.1", metadata=_doc(
        "Launcher/watcher: address /healthz and /metrics listen on (the manifests use the pod's IP).", _str))
    launch_maxlen: int = field(default=1_000_000, metadata=_doc(
        "Approximate MAXLEN of each launch stream: a safety cap for a backlog nobody serves (a trimmed launch "
        "is requeued by Airflow's task_queued_timeout). Settled entries are deleted at once.", _int(1000)))
    max_message_bytes: int = field(default=1_048_576, metadata=_doc(
        "Largest encoded launch message: the executor fails a task whose message is larger, launchers "
        "dead-letter one they read.", _int(1024)))
    metrics_port: int = field(default=0, metadata=_doc(
        "Launcher/watcher: HTTP port for /healthz and /metrics (Prometheus text). 0: disabled.", _int(0)))
    cluster: str = field(default="", metadata=_doc(
        "Launcher/watcher: name of the Kubernetes cluster this process serves (its kubeconfig's) when one "
        "Airflow drives several: each cluster has its own launchers (their `queues` route tasks to it) and "
        "its own watcher lease, checkpoints and live set. Empty: one cluster.", _cluster))
    consumer_name: str = field(default="", metadata=_doc(
        "Launcher/watcher: consumer and lease holder name. Empty: hostname-pid.", _name))
    running_pod_log_lines: int = field(default=100, metadata=_doc(
        "Executor: lines read from the end of a running task's pod log for the Airflow UI (`get_task_log`), "
        "as the KubernetesExecutor's `[kubernetes_executor] running_pod_log_lines`; a watcher serves them "
        "(at most 10000).", _int(1)))
    pod_log_timeout_seconds: float = field(default=5.0, metadata=_doc(
        "Executor: how long `get_task_log` waits for a watcher's answer with a running pod's log lines.",
        _float(0.5)))
    pod_log_max_bytes: int = field(default=262144, metadata=_doc(
        "Watcher: largest pod log answer it writes to Redis (the newest lines are kept; the answer expires "
        "10 s after it is written).", _int(1024)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, str], *, source: str = ENV_PREFIX) -> Settings:
        """Build from lowercase setting names; ``source`` names variables in errors."""
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        for name, raw in values.items():
            key = name.lower()
            if key not in known:
                continue
            f = _FIELD_BY_NAME[key]
            try:
                kwargs[key] = f.metadata["parse"](str(raw))
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{_var(source, key)}={raw!r}: {exc}") from None
        settings = cls(**kwargs)
        settings.check(source)
        return settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values = {k[len(ENV_PREFIX):].lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
        return cls.from_mapping(values, source=ENV_PREFIX)

    def check(self, source: str = ENV_PREFIX) -> None:
        """Cross-field rules."""
        if self.reclaim_idle_seconds <= self.retry_budget_seconds:
            raise SettingsError(
                f"{_var(source, 'reclaim_idle_seconds')}={self.reclaim_idle_seconds} must exceed "
                f"{_var(source, 'retry_budget_seconds')}={self.retry_budget_seconds}, or a launch still "
                "being retried would be reclaimed by another launcher"
            )
        if self.final_record_ttl_seconds > self.task_ttl_seconds:
            raise SettingsError(
                f"{_var(source, 'final_record_ttl_seconds')}={self.final_record_ttl_seconds} must not exceed "
                f"{_var(source, 'task_ttl_seconds')}={self.task_ttl_seconds}"
            )
        try:
            self.queue_namespace_map  # noqa: B018 - parsed (and kept) here so that a bad value fails at load
        except ValueError as exc:
            raise SettingsError(f"{_var(source, 'queue_namespaces')}={self.queue_namespaces!r}: {exc}") from None

    @cached_property
    def queue_namespace_map(self) -> Mapping[str, str]:
        """``queue_namespaces`` parsed once (each launch reads it)."""
        result: dict[str, str] = {}
        for item in _csv(self.queue_namespaces):
            queue, sep, ns = item.partition("=")
            if not sep or not queue.strip() or not _DNS_LABEL.match(ns.strip()):
                raise ValueError(f"expected queue=namespace pairs, got {item!r}")
            result[queue.strip()] = ns.strip()
        return MappingProxyType(result)

    def namespace_for_queue(self, queue: str) -> str:
        return self.queue_namespace_map.get(queue, self.namespace)

    def namespace_for_launch(self, queue: str, requested: str | None) -> str:
        """The namespace of a task's pod: the one its ``pod_override`` asks for (``requested``) when that is
        the queue's or an allowed one, the queue's when it asks for none. ValueError names the refusal."""
        default = self.namespace_for_queue(queue)
        if not requested or requested == default or requested in self.allowed_namespaces:
            return requested or default
        raise ValueError(f"pod_override namespace {requested!r} is not allowed: queue {queue!r} runs its pods in "
                         f"{default!r}; allowed_namespaces lists the others ({', '.join(self.allowed_namespaces)})")

    def band_for(self, priority_weight: int) -> int | None:
        """The launch band of a task of ``priority_weight``: the index of the first threshold it reaches
        (0 is read first), None for the rest (the queue's plain stream)."""
        for band, threshold in enumerate(self.priority_bands):
            if priority_weight >= threshold:
                return band
        return None

    def revoke_stream(self, keys: Keys, queue: str) -> str:
        """The stream a revoke of ``queue``'s task goes to: the highest band's, which launchers read first,
        when there are bands (on the plain stream it waited for every band to run dry: a relaunch waiting for
        its failed pod's delete then gave up behind a banded backlog), else the queue's."""
        return keys.launch(queue, 0 if self.priority_bands else None)

    def launch_streams(self, keys: Keys, queues: Sequence[str]) -> list[str]:
        """The launch streams of ``queues`` in the order launchers read them: every queue's highest
        band first, every queue's plain stream last."""
        banded = [keys.launch(q, band) for band in range(len(self.priority_bands)) for q in queues]
        return banded + [keys.launch(q) for q in queues]

    def namespaces_to_watch(self) -> tuple[str, ...]:
        if self.watch_namespaces:
            return self.watch_namespaces
        return tuple(dict.fromkeys((self.namespace, *self.queue_namespace_map.values(), *self.allowed_namespaces)))

    def to_env(self, prefix: str = ENV_PREFIX) -> dict[str, str]:
        """Every setting as a variable ``<prefix><NAME>`` whose value parses back to the same setting
        (``KUBESTREAM_`` for launchers and watcher, ``AIRFLOW__KUBESTREAM__`` for the executor)."""
        return {f"{prefix}{f.name.upper()}": format_value(getattr(self, f.name)) for f in FIELDS}

    def member_name(self) -> str:
        """This process's consumer / lease-holder name."""
        import os

        return self.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


def _var(source: str, key: str) -> str:
    if source == ENV_PREFIX:
        return f"{ENV_PREFIX}{key.upper()}"
    return f"[{source}] {key}"


def format_value(value: object) -> str:
    """A setting's value in the text form its parser reads (lists comma-separated, booleans lowercase)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


FIELDS = dataclasses.fields(Settings)
_FIELD_BY_NAME = {f.name: f for f in FIELDS}


def markdown_table() -> str:
    """The README's configuration table."""
    rows = ["| name | env / Airflow config | default | meaning |", "|---|---|---|---|"]
    for f in FIELDS:
        default = format_value(f.default)
        shown = f"`{default}`" if default else "(empty)"
        rows.append(
            f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` / `{AIRFLOW_ENV_PREFIX}{f.name.upper()}` "
            f"| {shown} | {f.metadata['doc']} |"
        )
    return "\n".join(rows)
