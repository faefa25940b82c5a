"""``python -m devkit``: the local control plane, the simulated kubelet, a real node and the demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def cmd_cluster(args: argparse.Namespace) -> int:
    from devkit.cluster import LocalCluster, provision

    local = LocalCluster(args.dir)
    if args.action == "provision":
        print(provision())
    elif args.action == "up":
        state = local.up(tuple(args.namespace or ()))
        print(f"kube-apiserver: {state.host}\nkubeconfig (admin): {state.kubeconfig('admin')}")
        for identity in ("launcher", "watcher", "kubelet", "executor"):
            print(f"kubeconfig ({identity}): {state.kubeconfig(identity)}")
    elif args.action == "down":
        local.down()
        print("local cluster stopped")
    elif args.action == "restart-apiserver":
        print(f"kube-apiserver restarted: {local.restart_apiserver().host}")
    else:
        running = local.running()
        if running is None:
            print("not running")
            return 1
        shown = {k: v for k, v in vars(running).items() if k != "tokens"}
        print(json.dumps({**shown, "kubeconfig": running.kubeconfig("admin")}, indent=2))
    return 0


def cmd_kubelet(args: argparse.Namespace) -> int:
    from devkit.kubelet import SimKubelet
    from kubestream import logs
    from kubestream.kubeapi import api_client

    logs.configure(args.log_level)
    kubelet = SimKubelet(api_client(args.kubeconfig), node_name=args.node_name, mode=args.mode,
                         default_rule=args.default_rule)
    kubelet.run_forever()
    return 0


def cmd_realnode(args: argparse.Namespace) -> int:
    from devkit.cluster import LocalCluster
    from devkit.realnode import RealNode, default_node_dir, write_pod_template

    local = LocalCluster(args.dir, real_node=True)
    node_dir = args.node_dir or default_node_dir()
    if args.action == "up":
        cluster = local.up(tuple(args.namespace or ()))
        state = RealNode(cluster, node_dir).up()
        template = write_pod_template(state)
        print(f"kube-apiserver: {cluster.host}\nkubeconfig (admin): {cluster.kubeconfig('admin')}\n"
              f"node: Ready; dockerd: DOCKER_HOST=unix://{state.socket}\nbase image: {state.base_image}\n"
              f"pod template (pod_template_file): {template}")
    elif args.action == "down":
        cluster = local.load()
        try:
            if cluster:
                RealNode(cluster, node_dir).down()
        finally:
            local.down()
        print("real node and local cluster stopped")
    else:
        running = local.running()
        node = RealNode(running, node_dir).load() if running else None
        if node is None:
            print("not running")
            return 1
        print(json.dumps(vars(node), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from devkit.demo import main as demo_main

    return demo_main(args.demo_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devkit", description="kubestream development tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cluster", help="a local kube-apiserver + etcd for tests and the demo")
    p.add_argument("action", choices=["provision", "up", "down", "status", "restart-apiserver"])
    p.add_argument("--dir", default=None, help="state directory (default: $KUBESTREAM_CLUSTER_DIR or /tmp)")
    p.add_argument("--namespace", action="append", help="extra namespace to create (repeatable)")
    p.set_defaults(func=cmd_cluster)
    p = sub.add_parser("kubelet", help="the simulated kubelet for the local cluster")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--node-name", default="kubestream-node")
    p.add_argument("--mode", choices=["rules", "process"], default="rules")
    p.add_argument("--default-rule", default="succeed")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_kubelet)
    p = sub.add_parser("realnode", help="the local cluster with a real kubelet + Docker node (devkit/realnode.py)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default=None, help="cluster state directory (default: as for `cluster`)")
    p.add_argument("--node-dir", default=None, help="node state directory, short (default: /tmp/ks-realnode-<uid>)")
    p.add_argument("--namespace", action="append", help="extra namespace to create (repeatable)")
    p.set_defaults(func=cmd_realnode)
    p = sub.add_parser("demo", help="the local demo (what ./scripts/demo runs)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # argparse.REMAINDER refuses a first argument like "--keep": pass them all on as given
        return cmd_demo(argparse.Namespace(demo_args=argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
