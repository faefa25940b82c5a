"""A real local Kubernetes control plane: etcd + kube-apiserver on loopback.

``LocalCluster(state_dir).up()`` provisions the binaries (``provision.sh``:
apt packages, kube-apiserver built once from Debian's source package and
cached), starts etcd (data on tmpfs) and kube-apiserver on free loopback
ports, waits for ``/readyz``, writes one kubeconfig per identity and applies
kubestream's RBAC (``k8s/base/rbac.yaml``) to those identities:

- ``admin``: system:masters (tests' own setup and assertions, kubectl);
- ``launcher``, ``watcher``: bound to the ClusterRoles shipped in k8s/base/;
- ``kubelet``: the simulated kubelet's node permissions;
- ``executor``: no permissions at all (the scheduler needs none).

Everything it starts is recorded in ``state.json`` and stopped by PID in
``down()``. ``restart_apiserver()`` restarts only the API server, which makes
a watch from an older resourceVersion fail with a real 410 Gone.

``LocalCluster(state_dir, real_node=True)`` also prepares for a real kubelet
(``devkit.realnode``): a ``node`` identity ``system:node:127.0.0.1`` in group
``system:nodes``, ``--authorization-mode=Node,RBAC``, a client certificate the
apiserver presents to the kubelet (pods/log, exec) from a CA the kubelet
trusts, and no ``TaintNodesByCondition`` admission (no controller-manager
would ever lift its not-ready taint). The default cluster is unchanged.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devkit.procs import free_port, pid_alive, spawn, stop_pid, wait_for

IDENTITIES = ("admin", "launcher", "watcher", "kubelet", "executor")
COMPONENTS = ("launcher", "watcher")  # bound, in every task namespace, to their ClusterRole of k8s/base/rbac.yaml
PROVISION_SCRIPT = Path(__file__).with_name("provision.sh")
REPO_RBAC = Path(__file__).resolve().parents[1] / "k8s" / "base" / "rbac.yaml"
# the real node's name: ``--hostname-override=127.0.0.1`` gives it InternalIP 127.0.0.1 (``--node-ip`` refuses loopback)
REAL_NODE_NAME = "127.0.0.1"

KUBELET_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["nodes", "nodes/status"], "verbs": ["get", "list", "create", "update", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


class ClusterError(RuntimeError):
    pass


def default_state_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"kubestream-cluster-{os.getuid()}"
    return Path(os.environ.get("KUBESTREAM_CLUSTER_DIR", default))


def provision() -> str:
    """Install what is missing and return the kube-apiserver binary path."""
    proc = subprocess.run(["bash", str(PROVISION_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"provisioning failed (exit {proc.returncode}); see the messages above")
    return proc.stdout.strip().splitlines()[-1]


@dataclass
class ClusterState:
    state_dir: str
    apiserver_bin: str
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    etcd_data: str
    tokens: dict[str, str]
    etcd_pid: int = 0
    apiserver_pid: int = 0
    namespaces: list[str] = field(default_factory=list)
    real_node: bool = False  # prepared for a real kubelet (see the module docstring)

    @property
    def host(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> str:
        return str(Path(self.state_dir) / "certs" / "apiserver.crt")

    @property
    def kubelet_ca_file(self) -> str:
        """real_node: the CA of the client certificate the apiserver presents to kubelets."""
        return str(Path(self.state_dir) / "kubelet-pki" / "ca.crt")

    def kubeconfig(self, identity: str = "admin") -> str:
        return str(Path(self.state_dir) / f"kubeconfig-{identity}")


class LocalCluster:
    def __init__(self, state_dir: Path | str | None = None, *, real_node: bool = False) -> None:
        self.dir = Path(state_dir) if state_dir else default_state_dir()
        self.real_node = real_node
        self.state_file = self.dir / "state.json"

    # -- state ---------------------------------------------------------------------------
    def load(self) -> ClusterState | None:
        try:
            return ClusterState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None

    def _save(self, state: ClusterState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_file)

    def running(self) -> ClusterState | None:
        state = self.load()
        if state and state.etcd_pid and state.apiserver_pid and pid_alive(state.etcd_pid) \
                and pid_alive(state.apiserver_pid):
            return state
        return None

    # -- lifecycle -----------------------------------------------------------------------
    def up(self, namespaces: tuple[str, ...] = ()) -> ClusterState:
        current = self.running()
        if current and self.real_node and not current.real_node:
            raise ClusterError(f"the cluster in {self.dir} runs without real-node support; stop it first")
        if current:
            self.ensure_namespaces(current, namespaces)
            return current
        if self.load():
            self.down()  # half-dead leftovers
        apiserver_bin = provision()
        for tool in ("etcd", "openssl"):
            if not shutil.which(tool):
                raise ClusterError(f"{tool} not found after provisioning")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "certs").mkdir(exist_ok=True)
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        state = ClusterState(
            state_dir=str(self.dir), apiserver_bin=apiserver_bin,
            etcd_port=free_port(), etcd_peer_port=free_port(), apiserver_port=free_port(),
            etcd_data=tempfile.mkdtemp(prefix="kubestream-etcd-", dir=shm),
            tokens={name: secrets.token_hex(16) for name in self._identities()},
            real_node=self.real_node,
        )
        self._save(state)
        try:
            self._write_credentials(state)
            self._start_etcd(state)
            self._start_apiserver(state)
            for identity in self._identities():
                self._write_kubeconfig(state, identity)
            self._apply_rbac(state)
            self.ensure_namespaces(state, ("default", *namespaces))
        except BaseException:
            self.down()
            raise
        return state

    def down(self) -> None:
        state = self.load()
        if state:
            for pid in (state.apiserver_pid, state.etcd_pid):
                if pid:
                    stop_pid(pid)
            shutil.rmtree(state.etcd_data, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def restart_apiserver(self, *, sig: int = signal.SIGTERM) -> ClusterState:
        """Stop the API server with ``sig`` (SIGKILL after 3 s) and start it again on the same port."""
        state = self.running()
        if not state:
            raise ClusterError("the local cluster is not running")
        stop_pid(state.apiserver_pid, timeout=3, sig=sig)  # open watches hold a graceful stop for ~10 s
        self._start_apiserver(state)
        return state

    # -- pieces ----------------------------------------------------------------------------
    def _identities(self) -> tuple[str, ...]:
        return (*IDENTITIES, "node") if self.real_node else IDENTITIES

    def _write_kubelet_pki(self) -> None:
        """real_node: a CA and the apiserver's client certificate for kubelets (CN kube-apiserver-kubelet-client)."""
        pki = self.dir / "kubelet-pki"
        pki.mkdir(exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=kubestream-kubelet-ca",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "-keyout", str(pki / "client.key"), "-out", str(pki / "client.csr"))
        run("x509", "-req", "-in", str(pki / "client.csr"), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
            "-CAcreateserial", "-days", "30", "-out", str(pki / "client.crt"))

    def _write_credentials(self, state: ClusterState) -> None:
        key = self.dir / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(self.dir / "sa.pub")],
                       check=True, capture_output=True)
        lines = []
        for i, (name, token) in enumerate(state.tokens.items()):
            groups = ',"system:masters"' if name == "admin" else ""
            user = f"system:node:{REAL_NODE_NAME}" if name == "node" else f"kubestream-{name}"
            groups = ',"system:nodes"' if name == "node" else groups
            lines.append(f'{token},{user},{1000 + i}{groups}')
        (self.dir / "tokens.csv").write_text("\n".join(lines) + "\n")
        os.chmod(self.dir / "tokens.csv", 0o600)
        if state.real_node:
            self._write_kubelet_pki()

    def _start_etcd(self, state: ClusterState) -> None:
        client = f"http://127.0.0.1:{state.etcd_port}"
        peer = f"http://127.0.0.1:{state.etcd_peer_port}"
        proc = spawn([
            "etcd", "--name", "kubestream", "--data-dir", state.etcd_data,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"kubestream={peer}", "--log-level", "warn",
            "--quota-backend-bytes", str(2 * 1024**3),
        ], self.dir / "etcd.log")
        state.etcd_pid = proc.pid
        self._save(state)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"etcd exited with {proc.returncode}; see {self.dir / 'etcd.log'}")
            with urllib.request.urlopen(f"{client}/health", timeout=2) as resp:
                return json.loads(resp.read()).get("health") == "true"

        wait_for(healthy, timeout=30, what="etcd /health")

    def _start_apiserver(self, state: ClusterState) -> None:
        d = self.dir
        authorization, disabled_admission, real_node = "RBAC", "ServiceAccount", []
        if state.real_node:
            authorization, disabled_admission = "Node,RBAC", "ServiceAccount,TaintNodesByCondition"
            real_node = [f"--kubelet-client-certificate={d / 'kubelet-pki' / 'client.crt'}",
                         f"--kubelet-client-key={d / 'kubelet-pki' / 'client.key'}"]
        proc = spawn([
            state.apiserver_bin,
            f"--etcd-servers=http://127.0.0.1:{state.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={state.apiserver_port}", f"--cert-dir={d / 'certs'}",
            f"--token-auth-file={d / 'tokens.csv'}", f"--authorization-mode={authorization}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            f"--disable-admission-plugins={disabled_admission}",
            "--endpoint-reconciler-type=none", "--profiling=false",
            # pods/log and exec are proxied to the node's InternalIP (the simulated kubelet's or a real one's)
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--max-requests-inflight=800", "--max-mutating-requests-inflight=400",
            "--logtostderr=true", "--v=0",
            *real_node,
        ], d / "apiserver.log")
        state.apiserver_pid = proc.pid
        self._save(state)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def ready() -> bool:
            if proc.poll() is not None:
                raise ClusterError(f"kube-apiserver exited with {proc.returncode}; see {d / 'apiserver.log'}")
            req = urllib.request.Request(f"{state.host}/readyz",
                                         headers={"Authorization": f"Bearer {state.tokens['admin']}"})
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return resp.read().strip() == b"ok"

        wait_for(ready, timeout=90, interval=0.2, what="kube-apiserver /readyz")

    def _write_kubeconfig(self, state: ClusterState, identity: str) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kubestream-local",
            "clusters": [{"name": "kubestream-local", "cluster": {
                "server": state.host, "certificate-authority": state.ca_file}}],
            "users": [{"name": f"kubestream-{identity}", "user": {"token": state.tokens[identity]}}],
            "contexts": [{"name": "kubestream-local", "context": {
                "cluster": "kubestream-local", "user": f"kubestream-{identity}", "namespace": "default"}}],
        }
        path = Path(state.kubeconfig(identity))
        path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        os.chmod(path, 0o600)

    def _admin(self, state: ClusterState) -> Any:
        from kubestream.kubeapi import api_client

        return api_client(state.kubeconfig("admin"))

    def _apply_rbac(self, state: ClusterState) -> None:
        import yaml
        from kubernetes import client

        rbac = client.RbacAuthorizationV1Api(self._admin(state))
        # The shipped ClusterRoles themselves, never a copy: the tests exercise what operators apply.
        roles = [doc for doc in yaml.safe_load_all(REPO_RBAC.read_text()) if doc and doc["kind"] == "ClusterRole"]
        missing = {f"kubestream-{c}" for c in COMPONENTS} - {role["metadata"]["name"] for role in roles}
        if missing:
            raise ClusterError(f"{REPO_RBAC} has no ClusterRole {sorted(missing)}")
        roles.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                      "metadata": {"name": "kubestream-sim-kubelet"}, "rules": KUBELET_RULES})
        for role in roles:
            rbac.create_cluster_role(role)
        rbac.create_cluster_role_binding({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubestream-sim-kubelet"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "kubestream-sim-kubelet"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubestream-kubelet"}],
        })

    def ensure_namespaces(self, state: ClusterState, namespaces: tuple[str, ...]) -> None:
        """Create namespaces and bind the launcher and watcher roles in each."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self._admin(state)
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        for ns in dict.fromkeys(namespaces):
            if ns in state.namespaces:
                continue
            try:
                core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            except ApiException as exc:
                if exc.status != 409:
                    raise
            for component in COMPONENTS:
                rbac.create_namespaced_role_binding(ns, {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": f"kubestream-{component}"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": f"kubestream-{component}"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                  "name": f"kubestream-{component}"}],
                })
            state.namespaces.append(ns)
        fresh = self.load() or state  # the caller's copy may predate an apiserver restart
        fresh.namespaces = sorted(set(fresh.namespaces) | set(state.namespaces))
        self._save(fresh)
