"""A few hundred TaskRuns on kwok nodes, on a cluster of their own with the apiserver's audit log:
all succeed, no TaskRun ever has two pods, a spot storm replaces every interrupted one, and the
operator's requests, counted by the apiserver (not by the operator), stay within a bound per
TaskRun; once nothing changes, it makes none."""

from __future__ import annotations

import concurrent.futures
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster import audit, kwok
from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import Operator, install

Obj = dict[str, Any]
TASKRUNS = 300
OPERATOR_USER = "system:serviceaccount:spotrun-system:spotrun-operator"
# Each TaskRun's life: create its pod, 3-4 status writes (created, scheduled/running, succeeded),
# release the pod's finalizer, 3 Events. 12 leaves room for conflicts and retries, not for polling.
REQUESTS_PER_TASKRUN = 12


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Client, Operator]]:
    cluster = Cluster(tmp_path_factory.mktemp("scale"))
    try:  # `up` inside: a cluster that failed part way is stopped too
        cluster.up(kwok_nodes=30, default_nodes=False, audit=True)
        kube = cluster.admin()
        operator = install(cluster, kube, tmp_path_factory.mktemp("scale-operator"))
        kube.create("/api/v1/namespaces", {"metadata": {"name": "scale"}})
        wait_for(lambda: kube.get("/api/v1/namespaces/scale/serviceaccounts/default"), 30, "the ServiceAccount")
        operator.start()
        try:
            yield cluster, kube, operator
        finally:
            operator.stop()
    finally:
        cluster.down()


def kwok_taskrun(name: str, run_seconds: float | None) -> Obj:
    annotations = {} if run_seconds is None else {kwok.RUN_SECONDS: str(run_seconds)}
    return {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": name},
        "spec": {
            "maxInterruptions": 3,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "nodeSelector": {kwok.NODE_LABEL: "true"},
                    "containers": [{"name": "task", "image": "busybox", "command": ["true"]}],
                },
            },
        },
    }


def metric(operator: Operator, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


def create_all(kube: Client, bodies: list[Obj]) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: kube.create("/apis/spotrun.dev/v1alpha1/namespaces/scale/taskruns", body), bodies))


def taskruns(kube: Client, prefix: str) -> list[Obj]:
    items = kube.get("/apis/spotrun.dev/v1alpha1/namespaces/scale/taskruns")["items"]
    return [t for t in items if t["metadata"]["name"].startswith(prefix)]


def pods_by_taskrun(kube: Client, prefix: str) -> dict[str, list[Obj]]:
    by: dict[str, list[Obj]] = {}
    for pod in kube.get("/api/v1/namespaces/scale/pods", labelSelector="spotrun.dev/taskrun")["items"]:
        owner = pod["metadata"]["labels"]["spotrun.dev/taskrun"]
        if owner.startswith(prefix):
            by.setdefault(owner, []).append(pod)
    return by


def test_hundreds_of_taskruns_all_succeed_with_one_pod_each_and_bounded_requests(
    scale: tuple[Cluster, Client, Operator],
) -> None:
    cluster, kube, operator = scale
    log = cluster.dir / "logs" / "audit.log"
    started = time.time()
    create_all(kube, [kwok_taskrun(f"burst-{n}", 3) for n in range(TASKRUNS)])
    wait_for(
        lambda: sum((t.get("status") or {}).get("phase") == "Succeeded" for t in taskruns(kube, "burst-")) == TASKRUNS,
        300,
        f"{TASKRUNS} TaskRuns to succeed",
        interval=2,
    )
    took = time.time() - started
    finals = taskruns(kube, "burst-")
    assert {(t["status"]["attempt"], t["status"]["interruptions"], t["status"]["failures"]) for t in finals} == {
        (1, 0, 0)
    }
    pods = pods_by_taskrun(kube, "burst-")
    assert len(pods) == TASKRUNS
    assert all(len(p) == 1 for p in pods.values()), "a TaskRun had more than one pod"
    assert all(not p[0]["metadata"].get("finalizers") for p in pods.values()), "a counted pod kept its finalizer"
    # Let the last writes land in the log; then count what the operator asked of the apiserver.
    time.sleep(3)
    burst = audit.requests(log, OPERATOR_USER, since=started, until=time.time())
    writes = sum(n for (verb, _), n in burst.items() if verb not in ("get", "list", "watch"))
    print(f"{TASKRUNS} TaskRuns succeeded in {took:.0f}s; operator requests {burst.total()}: {dict(burst)}")
    assert burst[("create", "pods")] == TASKRUNS
    assert writes <= REQUESTS_PER_TASKRUN * TASKRUNS
    # Reads: the informers' lists and watches, and live pod lists when the cache lags; never one a pass.
    assert burst[("get", "taskruns")] == 0
    assert burst[("list", "pods")] <= TASKRUNS // 3

    # Idle: nothing changes, so the operator makes no request at all (watches are long-lived and the
    # leader election is off here), once the Events of the burst, which have a budget of their own,
    # are all posted.
    wait_for(lambda: metric(operator, "spotrun_events_waiting") == 0, 120, "the burst's Events to be posted")
    quiet = time.time()
    time.sleep(30)
    idle = audit.requests(log, OPERATOR_USER, since=quiet, until=time.time())
    idle_non_watch = {k: n for k, n in idle.items() if k[0] != "watch"}
    print(f"idle 30 s with {TASKRUNS} finished TaskRuns: {idle_non_watch or 'no requests'}")
    assert idle_non_watch == {}


def test_a_spot_storm_replaces_every_interrupted_taskrun_once(scale: tuple[Cluster, Client, Operator]) -> None:
    cluster, kube, _ = scale
    create_all(kube, [kwok_taskrun(f"storm-{n}", None) for n in range(100)])
    wait_for(
        lambda: sum((t.get("status") or {}).get("phase") == "Running" for t in taskruns(kube, "storm-")) == 100,
        180,
        "100 TaskRuns to run",
        interval=1,
    )
    on_node = {name: p[0]["spec"]["nodeName"] for name, p in pods_by_taskrun(kube, "storm-").items()}
    spot = sorted({n for n in on_node.values() if n.startswith("kwok-spot-")})
    gone = set(spot[: max(1, len(spot) * 3 // 10)])
    hit = {name for name, node in on_node.items() if node in gone}
    assert hit, "no TaskRun on the nodes to delete"
    cluster.delete_kwok_nodes(sorted(gone))
    deleted = time.time()
    wait_for(
        lambda: all(
            (t.get("status") or {}).get("attempt") == 2 and t["status"].get("phase") == "Running"
            for t in taskruns(kube, "storm-")
            if t["metadata"]["name"] in hit
        ),
        120,
        f"the {len(hit)} interrupted TaskRuns to run again",
        interval=0.5,
    )
    took = time.time() - deleted
    print(f"{len(gone)} of {len(spot)} spot nodes deleted: {len(hit)} TaskRuns running again after {took:.1f}s")
    finals = {t["metadata"]["name"]: t["status"] for t in taskruns(kube, "storm-")}
    for name, st in finals.items():
        expected = (2, 1) if name in hit else (1, 0)
        assert (st["attempt"], st["interruptions"]) == expected, (name, st)
    live = {
        name: [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
        for name, pods in pods_by_taskrun(kube, "storm-").items()
    }
    assert all(len(p) == 1 for p in live.values()), "a TaskRun had two live pods"
