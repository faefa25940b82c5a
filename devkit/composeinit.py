"""The Kubernetes control plane's one-shot setup for docker-compose.yml (dev only).

Two steps, each a compose service that runs to completion, sharing one volume
(``--dir``, mounted at the same path everywhere):

- ``credentials``: before kube-apiserver starts: the service-account key pair,
  ``tokens.csv`` (one static token per identity, ``admin`` in system:masters)
  and one kubeconfig per identity pointing at ``https://127.0.0.1:<port>``
  with the CA kube-apiserver writes into ``<dir>/certs`` on its first start;
- ``rbac``: once kube-apiserver answers ``/readyz``: kubestream's ClusterRoles
  from ``k8s/base/rbac.yaml``, the simulated kubelet's role, and the task
  namespaces with the launcher and watcher bound in each.

Both reuse ``devkit.cluster.LocalCluster``'s pieces, so the compose stack's
control plane is set up exactly like the tests' one. Rerunning either step on
a volume that has it done changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from devkit.cluster import IDENTITIES, ClusterState, LocalCluster
from devkit.procs import wait_for


def _state(directory: Path, apiserver_port: int, etcd_port: int) -> ClusterState:
    tokens_file = directory / "tokens.json"
    if tokens_file.exists():
        tokens = json.loads(tokens_file.read_text())
    else:
        tokens = {name: secrets.token_hex(16) for name in IDENTITIES}
    return ClusterState(state_dir=str(directory), apiserver_bin="kube-apiserver", etcd_port=etcd_port,
                        etcd_peer_port=0, apiserver_port=apiserver_port, etcd_data="", tokens=tokens)


def credentials(directory: Path, apiserver_port: int, etcd_port: int, owner: str = "") -> None:
    local = LocalCluster(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "certs").mkdir(exist_ok=True)
    state = _state(directory, apiserver_port, etcd_port)
    if not (directory / "tokens.csv").exists():
        local._write_credentials(state)
        (directory / "tokens.json").write_text(json.dumps(state.tokens))
        os.chmod(directory / "tokens.json", 0o600)
    for identity in IDENTITIES:
        local._write_kubeconfig(state, identity)
        # the components run as other users of the same group: group-readable, dev only
        os.chmod(state.kubeconfig(identity), 0o640)
    local._save(state)
    if owner:  # run as root on a fresh volume: hand it to the components' user
        uid, _, gid = owner.partition(":")
        for path in (directory, *directory.rglob("*")):
            os.chown(path, int(uid), int(gid or 0))
    print(f"credentials and kubeconfigs in {directory}")


def rbac(directory: Path, namespaces: Sequence[str], timeout: float) -> None:
    local = LocalCluster(directory)
    state = local.load()
    if state is None:
        raise SystemExit(f"no {directory / 'state.json'}: run the credentials step first")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def ready() -> bool:
        req = urllib.request.Request(f"{state.host}/readyz",
                                     headers={"Authorization": f"Bearer {state.tokens['admin']}"})
        with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
            return bool(resp.read().strip() == b"ok")

    wait_for(ready, timeout=timeout, interval=1, what=f"kube-apiserver {state.host}/readyz")
    from kubernetes.client.exceptions import ApiException

    try:
        local._apply_rbac(state)
    except ApiException as exc:
        if exc.status != 409:  # applied by an earlier run
            raise
    state.namespaces = []  # bind the roles again where missing (409s are expected on a rerun)
    for ns in ("default", *namespaces):
        try:
            local.ensure_namespaces(state, (ns,))
        except ApiException as exc:
            if exc.status != 409:
                raise
    print(f"RBAC applied; namespaces: {', '.join(('default', *namespaces))}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.composeinit", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["credentials", "rbac"])
    parser.add_argument("--dir", type=Path, default=Path("/kube"))
    parser.add_argument("--apiserver-port", type=int, default=int(os.environ.get("KUBE_APISERVER_PORT", "6443")))
    parser.add_argument("--etcd-port", type=int, default=int(os.environ.get("ETCD_PORT", "2379")))
    parser.add_argument("--namespace", action="append", default=[], help="task namespace (repeatable)")
    parser.add_argument("--owner", default="", help="uid[:gid] that gets the directory (credentials step)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    if args.step == "credentials":
        credentials(args.dir, args.apiserver_port, args.etcd_port, args.owner)
    else:
        rbac(args.dir, args.namespace, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
