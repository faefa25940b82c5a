"""The side-by-side benchmark's simulated kubelet, in a process of its own, sized for bursts of a few
hundred pods a second: ``SimKubelet`` (rules mode, default ``succeed``) for one namespace with
``--workers`` API workers and a connection pool as wide.

    python -m bench.versus_kubelet --kubeconfig K --namespace NS [--node-name N] [--workers 32]
                                   [--ready-file F]

serves until SIGTERM or SIGINT. ``start_sized_kubelet`` starts one as a child of a ``Components``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from subprocess import Popen

from devkit.components import Components

MODULE = "bench.versus_kubelet"


def start_sized_kubelet(components: Components, kubeconfig: str, namespace: str, *, node_name: str,
                        workers: int, name: str = "kubelet") -> Popen[bytes]:
    ready = components.log_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = components.start_module(name, MODULE, ["--kubeconfig", kubeconfig, "--namespace", namespace,
                                                  "--node-name", node_name, "--workers", str(workers),
                                                  "--ready-file", str(ready)])
    components.wait(ready.exists, timeout=60, what=f"{name} ready", procs=[proc])
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--node-name", default="versus-node")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--ready-file")
    args = parser.parse_args(argv)
    from devkit.kubelet import SimKubelet
    from kubestream.kubeapi import api_client

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    kubelet = SimKubelet(api_client(args.kubeconfig, pool_size=2 * args.workers), node_name=args.node_name,
                         mode="rules", namespaces=[args.namespace], workers=args.workers).start()
    if args.ready_file:
        Path(args.ready_file).write_text("ready")
    try:
        while not done.wait(1.0):
            pass
    finally:
        kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
