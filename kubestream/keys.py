"""Every Redis key kubestream uses, built from one validated prefix.

The prefix is wrapped in braces (``{kubestream}:...``) so that all keys hash
to one Redis Cluster slot: Lua scripts touch several of them at once.

``cluster`` names the Kubernetes cluster of a launcher or watcher when one Airflow
drives several: the watcher lease, its checkpoints and the live set are then the
cluster's own (``{p}:watcher:cluster:<name>:...``); without one they are the
single-cluster keys. Task records, launch and result streams are shared.

The key table in docs/architecture.md documents each one; keep them in sync.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = re.compile(r"^[A-Za-z0-9_.:\-]{1,32}$")
_BAND = re.compile(r"!\d+:")  # a priority band's stream: queue names (settings._NAME) never hold "!"
_CLUSTER = re.compile(r"^(|[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?)$")

LAUNCH_GROUP = "launchers"
RESULTS_GROUP = "executor"
LOG_GROUP = "logservers"  # the watchers serving pod log requests (one group per cluster: ``log_group``)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "kubestream"
    cluster: str = ""

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"invalid key prefix {self.prefix!r}: expected 1-32 characters of [A-Za-z0-9_.:-] "
                             "(no braces: kubestream adds them)")
        if not _CLUSTER.match(self.cluster):
            raise ValueError(f"invalid cluster name {self.cluster!r}: expected at most 40 characters of [a-z0-9-], "
                             "starting and ending with a letter or digit")

    @property
    def _watcher(self) -> str:
        """Where the watcher's keys of this cluster live."""
        return f"{self.base}:watcher:cluster:{self.cluster}" if self.cluster else f"{self.base}:watcher"

    @property
    def base(self) -> str:
        return "{" + self.prefix + "}"

    def launch(self, queue: str, band: int | None = None) -> str:
        """Stream of LaunchTask/RevokeTask commands for one Airflow queue; with ``band``, the stream of that
        priority band (``{p}:launch:!<band>:<queue>``, read before the queue's plain stream)."""
        return f"{self.base}:launch:{queue}" if band is None else f"{self.base}:launch:!{band}:{queue}"

    def queue_of(self, stream: str) -> str:
        """The queue a launch stream serves (the inverse of ``launch``)."""
        prefix = self.launch("")
        if not stream.startswith(prefix):
            raise ValueError(f"{stream!r} is not a launch stream of {self.base}")
        match = _BAND.match(stream, len(prefix))
        return stream[match.end() if match else len(prefix):]

    def results(self, scheduler_id: str) -> str:
        """Stream of TaskStateChanged events for one scheduler."""
        return f"{self.base}:results:{scheduler_id}"

    @property
    def results_pattern(self) -> str:
        return f"{self.base}:results:*"

    @property
    def launch_pattern(self) -> str:
        return f"{self.base}:launch:*"

    @property
    def dead(self) -> str:
        """Dead-letter stream: messages that could not be handled, with a reason."""
        return f"{self.base}:dead"

    def task(self, pod_name: str) -> str:
        """Hash per task try: owner, key fields, queue, namespace, last state, revoked."""
        return f"{self.base}:task:{pod_name}"

    @property
    def live(self) -> str:
        """Set of "<namespace>/<pod>/<dispatch>" of this cluster whose last published state is pending or running."""
        return f"{self._watcher}:live" if self.cluster else f"{self.base}:live"

    @property
    def data_epoch(self) -> str:
        """A random value written once: when it changes or vanishes, Redis lost its data."""
        return f"{self.base}:epoch"

    def resource_version(self, namespace: str) -> str:
        """The watcher's checkpointed resourceVersion for one namespace (of this cluster)."""
        return f"{self._watcher}:rv:{namespace}"

    @property
    def watcher_fence(self) -> str:
        """The lease holder's token and the lease epoch (hash; the epoch grows on every acquisition)."""
        return f"{self.watcher_lease}:fence"

    @property
    def watcher_lease(self) -> str:
        """Holder name of the active watcher of this cluster (SET PX)."""
        return f"{self._watcher}:lease"

    @property
    def cluster_keys_pattern(self) -> str:
        """Every watcher key of every named cluster (``cluster_lease_of`` picks out the leases)."""
        return f"{self.base}:watcher:cluster:*"

    def cluster_lease_of(self, key: str) -> str | None:
        """The cluster whose watcher lease ``key`` is, None when it is not a cluster's lease."""
        head = f"{self.base}:watcher:cluster:"
        name, _, rest = key.removeprefix(head).partition(":")
        return name if key.startswith(head) and rest == "lease" else None

    @property
    def rate_limit(self) -> str:
        """Token bucket shared by all launchers (hash: tokens, ts)."""
        return f"{self.base}:ratelimit:create"

    def scheduler(self, scheduler_id: str) -> str:
        """Liveness of one scheduler (string with TTL: a per-process token, refreshed by its sync())."""
        return f"{self.base}:scheduler:{scheduler_id}"

    def alive(self, component: str, member: str) -> str:
        """Liveness of one process (string with a short TTL, refreshed by a thread of its own): once it has
        expired the process is dead and its pending launch messages are claimed by the others."""
        return f"{self.base}:alive:{component}:{member}"

    def health(self, component: str, member: str) -> str:
        """Health record of one process (hash with TTL)."""
        return f"{self.base}:health:{component}:{member}"

    @property
    def health_pattern(self) -> str:
        return f"{self.base}:health:*"

    @property
    def log_requests(self) -> str:
        """Stream of signed pod log requests (``get_task_log`` -> every cluster's watchers, ``podlogs.py``)."""
        return f"{self.base}:logs:requests"

    def log_reply(self, reply_id: str) -> str:
        """List holding the signed answer to one pod log request (expires seconds after it is written)."""
        return f"{self.base}:logs:reply:{reply_id}"

    @property
    def log_group(self) -> str:
        """The consumer group of this cluster's watchers on ``log_requests``: every cluster sees each request."""
        return f"{LOG_GROUP}:{self.cluster}" if self.cluster else LOG_GROUP
