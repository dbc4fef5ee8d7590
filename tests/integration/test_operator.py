"""The operator on the local cluster: each way a spot task dies, retries, budgets, suspend, deadline."""

from __future__ import annotations

import contextlib
import random
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from spotrun import Checkpoint, open_storage

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import container, pod, pod_gone, running_container, wait_for
from tests.integration.operator_fixtures import (
    SEED,
    LivePods,
    Operator,
    checkpoint_step,
    create_taskrun,
    current_pod,
    kubectl,
    steps_taskrun,
    taskrun,
    wait_phase,
    wait_step,
)
from tests.integration.operator_fixtures import (
    status as status_of,
)

pytestmark = pytest.mark.integration


def stopped(kube: Client, namespace: str, pod_name: str) -> bool:
    return pod_gone(kube, namespace, pod_name) or not running_container(kube, namespace, pod_name)


def assert_resumed_and_succeeded(kube: Client, ns: str, name: str, interruptions: int = 1) -> dict[str, object]:
    final = wait_phase(kube, ns, name, "Succeeded", "Failed", timeout=180)
    assert final["phase"] == "Succeeded", final.get("message")
    assert final["interruptions"] == interruptions
    assert final["failures"] == 0
    assert final["attempt"] == interruptions + 1
    resumed = final["result"]["resumed"]
    assert resumed[0] == 0
    assert all(step > 0 for step in resumed[1:]), f"an attempt restarted from zero: {resumed}"
    return final


def run_until_step(kube: Client, ns: str, name: str, step: int = 5) -> dict[str, object]:
    create_taskrun(kube, ns, steps_taskrun(name))
    wait_step(kube, ns, name, step)
    live = current_pod(kube, ns, name)
    assert live is not None
    return live


def test_seed_with_three_retries_succeeds_with_result_9(kube: Client, task_namespace: str) -> None:
    body = taskrun("seed", ["python", str(SEED)], retries=3, backoff={"initialSeconds": 1, "maxSeconds": 2})
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "seed", "Succeeded", "Failed")
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["result"], final["attempt"], final["failures"], final["interruptions"]) == (9, 4, 3, 0)
    assert [a["outcome"] for a in final["attempts"]] == ["Failed", "Failed", "Failed", "Succeeded"]
    assert final["attempts"][0]["exitCode"] == 75
    assert final["checkpoint"]["attempt"] == 4


def test_seed_with_two_retries_fails_naming_the_budget(kube: Client, task_namespace: str) -> None:
    body = taskrun("seed2", ["python", str(SEED)], retries=2, backoff={"initialSeconds": 1, "maxSeconds": 2})
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "seed2", "Succeeded", "Failed")
    assert final["phase"] == "Failed"
    assert (final["attempt"], final["failures"]) == (3, 3)
    assert "used up retries (2)" in final["message"]
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RetriesExhausted")


def test_node_preempt_is_an_interruption_and_the_task_resumes(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    live = run_until_step(kube, task_namespace, "preempt")
    cluster.preempt_node(live["spec"]["nodeName"], grace=3)
    final = assert_resumed_and_succeeded(kube, task_namespace, "preempt")
    assert final["attempts"][0]["reason"] == "TerminationByKubelet"


def test_node_kill_is_an_interruption_and_the_task_resumes(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    live = run_until_step(kube, task_namespace, "killed")
    cluster.kill_node(live["spec"]["nodeName"])
    final = assert_resumed_and_succeeded(kube, task_namespace, "killed")
    assert final["attempts"][0]["reason"] in ("DeletionByTaintManager", "DeletionByPodGC", "NodeGone", "PodDeleted")


def test_kubectl_drain_is_an_interruption(cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None) -> None:
    live = run_until_step(kube, task_namespace, "drained")
    node = live["spec"]["nodeName"]
    try:
        kubectl(
            cluster,
            "drain",
            node,
            "--pod-selector=spotrun.dev/taskrun=drained",
            "--delete-emptydir-data",
            "--timeout=90s",
        )
        final = assert_resumed_and_succeeded(kube, task_namespace, "drained")
    finally:
        kubectl(cluster, "uncordon", node, check=False)
    # voluntary Checkpoint (the default): the PodDisruptionBudget held the eviction back until the
    # task had committed after the notice, then the operator stopped the pod (test_disruption.py).
    assert final["attempts"][0]["reason"] == "Drained"


def test_kubectl_delete_pod_is_an_interruption(cluster: Cluster, kube: Client, task_namespace: str) -> None:
    live = run_until_step(kube, task_namespace, "deleted")
    kubectl(cluster, "-n", task_namespace, "delete", "pod", live["metadata"]["name"], "--wait=false")
    final = assert_resumed_and_succeeded(kube, task_namespace, "deleted")
    assert final["attempts"][0]["reason"] == "PodDeleted"


def test_scheduler_preemption_is_an_interruption(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    node = f"solo-{uuid.uuid4().hex[:5]}"
    cluster.add_node(node, "spot")
    name = "preempted"
    body = steps_taskrun(name, pod={"priorityClassName": f"{task_namespace}-low"})
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "6"}}
    for cls, value in (("low", 10), ("high", 1000)):
        kube.create(
            "/apis/scheduling.k8s.io/v1/priorityclasses",
            {"metadata": {"name": f"{task_namespace}-{cls}"}, "value": value},
        )
    try:
        create_taskrun(kube, task_namespace, body)
        wait_step(kube, task_namespace, name, 3)
        live = current_pod(kube, task_namespace, name)
        assert live is not None
        hog = pod(
            "hog",
            container(script="import time; time.sleep(3)", resources={"requests": {"cpu": "6"}}),
            node=live["spec"]["nodeName"],
            priorityClassName=f"{task_namespace}-high",
        )
        kube.create(f"/api/v1/namespaces/{task_namespace}/pods", hog)
        final = assert_resumed_and_succeeded(kube, task_namespace, name)
        assert final["attempts"][0]["reason"] == "PreemptionByScheduler"
    finally:
        for cls in ("low", "high"):
            kube.delete(f"/apis/scheduling.k8s.io/v1/priorityclasses/{task_namespace}-{cls}")
        with contextlib.suppress(SystemExit):
            cluster.kill_node(node)
        with contextlib.suppress(ApiError):
            kube.delete(f"/api/v1/nodes/{node}")


def test_an_exit_code_failure_is_retried_after_backoff(kube: Client, task_namespace: str) -> None:
    body = steps_taskrun("exits", steps=8, env={"EXIT_AT_STEP": "3:4"}, retries=1, backoff={"initialSeconds": 3})
    create_taskrun(kube, task_namespace, body)
    backoff = wait_phase(kube, task_namespace, "exits", "Backoff", "Succeeded", "Failed")
    assert backoff["phase"] == "Backoff"
    final = wait_phase(kube, task_namespace, "exits", "Succeeded", "Failed")
    assert final["phase"] == "Succeeded"
    assert (final["failures"], final["interruptions"], final["attempt"]) == (1, 0, 2)
    assert final["attempts"][0]["exitCode"] == 4
    assert final["result"]["resumed"] == [0, 3]


def test_a_failure_policy_fail_rule_fails_at_once(kube: Client, task_namespace: str) -> None:
    rules = [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [4]}}]
    body = steps_taskrun("fatal", steps=8, env={"EXIT_AT_STEP": "2:4"}, retries=5, failurePolicy={"rules": rules})
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "fatal", "Succeeded", "Failed")
    assert final["phase"] == "Failed"
    assert (final["attempt"], final["failures"]) == (1, 1)
    assert "failurePolicy" in final["message"]


def test_fallback_to_on_demand_after_interruptions(cluster: Cluster, kube: Client, task_namespace: str) -> None:
    body = steps_taskrun("fallback", capacity={"type": "spot", "fallback": {"afterInterruptions": 1}})
    create_taskrun(kube, task_namespace, body)
    wait_step(kube, task_namespace, "fallback", 3)
    first = current_pod(kube, task_namespace, "fallback")
    assert first is not None
    assert first["metadata"]["labels"]["spotrun.dev/capacity"] == "spot"
    kubectl(cluster, "-n", task_namespace, "delete", "pod", first["metadata"]["name"], "--wait=false")
    final = assert_resumed_and_succeeded(kube, task_namespace, "fallback")
    assert [a["capacity"] for a in final["attempts"]] == ["spot", "on-demand"]
    assert final["attempts"][1]["node"] == "ondemand-1"


def test_suspend_stops_the_pod_and_resume_continues_from_the_checkpoint(kube: Client, task_namespace: str) -> None:
    name = "pausable"
    create_taskrun(kube, task_namespace, steps_taskrun(name))
    wait_step(kube, task_namespace, name, 4)
    path = f"/apis/spotrun.dev/v1alpha1/namespaces/{task_namespace}/taskruns/{name}"
    kube.merge_patch(path, {"spec": {"suspend": True}})
    wait_phase(kube, task_namespace, name, "Suspended")
    wait_for(lambda: stopped(kube, task_namespace, f"{name}-a1"), 30, "the pod to stop")
    kube.merge_patch(path, {"spec": {"suspend": False}})
    final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded"
    assert (final["failures"], final["interruptions"]) == (0, 0)
    assert final["attempts"][0]["outcome"] == "Stopped"
    assert final["result"]["resumed"][1] > 0


def test_active_deadline_fails_the_run(kube: Client, task_namespace: str) -> None:
    create_taskrun(kube, task_namespace, steps_taskrun("slow", steps=100, activeDeadlineSeconds=4))
    final = wait_phase(kube, task_namespace, "slow", "Succeeded", "Failed", timeout=60)
    assert final["phase"] == "Failed"
    assert "activeDeadlineSeconds" in final["message"]
    wait_for(lambda: stopped(kube, task_namespace, "slow-a1"), 30, "the pod to stop")


def test_the_operator_runs_as_its_service_account(operator: Operator, kube: Client) -> None:
    review = kube.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "spec": {
                "user": "system:serviceaccount:spotrun-system:spotrun-operator",
                "resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "default"},
            }
        },
    )
    assert review["status"]["allowed"] is False  # least privilege: no secrets
    assert "token" in operator.kubeconfig.read_text()


def test_operator_killed_at_random_moments_during_repeated_interruptions(
    operator: Operator, kube: Client, task_namespace: str
) -> None:
    name = "chaos"
    steps = 40
    create_taskrun(kube, task_namespace, steps_taskrun(name, steps=steps, step_seconds=0.25, maxInterruptions=100))
    wait_step(kube, task_namespace, name, 1)
    rng = random.Random(20261127)
    injected = 0
    live = LivePods(kube, task_namespace, name).start()
    try:
        for kill in range(20):
            time.sleep(rng.uniform(0.2, 1.5))
            operator.kill()
            pods = kube.get(f"/api/v1/namespaces/{task_namespace}/pods", labelSelector=f"spotrun.dev/taskrun={name}")
            target = [
                p
                for p in pods["items"]
                if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            ]
            if kill % 2 == 0 and target and checkpoint_step(kube, task_namespace, name) < steps - 8:
                kube.delete(f"/api/v1/namespaces/{task_namespace}/pods/{target[0]['metadata']['name']}")
                injected += 1
            time.sleep(rng.uniform(0, 1.0))
            operator.start()
        final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=240)
    finally:
        live.stop()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
    assert final["phase"] == "Succeeded", final.get("message")
    assert max(live.counts) == 1, "two pods of one TaskRun were alive at once"
    assert (final["interruptions"], final["failures"]) == (injected, 0)
    assert final["attempt"] == injected + 1
    assert final["result"]["steps"] == steps
    resumed = final["result"]["resumed"]
    assert resumed == sorted(resumed), f"an attempt went back: {resumed}"


def test_deleting_a_taskrun_removes_its_pods_and_keeps_its_checkpoints(
    cluster: Cluster, kube: Client, task_namespace: str
) -> None:
    name = "short-lived"
    create_taskrun(kube, task_namespace, steps_taskrun(name))
    wait_step(kube, task_namespace, name, 2)
    uri = wait_for(lambda: status_of(kube, task_namespace, name).get("checkpoint", {}).get("uri"), 30, "the uri")
    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{task_namespace}/taskruns/{name}")
    wait_for(
        lambda: (
            not kube.get(f"/api/v1/namespaces/{task_namespace}/pods", labelSelector=f"spotrun.dev/taskrun={name}")[
                "items"
            ]
        ),
        60,
        "the TaskRun's pods to go",
    )
    latest = Checkpoint(open_storage(uri, read_only=True)).latest()
    assert latest is not None
    assert latest.step is not None
    assert latest.step >= 2


def test_deleting_a_namespace_with_running_taskruns_lets_it_go_and_keeps_their_checkpoints(
    kube: Client, task_namespace: str
) -> None:
    # Pods go first when a namespace is deleted: their accounting finalizers must not wait for a pass
    # that can no longer create the next attempt (the namespace stayed Terminating for ever).
    runs = [f"run-{n}" for n in range(3)]
    for name in runs:
        create_taskrun(kube, task_namespace, steps_taskrun(name, steps=400))
    uris = {}
    for name in runs:
        wait_phase(kube, task_namespace, name, "Running")
        wait_step(kube, task_namespace, name, 1)
        uris[name] = status_of(kube, task_namespace, name)["checkpoint"]["uri"]
    kube.delete(f"/api/v1/namespaces/{task_namespace}")

    def gone() -> bool:
        try:
            kube.get(f"/api/v1/namespaces/{task_namespace}")
        except ApiError as err:
            return err.status == 404
        return False

    wait_for(gone, 90, f"namespace {task_namespace} to be deleted")
    for name, uri in uris.items():
        latest = Checkpoint(open_storage(uri, read_only=True)).latest()
        assert latest is not None, f"{name}'s checkpoints were deleted with its namespace"


def test_the_metrics_endpoint_counts_interruptions_and_latency(
    operator: Operator, cluster: Cluster, kube: Client, task_namespace: str
) -> None:
    def scrape() -> str:
        def attempt() -> str | None:
            try:
                url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
                return str(urllib.request.urlopen(url, timeout=10).read().decode())
            except OSError:  # the operator may still be starting
                return None

        return wait_for(attempt, 60, "the operator's metrics endpoint")

    def interruptions_deleted(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('spotrun_interruptions_total{reason="PodDeleted"}'):
                return float(line.split()[-1])
        return 0.0

    before = interruptions_deleted(scrape())
    live = run_until_step(kube, task_namespace, "measured", step=2)
    kubectl(cluster, "-n", task_namespace, "delete", "pod", live["metadata"]["name"], "--wait=false")
    assert_resumed_and_succeeded(kube, task_namespace, "measured")
    text = scrape()
    assert interruptions_deleted(text) == before + 1
    assert 'spotrun_taskruns{phase="Succeeded"}' in text
    count = next(line for line in text.splitlines() if line.startswith("spotrun_replacement_latency_seconds_count"))
    assert float(count.split()[-1]) >= 1


def test_resume_from_another_taskrun_starts_from_its_checkpoint(kube: Client, task_namespace: str) -> None:
    create_taskrun(kube, task_namespace, steps_taskrun("first", steps=6, step_seconds=0.1))
    wait_phase(kube, task_namespace, "first", "Succeeded")
    second = steps_taskrun("second", steps=12, step_seconds=0.1, checkpoint={"resumeFrom": {"taskRun": "first"}})
    create_taskrun(kube, task_namespace, second)
    final = wait_phase(kube, task_namespace, "second", "Succeeded", "Failed")
    assert final["phase"] == "Succeeded"
    assert final["result"]["resumed"] == [0, 6]  # the first run's history, then this run from step 6
    assert final["checkpoint"]["uri"].endswith(f"/{task_namespace}/second/")


DIRECTORY_TASK = """
n=$(cat /ckpt/count 2>/dev/null || echo 0)
echo "start $n" >> /ckpt/starts
while [ "$n" -lt 30 ]; do n=$((n + 1)); echo "$n" > /ckpt/count; sleep 0.3; done
"""


def test_directory_mode_survives_a_preemption(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None, tmp_path: Path
) -> None:
    body = taskrun("shell", ["sh", "-c", DIRECTORY_TASK], checkpoint={"mountPath": "/ckpt", "syncIntervalSeconds": 1})
    create_taskrun(kube, task_namespace, body)
    uri = wait_for(lambda: status_of(kube, task_namespace, "shell").get("checkpoint", {}).get("uri"), 30, "the uri")
    reader = Checkpoint(open_storage(uri, read_only=True))
    (tmp_path / "peek").mkdir()
    (tmp_path / "final").mkdir()

    def synced_count() -> int:
        restored = reader.restore(tmp_path / "peek")
        return int((restored / "count").read_text()) if restored and (restored / "count").exists() else 0

    wait_for(lambda: synced_count() >= 5, 60, "the sidecar to sync a few steps")
    live = current_pod(kube, task_namespace, "shell")
    assert live is not None
    cluster.preempt_node(live["spec"]["nodeName"], grace=3)
    final = wait_phase(kube, task_namespace, "shell", "Succeeded", "Failed", timeout=180)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["interruptions"], final["failures"]) == (1, 0)
    restored = reader.restore(tmp_path / "final")
    assert restored is not None
    assert (restored / "count").read_text().strip() == "30"
    starts = [int(line.split()[1]) for line in (restored / "starts").read_text().splitlines()]
    assert starts[0] == 0
    assert starts[1] >= 5, f"attempt 2 did not resume from the synced directory: {starts}"


def test_deleting_with_the_annotation_also_deletes_the_checkpoints(kube: Client, task_namespace: str) -> None:
    body = steps_taskrun("cleanup", steps=3, step_seconds=0.1)
    body["metadata"]["annotations"] = {"spotrun.dev/delete-checkpoints": "true"}
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "cleanup", "Succeeded")
    storage = open_storage(final["checkpoint"]["uri"], read_only=True)
    assert storage.list("")
    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{task_namespace}/taskruns/cleanup")
    wait_for(lambda: not storage.list(""), 60, "the checkpoints to be deleted")
