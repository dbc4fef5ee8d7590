"""Recovery latency after a spot preemption: a TaskRun against a batch/v1 Job, side by side in one run.

The Job is the best the built-in controller offers: podFailurePolicy `Ignore` on DisruptionTarget,
so preemptions do not count against backoffLimit. Both run on the local cluster's spot nodes; the
same disruption (`node preempt`, 1 s grace) hits each five times in a row. Latency is measured by
one watch on the pods: from the moment the old pod is seen terminal to the moment its replacement
is seen created.

    python -m localcluster up && python bench/recovery_latency.py [--rounds 5]
    python -m localcluster up --real-nodes && python -m localcluster image \
        && python bench/recovery_latency.py --disruption reclaim

On real nodes (kubelet, containerd, runc) both run the Spotrun image; `--disruption reclaim` taints,
cordons and evicts through the Eviction API (Karpenter's and the AWS Node Termination Handler's
path) instead of the graceful node shutdown.

`--s3-stopped` measures the TaskRun alone, first with S3 running, then with the S3 server stopped
(SIGSTOP: it hangs, it does not refuse), in the same run, and prints the ratio: the operator reads
storage beside its passes, so that the next attempt never waits on S3 (lost work is then an
upper bound, lostSecondsEstimated). SIGCONT is sent whatever happens.

    python -m localcluster up && python bench/recovery_latency.py --s3-stopped [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localcluster.cluster import Cluster  # noqa: E402
from localcluster.images import PROJECT_IMAGE  # noqa: E402
from localcluster.kube import Client  # noqa: E402
from tests.integration.helpers import SPOT_TOLERATION, wait_for  # noqa: E402
from tests.integration.operator_fixtures import install, new_task_namespace, steps_taskrun  # noqa: E402

Obj = dict[str, Any]
SPOT = {"nodeSelector": {"spotrun.dev/capacity": "spot"}, "tolerations": [SPOT_TOLERATION]}


class PodWatch:
    """Records, per pod, when it was first seen and when it was first seen terminal."""

    def __init__(self, kube: Client, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.created: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.owner: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        version = self.kube.get(path)["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            for event in self.kube.watch(path, version, timeout_seconds=30):
                now = time.monotonic()
                pod = event["object"]
                version = pod["metadata"].get("resourceVersion", version)
                if event["type"] in ("BOOKMARK", "ERROR"):
                    continue
                name = pod["metadata"]["name"]
                labels = pod["metadata"].get("labels") or {}
                self.owner.setdefault(name, labels.get("spotrun.dev/taskrun") or labels.get("job-name", ""))
                self.created.setdefault(name, now)
                terminal = pod.get("status", {}).get("phase") in ("Failed", "Succeeded")
                if terminal or event["type"] == "DELETED":
                    self.ended.setdefault(name, now)
                if self._stop.is_set():
                    return

    def live(self, owner: str) -> list[str]:
        return [n for n, o in self.owner.items() if o == owner and n not in self.ended]

    def stop(self) -> None:
        self._stop.set()


SLEEPER = ["python", "-c", "import time; time.sleep(3600)"]


def job(name: str, real: bool) -> Obj:
    image = {"image": PROJECT_IMAGE, "imagePullPolicy": "Never"} if real else {"image": "python"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "task", "command": SLEEPER, **image}],
                    **SPOT,
                }
            },
        },
    }


def one_round(
    cluster: Cluster, watch: PodWatch, owner: str, disruption: str, *, from_disruption: bool = False
) -> float:
    """Preempts the node of `owner`'s live pod; seconds from it seen terminal (or, `from_disruption`,
    from the preemption's start) to its replacement seen created."""
    kube = cluster.admin()
    live = wait_for(lambda: (pods := watch.live(owner)) and len(pods) == 1 and pods, 120, f"one live pod of {owner}")
    old = live[0]
    path = f"/api/v1/namespaces/{watch.namespace}/pods/{old}"
    wait_for(lambda: kube.get(path).get("status", {}).get("phase") == "Running", 60, f"{old} to run")
    node = kube.get(path)["spec"]["nodeName"]
    disrupted = time.monotonic()
    if disruption == "reclaim":
        cluster.reclaim_node(node)
    else:
        cluster.preempt_node(node, grace=1)
    ended = wait_for(lambda: watch.ended.get(old), 60, f"{old} to be seen terminal")
    replacement = wait_for(
        lambda: [n for n in watch.live(owner) if n != old and watch.created[n] >= ended - 5],
        180,
        f"a replacement for {old}",
    )[0]
    cluster.add_node(node, "spot")  # the autoscaler brings the capacity back
    # Negative: the replacement was created before the old pod ended (its node was already not
    # ready, as during a graceful node shutdown, and the operator does not wait for it).
    return watch.created[replacement] - (disrupted if from_disruption else ended)


def measure(cluster: Cluster, watch: PodWatch, owner: str, rounds: int, disruption: str) -> list[float]:
    return [one_round(cluster, watch, owner, disruption) for _ in range(rounds)]


@contextlib.contextmanager
def s3_stopped(cluster: Cluster) -> Iterator[None]:
    """The cluster's S3 server stopped (SIGSTOP): connections are accepted by the kernel and never answered."""
    pid = cluster._pid("versitygw")
    if pid is None:
        raise SystemExit("the local cluster's S3 server (versitygw) is not running")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def compare_s3_stopped(cluster: Cluster, watch: PodWatch, kube: Client, namespace: str, rounds: int) -> None:
    """The TaskRun's recovery with S3 running, then with S3 stopped, in one run; prints the ratio."""
    body = steps_taskrun("bench", steps=100000, step_seconds=1, maxInterruptions=1000)
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 1
    kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)
    # From the preemption's start: with a 1 s grace the replacement often comes before the old pod
    # is seen terminal (its node is not Ready first), and a ratio of such differences means nothing.
    running = [one_round(cluster, watch, "bench", "preempt", from_disruption=True) for _ in range(rounds)]
    with s3_stopped(cluster):
        stopped = [one_round(cluster, watch, "bench", "preempt", from_disruption=True) for _ in range(rounds)]
    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/bench")
    print(
        f"TaskRun recovery, `node preempt` (1 s grace) -> replacement seen created, S3 running vs S3 stopped "
        f"(SIGSTOP), {rounds} rounds each\n"
    )
    print(f"{'round':>5} {'S3 running':>11} {'S3 stopped':>11}")
    for n, (a, b) in enumerate(zip(running, stopped, strict=True), 1):
        print(f"{n:>5} {a:10.2f}s {b:10.2f}s")
    ratio = statistics.median(stopped) / max(abs(statistics.median(running)), 1e-3)
    print(
        f"\np50 S3 running {statistics.median(running):.2f}s, S3 stopped {statistics.median(stopped):.2f}s "
        f"(max {max(stopped):.2f}s); stopped/running {ratio:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--disruption", choices=["preempt", "reclaim"], default="preempt")
    parser.add_argument("--s3-stopped", action="store_true", help="the TaskRun with S3 running, then stopped")
    parser.add_argument("--state-dir", type=Path, help="the cluster's state directory (default .localcluster)")
    args = parser.parse_args()
    cluster = Cluster(args.state_dir)
    if not cluster.running():
        raise SystemExit("the local cluster is not running: run `make up` first")
    kube = cluster.admin()
    namespace = new_task_namespace(cluster, kube, "bench")
    operator = install(cluster, kube, Path(tempfile.mkdtemp(prefix="spotrun-bench-")))
    operator.start()
    watch = PodWatch(kube, namespace)
    if args.s3_stopped:
        try:
            compare_s3_stopped(cluster, watch, kube, namespace, args.rounds)
        finally:
            watch.stop()
            operator.stop()
            kube.delete(f"/api/v1/namespaces/{namespace}")
        return
    try:
        body = steps_taskrun("bench", steps=100000, step_seconds=1, maxInterruptions=1000)
        template = body["spec"]["template"]["spec"]
        template["terminationGracePeriodSeconds"] = 1
        if cluster.real_nodes:  # the image has no tests/: the TaskRun's task only sleeps, as the Job's
            template["containers"][0] |= {"image": PROJECT_IMAGE, "imagePullPolicy": "Never", "command": SLEEPER}
        kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)
        spotrun = measure(cluster, watch, "bench", args.rounds, args.disruption)
        kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/bench")
        kube.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", job("bench-job", cluster.real_nodes))
        batch = measure(cluster, watch, "bench-job", args.rounds, args.disruption)
    finally:
        watch.stop()
        operator.stop()
        kube.delete(f"/api/v1/namespaces/{namespace}")

    nodes = "real nodes" if cluster.real_nodes else "process nodes"
    print(
        f"recovery after `node {args.disruption}` on {nodes}: old pod seen terminal -> replacement seen created, "
        f"{args.rounds} rounds\n"
    )
    print(f"{'round':>5} {'TaskRun':>10} {'Job':>10} {'Job/TaskRun':>12}")
    for n, (a, b) in enumerate(zip(spotrun, batch, strict=True), 1):
        print(f"{n:>5} {a:9.2f}s {b:9.2f}s {b / max(abs(a), 1e-3):11.1f}x")
    first = max(abs(spotrun[0]), 1e-3)
    print(
        f"\nTaskRun p50 {statistics.median(spotrun):.2f}s, last/first {spotrun[-1] / first:.2f}; "
        f"Job p50 {statistics.median(batch):.2f}s; first-round ratio Job/TaskRun {batch[0] / first:.1f}x"
    )


if __name__ == "__main__":
    main()
