"""`python -m localcluster`: build, up, down, status, node notices and disruptions, kwok nodes and the audit log."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from spotrun import _argtypes

from localcluster import audit as audit_log
from localcluster import toolchain
from localcluster.cluster import DEFAULT_STATE_DIR, NOTICE_TAINT, REPO_ROOT, Cluster

# A label or taint key as Kubernetes validates it: an optional DNS prefix and '/', then a name.
QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster",
        description="A real Kubernetes control plane and an S3 server as local processes, with process or real nodes.",
    )
    # `. DIR/env` exports LOCALCLUSTER_STATE_DIR: every command then acts on that cluster.
    from_env = os.environ.get("LOCALCLUSTER_STATE_DIR")
    parser.add_argument(
        "--state-dir",
        type=_directory,
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
    up.add_argument(
        "--kwok-nodes",
        type=_argtypes.whole(0),
        default=0,
        metavar="N",
        help="also N simulated nodes (kwok-spot-1..., kwok-ondemand-1..., two thirds spot): Node objects kept Ready"
        " by the kwok controller, whose pods run nothing and get the statuses a kubelet writes"
        " (annotations kwok.localcluster.io/run-seconds and exit-code end them); on a running cluster, adds nodes"
        " up to N",
    )
    up.add_argument(
        "--no-default-nodes",
        dest="default_nodes",
        action="store_false",
        help="without spot-1, spot-2 and ondemand-1 (with --kwok-nodes: a cluster of simulated nodes only, for scale)",
    )
    up.add_argument(
        "--audit",
        action="store_true",
        help="the apiserver writes its audit log to STATE_DIR/logs/audit.log (level Metadata, no heartbeats);"
        " count a user's requests with `audit USER`",
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
    kwok_cmd = sub.add_parser("kwok", help="simulated nodes: kwok start|stop|add|delete").add_subparsers(
        dest="kwok_command", required=True
    )
    kwok_cmd.add_parser("start", help="start the kwok controller on the running cluster (add starts it too)")
    kwok_cmd.add_parser("stop", help="stop it: its nodes go NotReady and the cloud stand-in deletes them")
    kwok_add = kwok_cmd.add_parser("add", help="add COUNT kwok nodes, Ready before this returns")
    kwok_add.add_argument("count", type=_argtypes.whole(1), metavar="COUNT")
    kwok_add.add_argument(
        "--capacity",
        choices=["spot", "on-demand", "mixed"],
        default="mixed",
        help="labels and taints of the cluster's spot or on-demand nodes; mixed (default): two thirds spot",
    )
    kwok_delete = kwok_cmd.add_parser(
        "delete", help="delete kwok Node objects as a cloud reclaims VMs (their pods are left to PodGC)"
    )
    kwok_delete.add_argument("names", nargs="*", type=_argtypes.object_name, metavar="NAME")
    kwok_delete.add_argument("--all", action="store_true", help="every kwok node, in one request")
    audit = sub.add_parser("audit", help="count one user's requests in the audit log of a cluster started with --audit")
    audit.add_argument("user", help="the username, e.g. system:serviceaccount:spotrun-system:spotrun-operator")
    audit.add_argument("--since", type=_when, help="only requests received from then on: ISO 8601 or epoch seconds")
    audit.add_argument("--until", type=_when, help="only requests received before then")
    node = sub.add_parser("node", help="node disruptions and additions").add_subparsers(
        dest="node_command", required=True
    )
    preempt = node.add_parser("preempt", help="reclaim a spot node: graceful shutdown, then the node is deleted")
    preempt.add_argument("name", type=_argtypes.object_name)
    preempt.add_argument(
        "--grace",
        type=_argtypes.seconds_from_zero,  # 0: the VM goes as soon as the shutdown begins
        default=30,
        help="seconds the VM lives after the shutdown begins (default 30); a real node's kubelet stops its pods"
        " within its own shutdownGracePeriod (30s) and the VM goes as soon as it has",
    )
    reclaim = node.add_parser(
        "reclaim", help="Karpenter's and AWS NTH's path: taint, cordon, evict the pods, then the VM and Node are gone"
    )
    reclaim.add_argument("name", type=_argtypes.object_name)
    reclaim.add_argument(
        "--taint",
        type=_taint_key,
        default="karpenter.sh/disrupted",
        help="the NoSchedule taint put on first (default karpenter.sh/disrupted)",
    )
    reclaim.add_argument(
        "--timeout", type=_argtypes.seconds, default=120, help="seconds to wait for the pods to end (default 120)"
    )
    notice = node.add_parser(
        "notice",
        help="the cloud's reclaim warning: a NoSchedule taint on the node, which keeps running",
        description="Puts the NoSchedule taint KEY=VALUE on the running node NAME, as a cloud's interruption"
        " handler does before it reclaims a spot VM, and nothing else: the node and its pods keep running"
        " (reclaim it later with `node preempt`). Other taints are kept; one with the same key is replaced."
        " Keys: aws-node-termination-handler/spot-itn (AWS Node Termination Handler; value the event id),"
        " karpenter.sh/disrupted (Karpenter; give --value ''), cloud.google.com/impending-node-termination (GKE).",
    )
    notice.add_argument("name", type=_argtypes.object_name)
    notice.add_argument(
        "--taint",
        type=_taint_key,
        default=NOTICE_TAINT,
        metavar="KEY",
        help=f"the taint's key (default {NOTICE_TAINT})",
    )
    notice.add_argument(
        "--value",
        type=_taint_value,
        help="the taint's value (default notice-<unix time>, an event id as NTH sets it); '' for none",
    )
    kill = node.add_parser("kill", help="abrupt node loss: kubelet and pods get SIGKILL")
    kill.add_argument("name", type=_argtypes.object_name)
    add = node.add_parser("add", help="add a node, as an autoscaler would")
    add.add_argument("name", type=_argtypes.object_name)
    add.add_argument("--capacity", choices=["spot", "on-demand"], required=True)
    node_kind = add.add_mutually_exclusive_group()
    node_kind.add_argument(
        "--real", dest="real", action="store_true", default=None, help="a real node (kubelet, containerd)"
    )
    node_kind.add_argument("--process", dest="real", action="store_false", help="a process node")
    _state_dir_after_subcommands(parser)
    args, rest = parser.parse_known_args(argv)
    if args.command == "kind":
        if args.state_dir is not None:  # kind's state is its own: kind.main never sees this one
            parser.error("kind takes its --state-dir after its command: kind up --state-dir DIR")
        from localcluster import kind  # noqa: PLC0415 - docker and kind only when asked

        return kind.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "kwok" and args.kwok_command == "delete" and bool(args.names) == args.all:
        kwok_delete.error("give node names or --all, not both" if args.all else "give node names or --all")

    if args.command == "build":
        toolchain.build(force=args.force, real_nodes=args.real_nodes, kind=args.kind)
        return 0
    if args.command == "paths":
        print(json.dumps({b.name: str(toolchain.binary_path(b)) for b in toolchain.BINARIES}, indent=2))
        return 0
    if args.state_dir is not None:
        state_dir, given = args.state_dir, f"--state-dir {args.state_dir}"
    elif from_env:
        state_dir, given = Path(from_env), f"LOCALCLUSTER_STATE_DIR={from_env}"
    else:
        state_dir, given = DEFAULT_STATE_DIR, str(DEFAULT_STATE_DIR)
    if (file := _argtypes.file_in_the_way(state_dir)) is not None:
        _refuse(f"cannot use {given}: {file} is a file; give a directory")
    cluster = Cluster(state_dir)
    acts_on_it = args.command in ("env", "node") or (args.command == "kwok" and args.kwok_command == "delete")
    if acts_on_it and not cluster.running():  # what `up` and `kwok start|add` say too
        raise SystemExit(f"localcluster: no cluster is running in {cluster.dir}; `up` first")
    if args.command == "up":
        cluster.up(
            real_nodes=args.real_nodes, kwok_nodes=args.kwok_nodes, default_nodes=args.default_nodes, audit=args.audit
        )
    elif args.command == "kwok":
        return _kwok(cluster, args)
    elif args.command == "audit":
        path = cluster.logs / "audit.log"
        if not path.exists():
            raise SystemExit(f"localcluster: there is no {path}; start the cluster with `up --audit`")
        counts = audit_log.requests(path, args.user, since=args.since, until=args.until)
        for (verb, resource), count in sorted(counts.items()):
            print(f"{count:8} {verb:16} {resource}")
        print(f"{counts.total():8} in all")
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
        elif args.node_command == "notice":
            cluster.notice_node(args.name, args.taint, args.value)
        elif args.node_command == "kill":
            cluster.kill_node(args.name)
        else:
            cluster.add_node(args.name, args.capacity, real=args.real)
    return 0


def _state_dir_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """`up --state-dir DIR` as well as `--state-dir DIR up`, at every level (`node preempt NAME
    --state-dir DIR`). Given after the subcommand it wins; not given there, it sets nothing."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                if name != "kind":  # kind's arguments are kind's own (kind.main)
                    command.add_argument("--state-dir", type=_directory, default=argparse.SUPPRESS, help="as before it")
                    _state_dir_after_subcommands(command)


def _kwok(cluster: Cluster, args: argparse.Namespace) -> int:
    if args.kwok_command == "start":
        cluster.start_kwok()
    elif args.kwok_command == "stop":
        cluster.stop_kwok()
    elif args.kwok_command == "add":
        cluster.add_kwok_nodes(args.count, args.capacity)
    else:
        cluster.delete_kwok_nodes(None if args.all else args.names)
    return 0


def _when(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC when it names no zone)."""
    wrong = argparse.ArgumentTypeError(
        f"{text!r} is not a time: give ISO 8601 (2026-01-31T12:00:00, UTC unless it names a zone) or epoch seconds"
    )
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise wrong from None
        return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()
    if not math.isfinite(value):
        raise wrong
    return value


def _taint_key(text: str) -> str:
    """A taint's key as Kubernetes takes it: [DNS-PREFIX/]NAME, the value apart."""
    if not QUALIFIED_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a taint key: write PREFIX/NAME such as karpenter.sh/disrupted (a value goes in --value)"
        )
    return text


def _taint_value(text: str) -> str:
    """A taint's value: empty, or at most 63 letters, digits, '-', '_' and '.', a letter or digit at each end."""
    if not LABEL_VALUE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a taint value: at most 63 of a-z, A-Z, 0-9, '-', '_' and '.', starting and"
            " ending with a letter or digit, or '' for none"
        )
    return text


def _directory(text: str) -> Path:
    """--state-dir: a path; an empty one (an unset variable) would be the current directory."""
    if not text:
        raise argparse.ArgumentTypeError("'' is no directory: give the cluster's state directory")
    return Path(text)


def _refuse(message: str) -> NoReturn:
    """An error in what the user typed or set: one line, and argparse's exit code 2."""
    print(f"localcluster: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
