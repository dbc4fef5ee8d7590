"""`python -m localcluster`: build, up, down, status and node disruptions of the local cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster import toolchain
from localcluster.cluster import DEFAULT_STATE_DIR, Cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster",
        description="A real Kubernetes control plane, process kubelets and an S3 server, as local processes.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"cluster state directory (default {DEFAULT_STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the binaries into the cache (reused when present)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    sub.add_parser("up", help="start the cluster (building first when needed); reuses a running one")
    sub.add_parser("down", help="stop every process of the cluster; safe to run twice")
    sub.add_parser("status", help="show processes, nodes and endpoints")
    sub.add_parser("env", help="print the shell exports of the running cluster")
    sub.add_parser("paths", help="print the cached binary paths as JSON")
    node = sub.add_parser("node", help="node disruptions and additions").add_subparsers(
        dest="node_command", required=True
    )
    preempt = node.add_parser("preempt", help="reclaim a spot node: graceful shutdown, then the node is deleted")
    preempt.add_argument("name")
    preempt.add_argument("--grace", type=float, default=30, help="shutdown grace period in seconds (default 30)")
    kill = node.add_parser("kill", help="abrupt node loss: kubelet and pods get SIGKILL")
    kill.add_argument("name")
    add = node.add_parser("add", help="add a node, as an autoscaler would")
    add.add_argument("name")
    add.add_argument("--capacity", choices=["spot", "on-demand"], required=True)
    args = parser.parse_args(argv)

    if args.command == "build":
        toolchain.build(force=args.force)
        return 0
    if args.command == "paths":
        print(json.dumps({b.name: str(toolchain.binary_path(b)) for b in toolchain.BINARIES}, indent=2))
        return 0
    cluster = Cluster(args.state_dir)
    if args.command == "up":
        cluster.up()
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
        elif args.node_command == "kill":
            cluster.kill_node(args.name)
        else:
            cluster.add_node(args.name, args.capacity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
