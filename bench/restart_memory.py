"""The operator's memory when it starts on N TaskRuns that exist (a restart, a standby taking over
after a relist), against one that saw the same N arrive, in one run on one cluster.

A cluster of its own with 50 kwok nodes; one operator process (its ServiceAccount, no leader
election) runs while N TaskRuns are created and their pods run; once every TaskRun has its pod
and 10 s have passed, its RSS is read and it is SIGKILLed. A second process then starts on the N
TaskRuns and N pods: its RSS 60 s after it started, and the most seen, against the first's.

    python bench/restart_memory.py [--taskruns 5000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import create_all, process_cost, taskrun
from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.operator_fixtures import Operator, install

NAMESPACE = "restart-memory"


def pods(kube: Client) -> int:
    return len(kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector="spotrun.dev/taskrun")["items"])


def rss_until(kube: Client, operator: Operator, n: int, settle: float) -> tuple[float, float]:
    """(RSS now, the most seen) in MiB, sampled every 2 s until N pods exist and SETTLE s more."""
    assert operator.proc is not None
    peak, ready_at = 0.0, None
    while ready_at is None or time.monotonic() - ready_at < settle:
        rss, _ = process_cost(operator.proc.pid)
        peak = max(peak, rss)
        if ready_at is None and pods(kube) >= n:
            ready_at = time.monotonic()
        time.sleep(2)
    return rss, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taskruns", type=int, default=5000)
    n = parser.parse_args().taskruns
    state, work = (Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("spotrun-restart-", "spotrun-restart-op-"))
    cluster = Cluster(state)
    try:
        cluster.up(kwok_nodes=50, default_nodes=False)
        kube = cluster.admin()
        first = install(cluster, kube, work)
        kube.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        arriving = Operator(cluster, first.kubeconfig, work / "first.log")
        arriving.start()
        time.sleep(10)
        bodies = [taskrun(f"t-{i:05d}", None) for i in range(n)]
        create_all(cluster, f"/apis/spotrun.dev/v1alpha1/namespaces/{NAMESPACE}/taskruns", bodies)
        seen, seen_peak = rss_until(kube, arriving, n, settle=10)
        arriving.kill()
        starting = Operator(cluster, first.kubeconfig, work / "second.log")
        starting.start()
        started, started_peak = rss_until(kube, starting, n, settle=60)
        starting.stop()
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"operator RSS with {n} TaskRuns and their pods (one process each, 50 kwok nodes):")
    print(f"  saw them arrive:       {seen:6.0f} MiB (most {seen_peak:.0f})")
    print(f"  started on them:       {started:6.0f} MiB (most {started_peak:.0f})  {started / seen:.2f}x")


if __name__ == "__main__":
    main()
