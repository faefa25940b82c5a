"""A fault proxy or the simulated kubelet in a process of its own, for measurements: there it shares
neither the GIL nor CPU accounting with the process being measured.

    python -m devkit.isolated proxy --target-port P [--ca-file F] [--listen-port N] [--latency-ms M]
    python -m devkit.isolated kubelet --kubeconfig K --namespace NS [--node-name N] [--default-rule R]

Each serves until SIGTERM or SIGINT and, with ``--ready-file``, writes that file once it serves.
``start_proxy`` / ``start_kubelet`` start one as a child of a ``Components`` and wait for that.
``proxied_kubeconfig`` writes a kubeconfig that reaches the apiserver through a proxy.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from devkit.cluster import ClusterState
from devkit.components import Components
from devkit.procs import free_port

MODULE = "devkit.isolated"


@dataclass(frozen=True)
class IsolatedProxy:
    """An ``HttpFaultProxy`` in a child process: plain HTTP at ``url``, the apiserver behind it."""

    proc: Popen[bytes]
    url: str
    latency_ms: float


def start_proxy(components: Components, cluster: ClusterState, *, latency_ms: float = 0.0,
                name: str = "proxy") -> IsolatedProxy:
    """A proxy in front of ``cluster``'s apiserver that delays each request by ``latency_ms``."""
    port = free_port()
    proc = _start(components, name, ["proxy", "--target-port", str(cluster.apiserver_port), "--listen-port",
                                     str(port), "--ca-file", cluster.ca_file, "--latency-ms", str(latency_ms)])
    return IsolatedProxy(proc, f"http://127.0.0.1:{port}", latency_ms)


def start_kubelet(components: Components, kubeconfig: str, namespace: str, *, node_name: str,
                  default_rule: str = "succeed", name: str = "kubelet") -> Popen[bytes]:
    """A simulated kubelet (rules mode) for the pods of ``namespace``, registered as ``node_name``."""
    return _start(components, name, ["kubelet", "--kubeconfig", kubeconfig, "--namespace", namespace,
                                     "--node-name", node_name, "--default-rule", default_rule])


def _start(components: Components, name: str, args: list[str]) -> Popen[bytes]:
    ready = components.log_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = components.start_module(name, MODULE, [*args, "--ready-file", str(ready)])
    components.wait(ready.exists, timeout=60, what=f"{name} ready", procs=[proc])
    return proc


def proxied_kubeconfig(directory: Path, proxy_url: str, token: str, identity: str) -> str:
    """A kubeconfig (in ``directory``) reaching the apiserver through the proxy at ``proxy_url`` as ``identity``."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "proxied",
        "clusters": [{"name": "proxied", "cluster": {"server": proxy_url}}],
        "users": [{"name": identity, "user": {"token": token}}],
        "contexts": [{"name": "proxied", "context": {"cluster": "proxied", "user": identity}}],
    }
    path = directory / f"kubeconfig-proxied-{identity}"
    path.write_text(json.dumps(config))  # JSON is valid YAML
    path.chmod(0o600)
    return str(path)


# -- the child process ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="a proxy or kubelet in its own process")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("proxy", help="an HttpFaultProxy in front of the apiserver")
    p.add_argument("--target-port", type=int, required=True)
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--ca-file")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    p.add_argument("--ready-file", help="written once serving")
    p = sub.add_parser("kubelet", help="the simulated kubelet (rules mode) for one namespace")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--node-name", default="bench-node")
    p.add_argument("--default-rule", default="succeed")
    p.add_argument("--ready-file", help="written once serving")
    return parser


def _serve(args: argparse.Namespace) -> Any:
    if args.kind == "proxy":
        from devkit.faultproxy import HttpFaultProxy

        proxy = HttpFaultProxy("127.0.0.1", args.target_port, listen_port=args.listen_port, ca_file=args.ca_file)
        proxy.latency_ms = args.latency_ms
        return proxy.start()
    from devkit.kubelet import SimKubelet
    from kubestream.kubeapi import api_client

    return SimKubelet(api_client(args.kubeconfig, pool_size=16), node_name=args.node_name, mode="rules",
                      default_rule=args.default_rule, namespaces=[args.namespace]).start()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server = _serve(args)
    if args.ready_file:
        Path(args.ready_file).write_text("ready")
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
        if args.kind == "proxy":
            print(f"proxy: {server.requests_seen} requests forwarded", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
