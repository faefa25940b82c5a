"""A real Kubernetes node next to the local control plane: kubelet v1.20 + Docker (dockershim).

``RealNode(cluster, state_dir).up()`` starts, on this machine, isolated from it:

- a holder of private PID and mount namespaces (``unshare --pid --fork --mount --propagation
  private --mount-proc``) whose PID 1 is ``realnode_assets/node-init.sh``: it bind-mounts private
  directories over ``/var/log``, ``/etc/docker``, ``/run/docker``, ``/run/containerd``, an overlay
  over ``/var/lib`` (the kubelet hard-codes paths in both), fake files over the sysctls the kubelet
  writes, then becomes the reaper (the static ``pause`` built from ``realnode_assets/pause.c``);
- inside it (``nsenter``), a ``dockerd`` with its own roots and socket, no bridge, no iptables,
  the cgroupfs driver, and ``realnode_assets/runc-wrapper.sh`` as its runtime (clamps a negative
  ``process.oomScoreAdj`` to 0: the sandbox lacks CAP_SYS_RESOURCE);
- the images pods use, none pulled: ``kubestream/pause:local`` (the static pause alone) and the
  project's Debian base image (``devkit.docker.base_image``: sh, coreutils, no Python);
- the kubelet (``~/.cache/kubestream/kubelet-<version>/kubelet``, built by ``provision.sh``) as
  node ``127.0.0.1`` (identity ``system:node:127.0.0.1``, a token of the cluster's ``node``
  identity), webhook authn/authz, the apiserver's client CA, then waits for the node to be Ready.

The cluster must be a ``LocalCluster(..., real_node=True)``. Pods need ``hostNetwork: true`` (no
CNI), ``spec.nodeName: 127.0.0.1`` (no scheduler) and ``imagePullPolicy: Never`` (nothing can be
pulled): ``pod_template()`` is a launcher pod template with those.

``down()`` deletes the node's pods, stops the kubelet, removes every container, stops dockerd and
the holder (the kernel ends whatever is left in the PID namespace, and the mounts go with the
namespace), removes the cgroups dockerd made (``kubestream-realnode-<dir name>``), then checks that
no process of the namespace, no mount under the state directory and no such cgroup is left, and
raises ``RealNodeError`` otherwise.
State is kept in ``state.json`` so ``python -m devkit realnode up`` / ``down`` work across processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devkit.cluster import REAL_NODE_NAME, ClusterState
from devkit.docker import Dockerd, base_image, docker_cli
from devkit.procs import free_port, pid_alive, spawn, stop_pid, wait_for

ASSETS = Path(__file__).with_name("realnode_assets")
PAUSE_IMAGE = "kubestream/pause:local"
NODE_NAME = REAL_NODE_NAME
CGROUP_PARENT = "kubestream-realnode"  # + "-<state dir name>": two nodes on one machine never share one
CGROUP_ROOT = Path("/sys/fs/cgroup")


class RealNodeError(RuntimeError):
    pass


def cache_root() -> Path:
    root = os.environ.get("KUBESTREAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kubestream")
    return Path(root)


def kubelet_binary() -> Path | None:
    """The cached kubelet (``provision.sh`` builds it with the apiserver), newest first; None if missing."""
    override = os.environ.get("KUBESTREAM_KUBELET_BIN")
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    found = sorted(cache_root().glob("kubelet-*/kubelet"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in found if os.access(p, os.X_OK)), None)


def unavailable_reason() -> str | None:
    """Why a real node cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "a real node needs root (namespaces, mounts, dockerd)"
    for tool in ("dockerd", "runc", "unshare", "nsenter", "mount", "gcc", "debootstrap"):
        if not shutil.which(tool):
            return f"no {tool} on PATH"
    if not docker_cli():
        return "no docker CLI"
    if kubelet_binary() is None:
        override = os.environ.get("KUBESTREAM_KUBELET_BIN")
        if override:
            return f"KUBESTREAM_KUBELET_BIN={override} is not executable"
        return f"no kubelet under {cache_root()}/kubelet-*/ (devkit/provision.sh builds it)"
    if not (CGROUP_ROOT / "memory").is_dir():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory (the kubelet here uses cgroupfs v1)"
    return None


def pod_template(image: str) -> dict[str, Any]:
    """A launcher pod template (``pod_template_file``) for the real node: host network, bound to the node,
    local images only."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"kubestream.io/real-node": "true"}},
            "spec": {"nodeName": NODE_NAME, "hostNetwork": True, "restartPolicy": "Never",
                     "terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "base", "image": image, "imagePullPolicy": "Never"}]}}


def host_runtime_template(image: str, env: dict[str, str], writable: Sequence[str | Path] = ()) -> dict[str, Any]:
    """``pod_template(image)`` for Airflow tasks without an Airflow image: this machine's ``/usr``, the repository,
    the running venv and its Python mounted read-only (hostPath) into the node's Debian base image, ``writable``
    directories mounted read-write (e.g. AIRFLOW_HOME), and ``env`` (the Airflow stack's task environment)."""
    repo = Path(__file__).resolve().parents[1]
    paths: list[str] = []
    for path in sorted({"/usr", str(repo), sys.prefix, sys.base_prefix}):
        if not any(path == p or path.startswith(p + "/") for p in paths):
            paths.append(path)
    mounts = [(f"host-{i}", path, True) for i, path in enumerate(paths)]
    mounts += [(f"rw-{i}", str(path), False) for i, path in enumerate(writable)]
    template = pod_template(image)
    template["spec"]["volumes"] = [{"name": name, "hostPath": {"path": path, "type": "Directory"}}
                                   for name, path, _ in mounts]
    container = template["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": name, "mountPath": path, "readOnly": ro} for name, path, ro in mounts]
    container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return template


def default_node_dir() -> Path:
    """Short on purpose: dockerd's and containerd's unix sockets live under it (108-byte limit)."""
    return Path(os.environ.get("KUBESTREAM_REALNODE_DIR") or f"/tmp/ks-realnode-{os.getuid()}")


def write_pod_template(state: NodeState, path: Path | None = None) -> Path:
    """``pod_template(state.base_image)`` as YAML (default: ``<node dir>/pod_template.yaml``)."""
    import yaml

    out = path or Path(state.state_dir) / "pod_template.yaml"
    out.write_text(yaml.safe_dump(pod_template(state.base_image)))
    return out


@dataclass
class NodeState:
    state_dir: str
    cluster_dir: str
    kubelet_bin: str
    kubelet_port: int
    healthz_port: int
    holder_pid: int = 0
    pid_ns: str = ""
    dockerd_pid: int = 0  # host PIDs of the processes inside the namespace (not of nsenter)
    kubelet_pid: int = 0
    base_image: str = ""

    @property
    def socket(self) -> str:
        return str(Path(self.state_dir) / "docker.sock")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _in_namespace(pid_ns: str) -> list[int]:
    """PIDs (host view) of every process whose PID namespace is ``pid_ns`` (``pid:[inode]``)."""
    if not pid_ns:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == pid_ns:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _mounts_under(prefix: Path) -> list[str]:
    text = str(prefix.resolve())
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == text or p.startswith(text + "/")]


def _cgroup_dirs(parent: str) -> list[Path]:
    """``parent`` in every hierarchy, at any depth: a parent is relative to dockerd's own cgroup, which
    need not be the root (e.g. a sandbox's per-command memory cgroup)."""
    return sorted({d for d in CGROUP_ROOT.glob(f"*/**/{parent}") if d.is_dir()})


def _remove_cgroups(parent: str) -> None:
    for top in _cgroup_dirs(parent):
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


class RealNode:
    """The real node of ``cluster`` (a ``LocalCluster(..., real_node=True)``), its files in ``state_dir``.

    ``state_dir`` must be short: dockerd's and containerd's unix sockets live under it (108-byte limit).
    """

    def __init__(self, cluster: ClusterState, state_dir: Path | str) -> None:
        self.cluster = cluster
        self.dir = Path(state_dir)
        self.state_file = self.dir / "state.json"
        self.cgroup_parent = f"{CGROUP_PARENT}-{self.dir.name}"

    # -- state ------------------------------------------------------------------------------------
    def load(self) -> NodeState | None:
        try:
            return NodeState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None

    def _save(self, state: NodeState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    def dockerd(self) -> Dockerd:
        """A client of the node's dockerd (``docker(...)``, ``has_image``); never ``start()``/``stop()`` it."""
        client = Dockerd(self.dir / "docker")
        client.socket = self.dir / "docker.sock"
        return client

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.dockerd().docker(*args, check=check, timeout=timeout)

    # -- lifecycle ----------------------------------------------------------------------------------
    def up(self, *, timeout: float = 300) -> NodeState:
        if not self.cluster.real_node:
            raise RealNodeError("the cluster was not started with real_node=True (see devkit.cluster)")
        reason = unavailable_reason()
        if reason:
            raise RealNodeError(reason)
        if self.load():
            self.down()
        kubelet = kubelet_binary()
        assert kubelet is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        state = NodeState(state_dir=str(self.dir), cluster_dir=self.cluster.state_dir, kubelet_bin=str(kubelet),
                          kubelet_port=free_port(), healthz_port=free_port())
        self._save(state)
        try:
            pause = self._build_pause()
            self._start_holder(state, pause)
            self._start_dockerd(state)
            self._import_images(state, pause)
            self._start_kubelet(state)
            self._wait_ready(state, timeout)
        except BaseException:
            self.down(check=False)
            raise
        return state

    def down(self, *, check: bool = True) -> None:
        """Stop everything ``up()`` started; with ``check``, raise if a process, mount or cgroup is left."""
        state = self.load()
        if state is None:
            return
        if state.kubelet_pid and pid_alive(state.kubelet_pid):
            self._delete_pods()
            stop_pid(state.kubelet_pid, timeout=20)
        if state.dockerd_pid and pid_alive(state.dockerd_pid):
            out = self.docker("ps", "-aq", check=False, timeout=60)
            ids = out.stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
            stop_pid(state.dockerd_pid, timeout=30)
        if state.holder_pid:
            stop_pid(state.holder_pid, timeout=10)
        # the namespace's PID 1 is gone: the kernel kills what is left in it; wait for that
        try:
            wait_for(lambda: not _in_namespace(state.pid_ns), timeout=30, what="the node's processes to end")
        except TimeoutError:
            pass
        _remove_cgroups(self.cgroup_parent)
        left = {
            "processes": _in_namespace(state.pid_ns),
            "mounts": _mounts_under(self.dir) if self.dir.exists() else [],
            "cgroups": [str(d) for d in _cgroup_dirs(self.cgroup_parent)],
        }
        left = {k: v for k, v in left.items() if v}
        if not left:
            shutil.rmtree(self.dir, ignore_errors=True)
        if left and check:
            raise RealNodeError(f"the real node left behind {left} (state kept in {self.dir})")

    # -- pieces -----------------------------------------------------------------------------------
    def _build_pause(self) -> Path:
        out = self.dir / "pause"
        subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(ASSETS / "pause.c")], check=True,
                       capture_output=True, timeout=120)
        return out

    def _start_holder(self, state: NodeState, pause: Path) -> None:
        proc = spawn(["unshare", "--pid", "--fork", "--kill-child=SIGTERM", "--mount", "--propagation", "private",
                      "--mount-proc", "sh", str(ASSETS / "node-init.sh"), str(self.dir), str(pause)],
                     self.dir / "holder.log")
        state.holder_pid = proc.pid
        self._save(state)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RealNodeError(f"the namespace holder exited ({proc.returncode}); see {self.dir / 'holder.log'}")
            return (self.dir / "ns" / "ready").exists()

        wait_for(ready, timeout=30, interval=0.1, what="the node's namespaces")
        inits = _children(proc.pid)
        if len(inits) != 1:
            raise RealNodeError(f"expected one child of unshare, found {inits}")
        state.pid_ns = os.readlink(f"/proc/{inits[0]}/ns/pid")
        self._save(state)

    def _enter(self, state: NodeState, argv: Sequence[str], log: str) -> int:
        """Start ``argv`` inside the node's namespaces; returns its host PID (a child of nsenter)."""
        inits = _children(state.holder_pid)
        if not inits:
            raise RealNodeError("the namespace holder is gone")
        proc = spawn(["nsenter", "-t", str(inits[0]), "-p", "-m", "--", *argv], self.dir / log)

        def child() -> int:
            if proc.poll() is not None:
                raise RealNodeError(f"{argv[0]} exited ({proc.returncode}); see {self.dir / log}")
            kids = _children(proc.pid)
            return kids[0] if kids else 0

        return int(str(wait_for(child, timeout=30, interval=0.05, what=f"{argv[0]} in the node's namespaces")))

    def _start_dockerd(self, state: NodeState) -> None:
        runc = shutil.which("runc")
        wrapper = self.dir / "runc-wrapper"
        wrapper.write_text((ASSETS / "runc-wrapper.sh").read_text().replace("@RUNC@", str(runc)))
        wrapper.chmod(0o755)
        d = self.dir / "docker"
        d.mkdir(exist_ok=True)
        state.dockerd_pid = self._enter(state, [
            "dockerd", "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
            "--pidfile", str(d / "docker.pid"), "--host", f"unix://{state.socket}",
            "--storage-driver", "vfs", "--bridge", "none", "--iptables=false", "--ip-forward=false",
            "--ip-masq=false", "--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", self.cgroup_parent,
            "--add-runtime", f"kubestream-runc={wrapper}", "--default-runtime", "kubestream-runc",
            "--oom-score-adjust", "0", "--userland-proxy=false",
        ], "dockerd.log")
        self._save(state)

        def serving() -> bool:
            if not pid_alive(state.dockerd_pid):
                raise RealNodeError(f"dockerd exited; see {self.dir / 'dockerd.log'}")
            return self.docker("version", check=False, timeout=10).returncode == 0

        wait_for(serving, timeout=120, interval=0.5, what="the node's dockerd")

    def _import_images(self, state: NodeState, pause: Path) -> None:
        client = self.dockerd()
        if not client.has_image(PAUSE_IMAGE):
            with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
                root = Path(tmp)
                shutil.copy(pause, root / "pause")
                tarball = root / "pause.tar"
                subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "pause"], check=True, timeout=60)
                client.docker("import", "--change", 'ENTRYPOINT ["/pause"]', "-", PAUSE_IMAGE,
                              input_file=tarball, timeout=300)
        state.base_image = base_image(client)
        self._save(state)

    def _kubelet_config(self, state: NodeState) -> Path:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": state.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": state.healthz_port,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": self.cluster.kubelet_ca_file}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "failSwapOn": False, "makeIPTablesUtilChains": False, "protectKernelDefaults": False,
            "kubeAPIQPS": 50, "kubeAPIBurst": 100, "serializeImagePulls": False,
            # never collect the local images (nothing could pull them back) and never evict for disk
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1Mi", "imagefs.available": "1Mi"},
            "volumePluginDir": str(self.dir / "volume-plugins"),
            "staticPodPath": "", "resolvConf": "/etc/resolv.conf",
            "nodeStatusUpdateFrequency": "4s",
        }
        path = self.dir / "kubelet.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _start_kubelet(self, state: NodeState) -> None:
        root = self.dir / "kubelet"
        root.mkdir(exist_ok=True)
        state.kubelet_pid = self._enter(state, [
            state.kubelet_bin, f"--config={self._kubelet_config(state)}",
            f"--kubeconfig={self.cluster.kubeconfig('node')}",
            "--container-runtime=docker", f"--docker-endpoint=unix://{state.socket}",
            f"--container-runtime-endpoint=unix://{self.dir / 'dockershim.sock'}",
            f"--experimental-dockershim-root-directory={self.dir / 'dockershim'}",
            f"--root-dir={root}", f"--cert-dir={root / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--pod-infra-container-image={PAUSE_IMAGE}",
            "--network-plugin=", "--oom-score-adj=0", "--logtostderr=true", "--v=1",
        ], "kubelet.log")
        self._save(state)

    def _admin(self) -> Any:
        from kubernetes import client

        from kubestream.kubeapi import api_client

        return client.CoreV1Api(api_client(self.cluster.kubeconfig("admin")))

    def _wait_ready(self, state: NodeState, timeout: float) -> None:
        core = self._admin()

        def ready() -> bool:
            if not pid_alive(state.kubelet_pid):
                raise RealNodeError(f"the kubelet exited; see {self.dir / 'kubelet.log'}")
            node = core.read_node(NODE_NAME)
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or ())

        wait_for(ready, timeout=timeout, interval=0.5, what=f"node {NODE_NAME} Ready")

    def _delete_pods(self) -> None:
        """Delete every pod bound to the node at once (grace 0) and wait until the API has none."""
        try:
            core = self._admin()
            selector = f"spec.nodeName={NODE_NAME}"
            for pod in core.list_pod_for_all_namespaces(field_selector=selector).items:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            deadline = time.monotonic() + 30
            while core.list_pod_for_all_namespaces(field_selector=selector).items and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception:  # noqa: BLE001 - the apiserver may be gone already: containers are removed below anyway
            pass
