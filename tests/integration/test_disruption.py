"""Notices, drains and lost-work accounting on the local cluster, measured against the test's own clock."""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
import time
from typing import Any

import pytest
from spotrun import Checkpoint, open_storage

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import (
    create_taskrun,
    current_pod,
    kubectl,
    status,
    steps_taskrun,
    wait_phase,
    wait_step,
)

pytestmark = pytest.mark.integration
Obj = dict[str, Any]
NOTICE_TAINT = "aws-node-termination-handler/spot-itn"


class Timeline:
    """What the test sees for itself, every 0.2 s: when each pod of the TaskRun was first Running
    and first ended (terminal or gone), and the newest checkpoint of each attempt with when it was
    first seen."""

    def __init__(self, kube: Client, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.running: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.commits: dict[int, tuple[str, datetime.datetime]] = {}  # attempt -> (id, commit time)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        while not self._done.is_set():
            now = time.time()
            with contextlib.suppress(ApiError):
                pods = self.kube.get(path, labelSelector=f"spotrun.dev/taskrun={self.name}")["items"]
                names = set()
                for pod in pods:
                    name = pod["metadata"]["name"]
                    names.add(name)
                    phase = pod["status"].get("phase")
                    if phase == "Running":
                        self.running.setdefault(name, now)
                    if phase in ("Succeeded", "Failed"):
                        self.ended.setdefault(name, now)
                for name in self.running.keys() - names:
                    self.ended.setdefault(name, now)
            uri = (status(self.kube, self.namespace, self.name).get("checkpoint") or {}).get("uri")
            if uri:
                with contextlib.suppress(Exception):
                    for info in Checkpoint(open_storage(uri, read_only=True)).list():
                        known = self.commits.get(info.attempt)
                        if known is None or known[0] < info.id:
                            self.commits[info.attempt] = (info.id, info.time)
            time.sleep(0.2)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def ran(self, pod: str) -> float:
        return self.ended[pod] - self.running[pod]


def notice_annotation(kube: Client, namespace: str, pod: str) -> Obj | None:
    raw = kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")["metadata"].get("annotations", {})
    text = raw.get("spotrun.dev/notice")
    return json.loads(text) if text else None


def newest(kube: Client, namespace: str, name: str) -> Any:
    uri = status(kube, namespace, name)["checkpoint"]["uri"]
    return Checkpoint(open_storage(uri, read_only=True)).latest()


def test_a_notice_reaches_the_task_which_commits_before_the_reclaim(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    # No periodic checkpoint within the test's time (every 1,000 steps of 0.2 s): a commit after the
    # notice can only come from the task's on_preemption callback, run on the notice.
    body = steps_taskrun("noticed", steps=150, step_seconds=0.2, env={"CHECKPOINT_EVERY": "1000", "FINAL_SAVE": "1"})
    created_at = time.time()
    create_taskrun(kube, task_namespace, body)
    with Timeline(kube, task_namespace, "noticed") as seen:
        wait_phase(kube, task_namespace, "noticed", "Running", timeout=60)
        time.sleep(3)
        pod = current_pod(kube, task_namespace, "noticed")
        assert pod is not None
        node, pod_name = pod["spec"]["nodeName"], pod["metadata"]["name"]
        assert newest(kube, task_namespace, "noticed") is None
        noticed_at = time.time()
        cluster.notice_node(node, NOTICE_TAINT, "test-event")
        notice = wait_for(lambda: notice_annotation(kube, task_namespace, pod_name), 10, "the notice on the pod")
        assert (notice["kind"], notice["reason"], notice["seconds"]) == ("Reclaim", NOTICE_TAINT, 120)
        told = time.time() - noticed_at
        saved = wait_for(lambda: newest(kube, task_namespace, "noticed"), 5, "the task's commit on the notice")
        committed = time.time() - noticed_at
        assert saved.attempt == 1
        time.sleep(max(0.0, noticed_at + 20 - time.time()))
        preempted_at = time.time()
        # The final checkpoint came before SIGTERM: it is in storage already, as the task kept running.
        assert saved.time.timestamp() < preempted_at
        assert current_pod(kube, task_namespace, "noticed")["metadata"]["name"] == pod_name  # type: ignore[index]
        cluster.preempt_node(node, grace=3)
        final = wait_phase(kube, task_namespace, "noticed", "Succeeded", "Failed", timeout=180)
        lifetime = time.time() - created_at
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["interruptions"], final["failures"], final["attempt"]) == (1, 0, 2)
    first = final["attempts"][0]
    assert first["notice"]["reason"] == NOTICE_TAINT
    assert first["reason"] == "TerminationByKubelet"
    assert final["result"]["resumed"][1] >= saved.step
    # Lost work: from attempt 1's last commit (its SIGTERM callback commits once more) to its end,
    # as the test saw it, to within the kubelet's whole-second times and the 0.2 s polling.
    _, last_time = seen.commits[1]
    expected = seen.ended[pod_name] - last_time.timestamp()
    assert abs(first["lostSeconds"] - expected) <= 2.5, (first, expected)
    assert first["lostSeconds"] <= 3.0  # without the notice and SIGTERM commits: all 23 s of attempt 1
    assert final["lostSeconds"] == first["lostSeconds"]
    # Usage: both attempts ran on spot, from the kubelet's start of each pod (before its container
    # runs) to its end: at least as long as the test saw them Running, at most the TaskRun's life,
    # give or take the kubelet's whole-second times (a second at each end of each of the 2 pods).
    running = sum(seen.ran(p) for p in seen.running if p in seen.ended)
    assert running - 2.0 <= final["usage"]["spotSeconds"] <= lifetime + 2.0, (final["usage"], running, lifetime)
    assert final["usage"]["onDemandSeconds"] == 0
    print(
        f"notice on the pod {told:.2f}s after the taint, committed {committed:.2f}s after; lost {first['lostSeconds']}s"
    )


def drain(cluster: Cluster, node: str, selector: str, timeout: str = "90s") -> float:
    started = time.time()
    kubectl(cluster, "drain", node, f"--pod-selector={selector}", "--delete-emptydir-data", f"--timeout={timeout}")
    return time.time() - started


def test_a_kubectl_drain_completes_right_after_the_checkpoint_taken_on_its_notice(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    # No periodic checkpoint after step 10: only the task's own commit on the notice can be fresh.
    body = steps_taskrun("drain-cp", steps=120, step_seconds=0.2, env={"CHECKPOINT_EVERY": "10000", "FINAL_SAVE": "1"})
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    create_taskrun(kube, task_namespace, body)
    wait_phase(kube, task_namespace, "drain-cp", "Running", timeout=60)
    assert status(kube, task_namespace, "drain-cp")["disruptionBudget"] == "drain-cp"
    budget = kube.get(f"/apis/policy/v1/namespaces/{task_namespace}/poddisruptionbudgets/drain-cp")
    assert budget["spec"]["minAvailable"] == 1
    time.sleep(4)
    pod = current_pod(kube, task_namespace, "drain-cp")
    assert pod is not None
    node, pod_name = pod["spec"]["nodeName"], pod["metadata"]["name"]
    with Timeline(kube, task_namespace, "drain-cp") as seen:
        try:
            took = drain(cluster, node, "spotrun.dev/taskrun=drain-cp")
        finally:
            kubectl(cluster, "uncordon", node, check=False)
        final = wait_phase(kube, task_namespace, "drain-cp", "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
    first = final["attempts"][0]
    # kubectl drain is a cordon plus evictions: the cordon's notice, then the eviction let through by
    # the budget's window once the checkpoint taken on the notice was committed, not the operator: an
    # eviction after a drain's notice is Drained (SPEC: drains move the task, reason Drained).
    assert (first["outcome"], first["reason"]) == ("Interrupted", "Drained"), first
    assert (first["notice"]["kind"], first["notice"]["reason"]) == ("Drain", "Cordoned")
    events = kube.get(f"/api/v1/namespaces/{task_namespace}/events")["items"]
    assert "EvictionWindowOpened" in [e["reason"] for e in events], [(e["reason"], e["message"]) for e in events]
    stopped = [e["message"] for e in events if "for the drain" in e.get("message", "")]
    assert not stopped, f"the operator stopped the pod on a plain cordon: {stopped}"
    assert (final["interruptions"], final["failures"]) == (1, 0)
    resumed = final["result"]["resumed"][1]
    assert resumed > 0, "attempt 2 did not resume from the checkpoint taken on the notice"
    assert first["lostSeconds"] <= 4.0, first  # kubectl drain retries a refused eviction every 5 s
    expected = seen.ended[pod_name] - seen.commits[1][1].timestamp()
    assert abs(first["lostSeconds"] - expected) <= 2.5, (first, expected)
    assert took < 30, f"the drain took {took:.1f}s"
    assert final["attempts"][1].get("outcome") == "Succeeded"
    assert "disruptionBudget" not in final  # the budget goes with the run
    wait_for(
        lambda: not kube.get(f"/apis/policy/v1/namespaces/{task_namespace}/poddisruptionbudgets")["items"],
        30,
        "the budget to be deleted",
    )


def test_a_drain_without_a_fresh_checkpoint_goes_ahead_after_the_timeout(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    body = steps_taskrun(
        "drain-timeout",
        steps=120,
        step_seconds=0.2,
        env={"CHECKPOINT_EVERY": "10000"},
        disruption={"checkpointTimeoutSeconds": 5},
    )
    create_taskrun(kube, task_namespace, body)
    wait_phase(kube, task_namespace, "drain-timeout", "Running", timeout=60)
    time.sleep(2)
    pod = current_pod(kube, task_namespace, "drain-timeout")
    assert pod is not None
    node = pod["spec"]["nodeName"]
    try:
        took = drain(cluster, node, "spotrun.dev/taskrun=drain-timeout")
    finally:
        kubectl(cluster, "uncordon", node, check=False)
    assert 4 <= took < 30, f"the drain took {took:.1f}s"
    first = wait_for(
        lambda: (status(kube, task_namespace, "drain-timeout").get("attempts") or [None])[0], 60, "attempt 1 counted"
    )
    assert (first["outcome"], first["reason"]) == ("Interrupted", "Drained")
    # Nothing was committed: the whole attempt is lost.
    assert first["lostSeconds"] >= 6, first


def budget_floor(kube: Client, namespace: str, name: str) -> int:
    return int(kube.get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}")["spec"]["minAvailable"])


def evict(kube: Client, namespace: str, pod: str) -> bool:
    """One eviction as kubectl drain or an autoscaler asks it: True when let through, False on 429."""
    try:
        kube.evict(namespace, pod)
    except ApiError as err:
        if err.status == 429:
            return False
        raise
    return True


def test_a_cordon_alone_keeps_the_pod_running_and_an_uncordon_withdraws_the_notice(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    body = steps_taskrun(
        "cordoned",
        steps=150,
        step_seconds=0.2,
        env={"CHECKPOINT_EVERY": "10000", "FINAL_SAVE": "1"},
        disruption={"evictionWindowSeconds": 5},
    )
    create_taskrun(kube, task_namespace, body)
    wait_phase(kube, task_namespace, "cordoned", "Running", timeout=60)
    time.sleep(3)  # as above: the task has registered its on_preemption callback
    pod = current_pod(kube, task_namespace, "cordoned")
    assert pod is not None
    node, pod_name = pod["spec"]["nodeName"], pod["metadata"]["name"]
    try:
        kubectl(cluster, "cordon", node)
        notice = wait_for(lambda: notice_annotation(kube, task_namespace, pod_name), 10, "the cordon's notice")
        assert (notice["kind"], notice["reason"]) == ("Drain", "Cordoned")
        # The task commits on the notice: the budget opens for the window, then closes; nobody evicts.
        wait_for(lambda: budget_floor(kube, task_namespace, "cordoned") == 0, 20, "the budget to open")
        wait_for(lambda: budget_floor(kube, task_namespace, "cordoned") == 1, 20, "the budget to close")
        assert not evict(kube, task_namespace, pod_name), "the window closed: an eviction is refused again"
        still = current_pod(kube, task_namespace, "cordoned")
        assert still is not None
        assert still["metadata"]["name"] == pod_name
        assert still["status"]["phase"] == "Running"
        assert not still["metadata"].get("deletionTimestamp")
    finally:
        kubectl(cluster, "uncordon", node, check=False)
    wait_for(lambda: notice_annotation(kube, task_namespace, pod_name) is None, 10, "the notice to be withdrawn")
    wait_for(lambda: "notice" not in status(kube, task_namespace, "cordoned"), 10, "status.notice to go")
    final = wait_phase(kube, task_namespace, "cordoned", "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (1, 0, 0)


def test_a_drain_with_allow_evicts_at_once_and_loses_back_to_the_last_checkpoint(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    body = steps_taskrun(
        "drain-allow",
        steps=120,
        step_seconds=0.2,
        env={"CHECKPOINT_EVERY": "15"},
        disruption={"voluntary": "Allow"},
    )
    create_taskrun(kube, task_namespace, body)
    wait_step(kube, task_namespace, "drain-allow", 15, timeout=60)
    assert "disruptionBudget" not in status(kube, task_namespace, "drain-allow")
    time.sleep(2)
    pod = current_pod(kube, task_namespace, "drain-allow")
    assert pod is not None
    node, pod_name = pod["spec"]["nodeName"], pod["metadata"]["name"]
    with Timeline(kube, task_namespace, "drain-allow") as seen:
        try:
            drain(cluster, node, "spotrun.dev/taskrun=drain-allow")
        finally:
            kubectl(cluster, "uncordon", node, check=False)
        final = wait_phase(kube, task_namespace, "drain-allow", "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
    first = final["attempts"][0]
    assert (first["reason"], "notice" in first) == ("EvictionByEvictionAPI", False)
    expected = seen.ended[pod_name] - seen.commits[1][1].timestamp()
    assert first["lostSeconds"] >= 1.0, first  # 2 s past step 15, no commit until step 30
    assert abs(first["lostSeconds"] - expected) <= 2.5, (first, expected)
