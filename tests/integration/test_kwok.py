"""kwok nodes on the local control plane, pods on them with a real kubelet's statuses; the audit log."""

from __future__ import annotations

import collections
import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster import audit, kwok, pki
from localcluster.cluster import ON_DEMAND_LABELS, SPOT_LABELS, SPOT_TAINT, Cluster, marked_processes
from localcluster.kube import Client
from tests.integration.helpers import SPOT_TOLERATION, condition, get_pod, phase_is, pod_gone, wait_for

pytestmark = pytest.mark.integration

Obj = dict[str, Any]
REAL = Path(__file__).resolve().parents[1] / "unit" / "pod_statuses" / "real"
HOLD = "tests.spotrun.dev/hold"  # a finalizer of the test's own, as the Job controller's and Spotrun's


@pytest.fixture(scope="module")
def kwok_nodes(cluster: Cluster, kube: Client) -> Iterator[dict[str, list[str]]]:
    """Two spot and one on-demand kwok node on the session cluster, for this module only."""
    was_running = cluster._pid("kwok") is not None
    nodes = {"spot": cluster.add_kwok_nodes(2, "spot"), "on-demand": cluster.add_kwok_nodes(1, "on-demand")}
    yield nodes
    names = nodes["spot"] + nodes["on-demand"]
    # Let kwok end the pods of the tests' namespaces (being deleted) before its nodes go.
    wait_for(lambda: not pods_on(kube, names), 30, "the pods on the kwok nodes to be gone")
    cluster.delete_kwok_nodes([n for n in names if n in cluster.kwok_nodes()])
    if not was_running:
        cluster.stop_kwok()


@pytest.fixture
def ns(kube: Client, namespace: str, kwok_nodes: dict[str, list[str]]) -> Iterator[str]:
    """The test's namespace; its pods are deleted after it, so kwok ends them at once (the namespace goes later)."""
    yield namespace
    kube.request("DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs", params={"propagationPolicy": "Background"})
    kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods")
    for pod in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]:
        if pod["metadata"].get("finalizers"):  # a test that failed before it removed its own
            kube.merge_patch(
                f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}", {"metadata": {"finalizers": None}}
            )


def pods_on(kube: Client, nodes: list[str]) -> list[Obj]:
    pods = kube.get("/api/v1/pods")["items"]
    return [p for p in pods if p["spec"].get("nodeName") in nodes]


def kwok_pod(
    name: str, annotations: dict[str, str] | None = None, finalizers: list[str] | None = None, node: str | None = None
) -> Obj:
    """A pod for any kwok node (or NODE): nothing runs, so the image is never pulled."""
    spec: Obj = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "registry.example/task:1", "command": ["task"]}],
        "tolerations": [SPOT_TOLERATION],
    }
    if node:
        spec["nodeName"] = node
    else:
        spec["nodeSelector"] = {kwok.NODE_LABEL: "true"}
    metadata: Obj = {"name": name, "annotations": annotations or {}}
    if finalizers:
        metadata["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def create(kube: Client, namespace: str, body: Obj) -> Obj:
    return kube.create(f"/api/v1/namespaces/{namespace}/pods", body)


def terminated(pod: Obj) -> Obj:
    (status,) = pod["status"]["containerStatuses"]
    state: Obj = status["state"]["terminated"]
    return state


def conditions(pod: Obj) -> set[tuple[str, str, str | None]]:
    return {(c["type"], c["status"], c.get("reason")) for c in pod["status"]["conditions"]}


def real(name: str) -> Obj:
    """A pod as the real kubelet v1.36 left it (tests/capture_real_pod_statuses.py)."""
    found: Obj = json.loads((REAL / f"{name}.json").read_text())
    return found


def stays(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Polls CHECK for SECONDS: it must hold the whole time (kwok acts within milliseconds)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what
        time.sleep(0.2)


def test_kwok_nodes_are_ready_as_the_clusters_spot_and_on_demand_nodes(
    cluster: Cluster, kube: Client, kwok_nodes: dict[str, list[str]]
) -> None:
    for capacity, labels, taints in (("spot", SPOT_LABELS, [SPOT_TAINT]), ("on-demand", ON_DEMAND_LABELS, [])):
        for name in kwok_nodes[capacity]:
            assert name.startswith("kwok-spot-" if capacity == "spot" else "kwok-ondemand-")
            node = kube.get(f"/api/v1/nodes/{name}")
            assert labels.items() <= node["metadata"]["labels"].items()
            assert node["metadata"]["labels"][kwok.NODE_LABEL] == "true"
            assert node["spec"].get("taints", []) == taints
            assert condition(node, "Ready")["status"] == "True"  # type: ignore[index]
            assert node["status"]["allocatable"]["pods"] == "110"
            lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
            assert lease["spec"]["leaseDurationSeconds"] == kwok.LEASE_DURATION_SECONDS
    assert set(cluster.kwok_nodes("spot")) >= set(kwok_nodes["spot"])
    # kwok leaves the cluster's own nodes to their kubelets.
    for node in kube.get("/api/v1/nodes", labelSelector=f"!{kwok.NODE_LABEL}")["items"]:
        name = node["metadata"]["name"]
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
        assert lease["spec"]["holderIdentity"] == name


def test_a_pod_runs_then_succeeds_after_its_run_seconds(kube: Client, ns: str) -> None:
    create(kube, ns, kwok_pod("ok", {kwok.RUN_SECONDS: "2"}))
    running = wait_for(lambda: phase_is(kube, ns, "ok", "Running", "Succeeded"), 10, "the pod to run")
    assert running["status"]["phase"] == "Running"
    assert condition(running, "Ready")["status"] == "True"  # type: ignore[index]
    assert running["status"]["podIP"].startswith("10.128.")
    assert running["status"]["hostIP"].startswith("10.79.")
    assert "running" in running["status"]["containerStatuses"][0]["state"]
    assert running["status"]["startTime"]
    done = wait_for(lambda: phase_is(kube, ns, "ok", "Succeeded", "Failed"), 10, "the pod to end")
    assert done["status"]["phase"] == "Succeeded"
    assert terminated(done)["exitCode"] == 0
    assert terminated(done)["reason"] == "Completed"
    assert time.time() - datetime.datetime.fromisoformat(done["status"]["startTime"]).timestamp() >= 1
    # What the real kubelet writes for a container that exited 0 (restartPolicy Never).
    expected = real("succeeded")
    assert conditions(done) == conditions(expected)
    assert terminated(done).keys() == terminated(expected).keys()


def test_a_pod_with_an_exit_code_fails_with_it(kube: Client, ns: str) -> None:
    create(kube, ns, kwok_pod("bad", {kwok.RUN_SECONDS: "1", kwok.EXIT_CODE: "3"}))
    done = wait_for(lambda: phase_is(kube, ns, "bad", "Succeeded", "Failed"), 15, "the pod to end")
    assert done["status"]["phase"] == "Failed"
    assert terminated(done)["exitCode"] == 3
    assert terminated(done)["reason"] == "Error"
    expected = real("exit-1")
    assert conditions(done) == conditions(expected)


def test_a_deleted_pod_is_terminated_and_held_by_its_finalizer(kube: Client, ns: str) -> None:
    create(kube, ns, kwok_pod("held", finalizers=[HOLD]))
    wait_for(lambda: phase_is(kube, ns, "held", "Running"), 10, "the pod to run")
    kube.delete(f"/api/v1/namespaces/{ns}/pods/held")

    def finally_deleted() -> Obj | None:
        # The kubelet's final delete (grace 0) came after the terminal status.
        pod = get_pod(kube, ns, "held")
        return pod if pod["metadata"].get("deletionGracePeriodSeconds") == 0 else None

    ended = wait_for(finally_deleted, 10, "the pod's containers to be stopped and the final delete")
    assert ended["status"]["phase"] == "Failed"
    assert terminated(ended)["exitCode"] == 143
    assert terminated(ended)["reason"] == "Error"
    assert ended["metadata"]["finalizers"] == [HOLD]
    assert conditions(ended) == conditions(real("deleted"))
    stays(lambda: not pod_gone(kube, ns, "held"), 2, "the pod stays while its finalizer holds it")
    assert get_pod(kube, ns, "held")["metadata"]["finalizers"] == [HOLD]
    kube.merge_patch(f"/api/v1/namespaces/{ns}/pods/held", {"metadata": {"finalizers": None}})
    wait_for(lambda: pod_gone(kube, ns, "held"), 10, "the pod to go once its finalizer is removed")


def test_a_job_completes_on_kwok_nodes(kube: Client, ns: str, kwok_nodes: dict[str, list[str]]) -> None:
    template = kwok_pod("unused", {kwok.RUN_SECONDS: "1"})
    del template["metadata"]["name"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch"},
        "spec": {"completions": 4, "parallelism": 4, "backoffLimit": 0, "template": template},
    }
    kube.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job)

    def complete() -> Obj | None:
        found = kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/batch")
        return found if condition(found, "Complete") or condition(found, "Failed") else None

    done = wait_for(complete, 30, "the Job to finish")
    assert condition(done, "Complete")["status"] == "True"  # type: ignore[index]
    assert done["status"]["succeeded"] == 4
    pods = kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="job-name=batch")["items"]
    nodes = kwok_nodes["spot"] + kwok_nodes["on-demand"]
    assert {p["spec"]["nodeName"] for p in pods} <= set(nodes)
    # The Job controller counted every pod and then removed its job-tracking finalizer itself.
    assert all(not p["metadata"].get("finalizers") for p in pods)
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)


def test_the_pods_of_a_deleted_kwok_node_are_left_as_they_are(cluster: Cluster, kube: Client, ns: str) -> None:
    (node,) = cluster.add_kwok_nodes(1, "on-demand")
    create(kube, ns, kwok_pod("orphan", node=node))
    wait_for(lambda: phase_is(kube, ns, "orphan", "Running"), 10, "the pod to run")
    assert cluster.delete_kwok_nodes([node]) == [node]
    assert node not in cluster.kwok_nodes()
    # As on a cloud: no kubelet ends it; PodGC and the operators deal with it.
    kube.delete(f"/api/v1/namespaces/{ns}/pods/orphan")
    stays(lambda: phase_is(kube, ns, "orphan", "Running") is not None, 2, "the orphan stays Running")
    kube.delete(f"/api/v1/namespaces/{ns}/pods/orphan", {"gracePeriodSeconds": 0})


# ----- the audit log: its own cluster, of kwok nodes only ---------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster(tmp_path_factory.mktemp("audited"))
    started.up(audit=True, default_nodes=False, kwok_nodes=3)
    try:
        yield started
    finally:
        started.down()
    assert not list(marked_processes(started.dir)), "`down` left processes of the cluster running"


def test_a_cluster_of_kwok_nodes_only(audited: Cluster) -> None:
    nodes = audited.admin().get("/api/v1/nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["kwok-ondemand-1", "kwok-spot-1", "kwok-spot-2"]
    assert all(condition(n, "Ready")["status"] == "True" for n in nodes)  # type: ignore[index]


def test_the_audit_log_counts_one_users_requests(audited: Cluster) -> None:
    cert, key = pki.issue(audited.pki, "audit-tester", "audit-tester", "system:masters")
    tester = Client(audited.config["apiserver"], str(audited.pki / "ca.crt"), str(cert), str(key))
    name = f"cm-{uuid.uuid4().hex[:6]}"
    since = time.time()
    tester.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": name}, "data": {"a": "b"}})
    tester.get(f"/api/v1/namespaces/default/configmaps/{name}")
    tester.get(f"/api/v1/namespaces/default/configmaps/{name}")
    listed = tester.get("/api/v1/namespaces/default/configmaps")
    list(tester.watch("/api/v1/namespaces/default/configmaps", listed["metadata"]["resourceVersion"], 1))
    tester.delete(f"/api/v1/namespaces/default/configmaps/{name}")
    tester.get("/version")
    until = time.time()
    expected = collections.Counter(
        {
            ("create", "configmaps"): 1,
            ("get", "configmaps"): 2,
            ("list", "configmaps"): 1,
            ("watch", "configmaps"): 1,
            ("delete", "configmaps"): 1,
            ("get", "/version"): 1,
        }
    )
    log = audited.logs / "audit.log"
    # ResponseComplete is logged as the response ends: poll until the last one is in.
    wait_for(lambda: audit.requests(log, "audit-tester", since, until) == expected, 10, "the audit events")
    assert audit.requests(log, "audit-tester", since=until).total() == 0
    # Heartbeats are not logged: kwok renewed its three Leases every few seconds meanwhile.
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [e for e in events if (e.get("objectRef") or {}).get("resource") == "leases"]
    assert not [
        e
        for e in events
        if (e.get("objectRef") or {}).get("subresource") == "status"
        and e["verb"] == "patch"
        and e["objectRef"]["resource"] == "nodes"
    ]
    assert not [e for e in events if e.get("requestURI", "").startswith(("/readyz", "/healthz", "/livez"))]
    assert {e["stage"] for e in events} == {"ResponseComplete"}
    assert any(e["user"]["username"] == "localcluster:kwok" for e in events)  # kwok's own requests, apart


def test_an_unaudited_cluster_refuses_audit_on_reuse(cluster: Cluster) -> None:
    if cluster.config.get("audit"):
        pytest.skip("the session cluster was started with --audit")
    with pytest.raises(SystemExit, match="without audit"):
        cluster.up(audit=True)
