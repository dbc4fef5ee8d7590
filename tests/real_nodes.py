"""`make test-real`: the end-to-end suite, unchanged, on real nodes, once per way a node is lost.

    python -m tests.real_nodes [--mode preempt|reclaim|kill ...] [--keep]

Starts a local cluster with real nodes (kubelet, containerd, runc), builds the image from the
project's Dockerfile and the examples' image and imports them into every node, installs Spotrun
with its Helm chart on that image (the operator runs as a pod, in-cluster config, under its
ServiceAccount), then runs `tests/e2e` through its any-cluster interface (SPOTRUN_E2E_KUBECONFIG)
with SPOTRUN_E2E_PREEMPT set to each disruption in turn. Exits non-zero when any run fails. The
first run also sets SPOTRUN_E2E_MEMORY_LIMITS=1: the OOM test needs a runtime that enforces
memory limits, and does not depend on how a node is lost, so it runs once. So does the DDP example
when SPOTRUN_E2E_TORCH names a torch (`make test-real` passes the cached one): its pods mount it.

    python -m tests.real_nodes disrupt MODE NODE

is that SPOTRUN_E2E_PREEMPT command: the disruption, then capacity back under the same name, as
a node group's autoscaler brings it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localcluster import host, images
from localcluster.cluster import Cluster, marked_processes
from localcluster.install import install as lab_install
from localcluster.kube import ApiError

REPO = Path(__file__).resolve().parent.parent
MODES = ("preempt", "reclaim", "kill")
NAMESPACE = "e2e-real"
RELEASE_NAMESPACE = "spotrun-system"


def say(message: str) -> None:
    print(f"test-real: {message}", file=sys.stderr, flush=True)


def disrupt(cluster: Cluster, mode: str, node: str) -> None:
    capacity = cluster.node_config(node)["capacity_type"]
    if mode == "preempt":
        cluster.preempt_node(node, grace=10)
    elif mode == "reclaim":
        cluster.reclaim_node(node)
    elif mode == "kill":
        cluster.kill_node(node)
        # The same name comes back only once the cloud has deleted the old Node, as a new VM would.
        client = cluster.admin()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                client.get(f"/api/v1/nodes/{node}")
            except ApiError as err:
                if err.status == 404:
                    break
                raise
            time.sleep(1)
    else:
        raise SystemExit(f"test-real: unknown disruption {mode!r}; use one of {', '.join(MODES)}")
    cluster.add_node(node, capacity)


def install(cluster: Cluster, env: dict[str, str]) -> None:
    aws = {k: v for k, v in cluster.env_vars().items() if k.startswith("AWS_") and k != "AWS_DEFAULT_REGION"}
    repository, tag = images.PROJECT_IMAGE.rsplit(":", 1)
    # Imported into each node: there is no registry to pull from.
    image = ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never"]
    prefix = f"s3://{cluster.config['bucket']}/e2e-real/"
    lab_install(
        env, s3=aws, prefix=prefix, task_namespaces=[NAMESPACE], release_namespace=RELEASE_NAMESPACE, settings=image
    )


def check_operator_pod(env: dict[str, str]) -> None:
    """The Dockerfile as built: the operator runs as uid 10001 on a read-only root, `spotrun` works in it."""
    pod = subprocess.run(
        [
            "kubectl",
            "-n",
            RELEASE_NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=spotrun-operator",
            "-o",
            "name",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]

    def inside(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "-n", RELEASE_NAMESPACE, "exec", pod, "--", *argv],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    uid = inside("id", "-u")
    if uid.stdout.strip() != "10001":
        raise SystemExit(f"test-real: the operator runs as uid {uid.stdout.strip()!r}, not 10001: {uid.stderr}")
    write = inside("touch", "/probe")
    if write.returncode == 0 or "Read-only file system" not in write.stderr:
        raise SystemExit(f"test-real: the operator's root filesystem is writable: {write.stderr or 'touch succeeded'}")
    cli = inside("spotrun", "--help")
    if cli.returncode != 0 or "checkpoints" not in cli.stdout:
        raise SystemExit(f"test-real: `spotrun --help` failed in the operator's image: {cli.stderr}")
    say(f"{pod}: uid 10001, read-only root filesystem, `spotrun` works (checked with kubectl exec)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.real_nodes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", action="append", choices=MODES, help="run only these disruptions (repeatable)")
    parser.add_argument("--state-dir", type=Path, help="use this cluster state directory (default: a new one)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-k seed -x'")
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("disrupt", help="the SPOTRUN_E2E_PREEMPT command: disrupt NODE, then add it back")
    one.add_argument("mode", choices=MODES)
    one.add_argument("node")
    args = parser.parse_args(argv)
    if args.command == "disrupt":
        if args.state_dir is None:
            raise SystemExit("test-real: disrupt needs --state-dir DIR (the cluster's)")
        disrupt(Cluster(args.state_dir), args.mode, args.node)
        return 0

    cluster = Cluster(args.state_dir or Path(tempfile.mkdtemp(prefix="spotrun-real-")))
    before = host.fingerprint(cluster.dir)
    status = 1
    try:
        status = run_suites(cluster, args)
    finally:
        if not args.keep:
            cluster.down()
            status = max(status, check_host_restored(cluster, before))
            if status == 0 and args.state_dir is None:
                shutil.rmtree(cluster.dir)
            elif status:
                say(f"the cluster's logs are kept in {cluster.dir / 'logs'}")
    return status


def check_host_restored(cluster: Cluster, before: dict[str, list[str]]) -> int:
    """`down` leaves the host as it found it: no processes, mounts, cgroups, netns, links, chains, sysctls."""
    left = host.differences(before, host.fingerprint(cluster.dir))
    if processes := list(marked_processes(cluster.dir)):
        left.append(f"processes: {processes}")
    if left:
        say("`down` did not leave the host as it found it:\n  " + "\n  ".join(left))
        return 1
    say("`down` left the host as it found it (processes, mounts, cgroups, netns, links, addresses, iptables, sysctls)")
    return 0


def run_suites(cluster: Cluster, args: argparse.Namespace) -> int:
    started = time.monotonic()
    cluster.up(real_nodes=True)
    say(f"cluster with real nodes up in {time.monotonic() - started:.0f}s ({cluster.dir})")
    built = images.build_project_images(REPO)
    cluster.add_real_images(list(built.values()))
    env = {**os.environ, **cluster.env_vars(), "PATH": f"{cluster.dir / 'bin'}:{os.environ['PATH']}"}
    install(cluster, env)
    say("Spotrun installed with the Helm chart on the built image")
    check_operator_pod(env)
    failed = []
    modes = args.mode or MODES
    for mode in modes:
        command = [sys.executable, "-m", "tests.real_nodes", "--state-dir", str(cluster.dir), "disrupt", mode]
        run_env = {
            **env,
            "SPOTRUN_E2E_KUBECONFIG": str(cluster.dir / "kubeconfig"),
            "SPOTRUN_E2E_NAMESPACE": NAMESPACE,
            "SPOTRUN_E2E_PREEMPT": shlex.join(command) + " {node}",
            "SPOTRUN_E2E_IMAGE": images.EXAMPLES_IMAGE,
            "SPOTRUN_E2E_EXAMPLES": "/opt/spotrun/examples",
            "SPOTRUN_E2E_MEMORY_LIMITS": "1" if mode == modes[0] else "0",
            # The DDP example (when torch is given): once, with the first disruption; the nodes are
            # this machine's, so its pods mount the host's torch.
            "SPOTRUN_E2E_TORCH": os.environ.get("SPOTRUN_E2E_TORCH", "") if mode == modes[0] else "",
            "SPOTRUN_E2E_TORCH_MOUNT": "1",
        }
        say(f"tests/e2e with SPOTRUN_E2E_PREEMPT={run_env['SPOTRUN_E2E_PREEMPT']}")
        mode_started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/e2e", "-p", "no:cacheprovider", *shlex.split(args.pytest_args)],
            cwd=REPO,
            env=run_env,
            check=False,
        )
        outcome = "passed" if done.returncode == 0 else "FAILED"
        say(f"node {mode}: e2e {outcome} in {time.monotonic() - mode_started:.0f}s")
        if done.returncode != 0:
            failed.append(mode)
    if failed:
        pods = subprocess.run(
            ["kubectl", "get", "pods", "-A", "-o", "wide"], env=env, capture_output=True, text=True, check=False
        )
        say(f"failed for: {', '.join(failed)}; pods now:\n{pods.stdout}")
        return 1
    say(json.dumps({"modes": list(modes), "seconds": round(time.monotonic() - started)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
