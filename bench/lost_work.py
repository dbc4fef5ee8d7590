"""Lost work per interruption: no notice, a 20 s notice, and `kubectl drain` with Checkpoint or Allow.

The training example (examples/train.py: a checkpoint every CHECKPOINT_EVERY steps, one more from
its on_preemption callback, and on a notice a last one as late as still fits) runs as a TaskRun on
the local cluster's spot nodes. Each commit takes --save-seconds (a large model's upload), longer
than the 3 s grace period SIGTERM leaves, so the commit on SIGTERM never completes. Each round
interrupts the task at a random point of its checkpoint interval and reads the attempt's
lostSeconds, which the operator measures from the last committed checkpoint to the end of the pod.
The notice is the AWS Node Termination Handler's taint, configured (a capacity profile file) to
mean 20 s of warning, as the bench gives it. Scenarios:

  none     `node preempt` (graceful shutdown, 3 s grace) with no warning
  notice   `node notice` (the AWS Node Termination Handler's taint), then `node preempt` 20 s later
  drain    `kubectl drain` with spec.disruption.voluntary Checkpoint (the default)
  allow    `kubectl drain` with voluntary Allow (the drain evicts, as without Spotrun)

Ratios are against `none`, measured in the same run. The target: with a notice or a
checkpoint-first drain, lost work is below one checkpoint interval in every round.

    python -m localcluster up && python bench/lost_work.py [--rounds 3] [--interval 6] [--save-seconds 4]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spotrun_operator.config import PROFILES  # noqa: E402

from localcluster.cluster import Cluster  # noqa: E402
from localcluster.kube import ApiError, Client  # noqa: E402
from tests.integration.helpers import wait_for  # noqa: E402
from tests.integration.operator_fixtures import install, kubectl, new_task_namespace, taskrun  # noqa: E402

Obj = dict[str, Any]
TRAIN = REPO / "examples" / "train.py"
STEP_SECONDS = 0.1
NOTICE_TAINT = "aws-node-termination-handler/spot-itn"
SCENARIOS = ("none", "notice", "drain", "allow")


def status(kube: Client, namespace: str, name: str) -> Obj:
    result: Obj = kube.get(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/{name}").get("status") or {}
    return result


def restore_node(cluster: Cluster, kube: Client, node: str) -> None:
    """The node back as a plain spot node: re-added after a reclaim, untainted and uncordoned after a drain."""
    try:
        current = kube.get(f"/api/v1/nodes/{node}")
    except ApiError:
        cluster.add_node(node, "spot")
        return
    taints = [t for t in current["spec"].get("taints", []) if t["key"] != NOTICE_TAINT]
    kube.merge_patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": None, "taints": taints}})


def one_round(
    cluster: Cluster, kube: Client, namespace: str, scenario: str, n: int, interval: float, save: float
) -> float:
    name = f"{scenario}-{n}"
    every = max(1, round(interval / STEP_SECONDS))
    env = {"STEPS": "100000", "STEP_SECONDS": str(STEP_SECONDS), "CHECKPOINT_EVERY": str(every)}
    body = taskrun(
        name,
        ["python", str(TRAIN)],
        {**env, "SAVE_SECONDS": str(save)},
        maxInterruptions=5,
        pod={"terminationGracePeriodSeconds": 3},
        **({"disruption": {"voluntary": "Allow"}} if scenario == "allow" else {}),
    )
    kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)
    running = wait_for(
        lambda: (s := status(kube, namespace, name)).get("phase") == "Running" and s, 90, f"{name} running"
    )
    # Past its first checkpoint, then a random point of its interval.
    time.sleep(interval + save + 2 + random.uniform(0, interval))
    node = running["nodeName"]
    try:
        if scenario == "none":
            cluster.preempt_node(node, grace=3)
        elif scenario == "notice":
            cluster.notice_node(node, NOTICE_TAINT, f"bench-{n}")
            time.sleep(20)
            cluster.preempt_node(node, grace=3)
        else:
            kubectl(cluster, "drain", node, f"--pod-selector=spotrun.dev/taskrun={name}", "--timeout=150s")
        first = wait_for(lambda: (status(kube, namespace, name).get("attempts") or [None])[0], 90, f"{name} counted")
    finally:
        restore_node(cluster, kube, node)
    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/{name}")
    return float(first["lostSeconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between the task's checkpoints")
    parser.add_argument("--save-seconds", type=float, default=4.0, help="how long a commit takes (default 4)")
    parser.add_argument("--state-dir", type=Path, help="the cluster's state directory (default .localcluster)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    random.seed(args.seed)
    cluster = Cluster(args.state_dir)
    if not cluster.running():
        raise SystemExit("the local cluster is not running: run `make up` first")
    kube = cluster.admin()
    namespace = new_task_namespace(cluster, kube, "bench")
    workdir = Path(tempfile.mkdtemp(prefix="spotrun-bench-"))
    profile = workdir / "profile.json"
    profile.write_text(json.dumps({**PROFILES["generic"], "noticeTaints": {NOTICE_TAINT: 20}}))
    operator = install(cluster, kube, workdir)
    operator.env["SPOTRUN_CAPACITY_PROFILE_FILE"] = str(profile)
    operator.start()
    lost: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    try:
        for n in range(args.rounds):
            for scenario in SCENARIOS:
                lost[scenario].append(
                    one_round(cluster, kube, namespace, scenario, n, args.interval, args.save_seconds)
                )
                print(f"round {n + 1} {scenario:>6}: lost {lost[scenario][-1]:.1f}s", flush=True)
    finally:
        operator.stop()
        kube.delete(f"/api/v1/namespaces/{namespace}")

    print(
        f"\nlost seconds per interruption: a checkpoint every {args.interval:g}s, each taking {args.save_seconds:g}s; "
        f"3s of grace; {args.rounds} rounds (process nodes)\n"
    )
    print(f"{'scenario':>8} {'mean':>7} {'max':>7} {'vs none':>8}  rounds")
    base = max(statistics.mean(lost["none"]), 1e-3)
    for scenario in SCENARIOS:
        values = lost[scenario]
        mean = statistics.mean(values)
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{scenario:>8} {mean:6.1f}s {max(values):6.1f}s {mean / base:7.2f}x  {rounds}")
    for scenario in ("notice", "drain"):
        met = all(v < args.interval for v in lost[scenario])
        print(f"{scenario}: below one interval ({args.interval:g}s) in every round: {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
