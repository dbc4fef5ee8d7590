"""`python -m localcluster`: build, up, down, status and node disruptions of the local cluster."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from localcluster import toolchain
from localcluster.cluster import DEFAULT_STATE_DIR, REPO_ROOT, Cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster",
        description="A real Kubernetes control plane and an S3 server as local processes, with process or real nodes.",
    )
    # `. DIR/env` exports LOCALCLUSTER_STATE_DIR: every command then acts on that cluster.
    from_env = os.environ.get("LOCALCLUSTER_STATE_DIR")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(from_env) if from_env else DEFAULT_STATE_DIR,
        help=f"cluster state directory (default $LOCALCLUSTER_STATE_DIR, else {DEFAULT_STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the binaries into the cache (reused when present)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.add_argument(
        "--real-nodes",
        action="store_true",
        help="also the kubelet, kube-proxy, containerd, CNI plugins and Debian packages",
    )
    build.add_argument(
        "--kind", action="store_true", help="also kind, kubeadm, crictl, CoreDNS and Docker's engine (docker.io)"
    )
    up = sub.add_parser("up", help="start the cluster (building first when needed); reuses a running one")
    up.add_argument(
        "--real-nodes",
        action="store_true",
        help="spot-1, spot-2 and ondemand-1 run the real kubelet with containerd and runc (default: process nodes)",
    )
    image = sub.add_parser(
        "image", help="build the Dockerfile's image and the examples' image, and import them into every real node"
    )
    image.add_argument("--no-import", action="store_true", help="only build (into the cache)")
    sub.add_parser("down", help="stop every process of the cluster; safe to run twice")
    sub.add_parser("status", help="show processes, nodes and endpoints")
    sub.add_parser("env", help="print the shell exports of the running cluster")
    sub.add_parser("paths", help="print the cached binary paths as JSON")
    sub.add_parser(
        "kind",
        help="kind with spot pools on Docker (a stand-in engine where none runs): kind up|down|env|exec",
        add_help=False,
    )
    node = sub.add_parser("node", help="node disruptions and additions").add_subparsers(
        dest="node_command", required=True
    )
    preempt = node.add_parser("preempt", help="reclaim a spot node: graceful shutdown, then the node is deleted")
    preempt.add_argument("name")
    preempt.add_argument(
        "--grace",
        type=float,
        default=30,
        help="seconds the VM lives after the shutdown begins (default 30); a real node's kubelet stops its pods"
        " within its own shutdownGracePeriod (30s) and the VM goes as soon as it has",
    )
    reclaim = node.add_parser(
        "reclaim", help="Karpenter's and AWS NTH's path: taint, cordon, evict the pods, then the VM and Node are gone"
    )
    reclaim.add_argument("name")
    reclaim.add_argument(
        "--taint",
        default="karpenter.sh/disrupted",
        help="the NoSchedule taint put on first (default karpenter.sh/disrupted)",
    )
    reclaim.add_argument("--timeout", type=float, default=120, help="seconds to wait for the pods to end (default 120)")
    kill = node.add_parser("kill", help="abrupt node loss: kubelet and pods get SIGKILL")
    kill.add_argument("name")
    add = node.add_parser("add", help="add a node, as an autoscaler would")
    add.add_argument("name")
    add.add_argument("--capacity", choices=["spot", "on-demand"], required=True)
    node_kind = add.add_mutually_exclusive_group()
    node_kind.add_argument(
        "--real", dest="real", action="store_true", default=None, help="a real node (kubelet, containerd)"
    )
    node_kind.add_argument("--process", dest="real", action="store_false", help="a process node")
    args, rest = parser.parse_known_args(argv)
    if args.command == "kind":
        from localcluster import kind  # noqa: PLC0415 - docker and kind only when asked

        return kind.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.command == "build":
        toolchain.build(force=args.force, real_nodes=args.real_nodes, kind=args.kind)
        return 0
    if args.command == "paths":
        print(json.dumps({b.name: str(toolchain.binary_path(b)) for b in toolchain.BINARIES}, indent=2))
        return 0
    cluster = Cluster(args.state_dir)
    if args.command == "up":
        cluster.up(real_nodes=args.real_nodes)
    elif args.command == "image":
        from localcluster import images  # noqa: PLC0415 - buildah and debootstrap only when asked

        built = images.build_project_images(REPO_ROOT)
        if not args.no_import and cluster.running() and cluster.real_nodes:
            cluster.add_real_images(list(built.values()))
        print(json.dumps({ref: str(path) for ref, path in built.items()}, indent=2))
    elif args.command == "down":
        cluster.down()
    elif args.command == "status":
        return cluster.status()
    elif args.command == "env":
        for key, value in cluster.env_vars().items():
            print(f"export {key}={value}")
    elif args.command == "node":
        if args.node_command == "preempt":
            cluster.preempt_node(args.name, args.grace)
        elif args.node_command == "reclaim":
            cluster.reclaim_node(args.name, args.taint, args.timeout)
        elif args.node_command == "kill":
            cluster.kill_node(args.name)
        else:
            cluster.add_node(args.name, args.capacity, real=args.real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
