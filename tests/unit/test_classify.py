"""The classifier on real pod objects captured from the local cluster (tests/capture_pod_statuses.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from spotrun_operator.classify import classify, rejected_at_admission

CAPTURED = Path(__file__).resolve().parent / "pod_statuses"


def captured(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads((CAPTURED / f"{name}.json").read_text())
    return pod


@pytest.mark.parametrize(
    ("name", "kind", "reason", "exit_code"),
    [
        ("succeeded", "Succeeded", "Completed", 0),
        ("exit-3", "Failed", "Error", 3),
        ("exit-75-recoverable", "Failed", "Error", 75),
        ("preempted", "Interrupted", "TerminationByKubelet", None),
        ("deleted", "Interrupted", "PodDeleted", None),
    ],
)
def test_each_way_a_pod_ends(name: str, kind: str, reason: str, exit_code: int | None) -> None:
    outcome = classify(captured(name))
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.exit_code) == (kind, reason, exit_code)


def test_a_pod_the_operator_stopped_is_not_an_interruption() -> None:
    pod = captured("deleted")
    pod["metadata"].setdefault("annotations", {})["spotrun.dev/stopped-by"] = "Suspended"
    outcome = classify(pod)
    assert outcome is not None
    assert outcome.kind == "Failed"  # the reconcile turns a stopped pod's outcome into Stopped


def test_a_running_pod_has_no_outcome_until_its_node_is_gone() -> None:
    pod = captured("exit-3")
    pod["status"] = {"phase": "Running", "containerStatuses": []}
    assert classify(pod) is None
    outcome = classify(pod, node_exists=False)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", "NodeGone")


def test_a_pod_deleted_before_it_was_scheduled_has_ended_and_one_waiting_has_not() -> None:
    """The API server binds no pod that is being deleted: such a pod never runs, and no kubelet
    will ever finish it."""
    pod = captured("exit-3")
    pod["spec"].pop("nodeName", None)
    pod["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}
    assert classify(pod) is None
    pod["metadata"]["deletionTimestamp"] = "2026-11-27T12:00:00Z"
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", "PodDeleted")
    assert "before it was scheduled" in outcome.message


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("evicted", "EvictionByEvictionAPI"),
        ("scheduler_preempted", "PreemptionByScheduler"),
        ("killed", "DeletionByTaintManager"),
        ("real/killed", "DeletionByTaintManager"),
    ],
)
def test_a_pod_in_its_grace_period_counts_when_it_ends_or_at_once_if_its_node_is_dead(name: str, reason: str) -> None:
    # Marked for deletion, still running: on a live node its kubelet will end it (and a success then
    # wins); on a NotReady or gone node its kubelet is dead and nothing will: count it now.
    pod = captured(name)
    assert pod["status"]["phase"] == "Running"
    assert pod["metadata"].get("deletionTimestamp")
    assert classify(pod) is None
    for dead in ({"node_ready": False}, {"node_exists": False}):
        outcome = classify(pod, **dead)  # type: ignore[arg-type]
        assert outcome is not None
        assert (outcome.kind, outcome.reason) == ("Interrupted", reason)


def test_a_success_in_the_grace_period_wins() -> None:
    # The task saw the SIGTERM, or simply finished, and exited 0 before its grace period ran out.
    pod = captured("evicted")
    pod["status"]["phase"] = "Succeeded"
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Succeeded", "Completed")


def test_a_running_pod_on_a_briefly_not_ready_node_is_left_alone() -> None:
    # Nothing is ending it: its kubelet may be back in a moment (the taint manager waits 300 s).
    pod = captured("exit-3")
    pod["status"] = {"phase": "Running", "containerStatuses": []}
    pod["metadata"].pop("deletionTimestamp", None)
    assert classify(pod, node_ready=False) is None


def test_a_vanished_pod_is_an_interruption() -> None:
    outcome = classify(None)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", "PodDeleted")


@pytest.mark.parametrize(
    ("rule", "kind", "fatal"),
    [
        ({"action": "Fail", "onExitCodes": {"operator": "In", "values": [3]}}, "Failed", True),
        ({"action": "Retry", "onExitCodes": {"operator": "In", "values": [3]}}, "Failed", False),
        ({"action": "Interruption", "onExitCodes": {"operator": "In", "values": [3, 4]}}, "Interrupted", False),
        ({"action": "Fail", "onExitCodes": {"operator": "NotIn", "values": [3]}}, "Failed", False),  # no match
        (
            {"action": "Fail", "onExitCodes": {"containerName": "other", "operator": "In", "values": [3]}},
            "Failed",
            False,
        ),
    ],
)
def test_failure_policy_rules(rule: dict[str, Any], kind: str, fatal: bool) -> None:
    outcome = classify(captured("exit-3"), rules=[rule])
    assert outcome is not None
    assert (outcome.kind, outcome.fatal) == (kind, fatal)
    assert outcome.exit_code == 3


def test_the_first_matching_rule_wins() -> None:
    rules = [
        {"action": "Interruption", "onExitCodes": {"operator": "In", "values": [3]}},
        {"action": "Fail", "onExitCodes": {"operator": "In", "values": [3]}},
    ]
    outcome = classify(captured("exit-3"), rules=rules)
    assert outcome is not None
    assert outcome.kind == "Interrupted"


def test_a_success_wins_over_a_late_disruption() -> None:
    pod = captured("succeeded")
    pod["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"})
    outcome = classify(pod)
    assert outcome is not None
    assert outcome.kind == "Succeeded"


REAL = "real"  # captured from the real kubelet v1.36 with containerd and runc (tests/capture_real_pod_statuses.py)


@pytest.mark.parametrize(
    ("name", "kind", "reason", "exit_code"),
    [
        ("succeeded", "Succeeded", "Completed", 0),
        ("exit-1", "Failed", "Error", 1),
        ("exit-75-recoverable", "Failed", "Error", 75),
        ("oomkilled", "Failed", "OOMKilled", 137),
        ("deleted", "Interrupted", "PodDeleted", None),
        ("evicted", "Interrupted", "EvictionByEvictionAPI", None),
        ("preempted", "Interrupted", "TerminationByKubelet", None),
        ("killed-podgc", "Interrupted", "DeletionByPodGC", None),
        ("scheduler_preempted", "Interrupted", "PreemptionByScheduler", None),
        ("outofcpu", "Interrupted", "OutOfcpu", None),
    ],
)
def test_each_way_a_pod_ends_on_a_real_node(name: str, kind: str, reason: str, exit_code: int | None) -> None:
    outcome = classify(captured(f"{REAL}/{name}"))
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.exit_code) == (kind, reason, exit_code)


@pytest.mark.parametrize("name", ["err-image-never-pull", "create-container-config-error"])
def test_a_pod_whose_container_cannot_start_has_not_ended(name: str) -> None:
    # The kubelet keeps such a pod Pending and retries (the image may be loaded, the Secret created).
    pod = captured(f"{REAL}/{name}")
    assert pod["status"]["phase"] == "Pending"
    assert classify(pod) is None


def test_an_admission_rejection_after_a_container_ran_is_not_mistaken_for_one() -> None:
    pod = captured(f"{REAL}/exit-1")
    pod["status"]["reason"] = "OutOfcpu"  # a reason, but a container ran and exited 1: the task's failure
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.exit_code) == ("Failed", 1)


UPSTREAM = "upstream"  # written to the upstream kubelet's source, see pod_statuses/upstream/README.md


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("outofnvidia-gpu", "OutOfnvidia.com/gpu"),
        ("outofmemory", "OutOfmemory"),
        ("node-affinity", "NodeAffinity"),
        ("taint-toleration", "TaintToleration"),
        ("invalid-node-info", "InvalidNodeInfo"),
        ("unexpected-admission-error", "UnexpectedAdmissionError"),
        ("topology-affinity-error", "TopologyAffinityError"),
        ("rejected-under-disk-pressure", "Evicted"),
    ],
)
def test_a_kubelet_admission_rejection_is_an_interruption(name: str, reason: str) -> None:
    pod = captured(f"{UPSTREAM}/{name}")
    assert "containerStatuses" not in pod["status"]  # rejected before any container had a status
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.exit_code) == ("Interrupted", reason, None)


def test_an_admission_rejection_is_an_interruption_whatever_the_rules() -> None:
    rules = [{"action": "Fail", "onExitCodes": {"operator": "NotIn", "values": [0]}}]
    outcome = classify(captured(f"{UPSTREAM}/outofnvidia-gpu"), rules=rules)
    assert outcome is not None
    assert outcome.kind == "Interrupted"


def test_a_container_lost_with_its_node_is_an_interruption() -> None:
    outcome = classify(captured(f"{UPSTREAM}/container-status-unknown"))
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.exit_code) == ("Interrupted", "ContainerStatusUnknown", None)


def test_a_lost_containers_137_matches_no_exit_code_rule() -> None:
    rules = [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [137]}}]
    outcome = classify(captured(f"{UPSTREAM}/container-status-unknown"), rules=rules)
    assert outcome is not None
    assert (outcome.kind, outcome.fatal) == ("Interrupted", False)


def test_a_real_exit_beside_a_lost_container_is_the_tasks_failure() -> None:
    pod = captured(f"{UPSTREAM}/container-status-unknown")
    pod["status"]["containerStatuses"].append(captured(f"{REAL}/exit-1")["status"]["containerStatuses"][0])
    pod["status"]["containerStatuses"][-1]["name"] = "worker"
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.exit_code) == ("Failed", 1)


@pytest.mark.parametrize(
    "name",
    [
        "evicted-emptydir-size-limit",
        "evicted-container-ephemeral-storage-limit",
        "evicted-pod-ephemeral-storage-limit",
    ],
)
def test_an_eviction_for_the_pods_own_storage_limit_is_a_failure(name: str) -> None:
    pod = captured(f"{UPSTREAM}/{name}")
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.fatal) == ("Failed", "Evicted", False)
    assert outcome.message == pod["status"]["message"]


def test_the_kubelets_kill_of_a_storage_eviction_matches_no_exit_code_rule() -> None:
    rules = [{"action": "Interruption", "onExitCodes": {"operator": "In", "values": [137]}}]
    outcome = classify(captured(f"{UPSTREAM}/evicted-emptydir-size-limit"), rules=rules)
    assert outcome is not None
    assert outcome.kind == "Failed"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("evicted-node-memory-pressure", "TerminationByKubelet"),
        ("evicted-node-disk-pressure-no-condition", "Evicted"),
    ],
)
def test_a_node_pressure_eviction_is_an_interruption(name: str, reason: str) -> None:
    outcome = classify(captured(f"{UPSTREAM}/{name}"))
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", reason)


def test_a_pod_that_failed_before_it_was_deleted_is_a_failure() -> None:
    outcome = classify(captured(f"{UPSTREAM}/failed-then-deleted"))
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.exit_code) == ("Failed", "Error", 1)


def test_a_pod_that_succeeded_before_it_was_deleted_is_a_success() -> None:
    outcome = classify(captured(f"{UPSTREAM}/succeeded-then-deleted"))
    assert outcome is not None
    assert (outcome.kind, outcome.exit_code) == ("Succeeded", 0)


def test_a_pod_that_failed_before_it_was_deleted_still_meets_its_rules() -> None:
    rules = [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [1]}}]
    outcome = classify(captured(f"{UPSTREAM}/failed-then-deleted"), rules=rules)
    assert outcome is not None
    assert (outcome.kind, outcome.fatal) == ("Failed", True)


@pytest.mark.parametrize("name", ["deleted", f"{REAL}/deleted"])
def test_a_pod_killed_by_its_deletion_stays_an_interruption(name: str) -> None:
    # Its container ended after the deletion was asked for (deletionTimestamp - grace): the kill was the deletion's.
    outcome = classify(captured(name))
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", "PodDeleted")


def test_the_main_container_decides_before_the_sync_sidecar() -> None:
    outcome = classify(captured(f"{UPSTREAM}/sidecar-killed-after-exit-3"))
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.exit_code) == ("Failed", "Error", 3)


def test_the_sync_sidecars_exit_matches_no_rule() -> None:
    rules = [{"action": "Fail", "onExitCodes": {"operator": "NotIn", "values": [3]}}]
    outcome = classify(captured(f"{UPSTREAM}/sidecar-killed-after-exit-3"), rules=rules)
    assert outcome is not None
    assert (outcome.kind, outcome.fatal, outcome.exit_code) == ("Failed", False, 3)
    named = [{"action": "Fail", "onExitCodes": {"containerName": "spotrun-sync", "operator": "In", "values": [137]}}]
    outcome = classify(captured(f"{UPSTREAM}/sidecar-killed-after-exit-3"), rules=named)
    assert outcome is not None
    assert (outcome.kind, outcome.fatal) == ("Failed", False)


def test_a_failed_init_container_decides_when_no_main_container_ran() -> None:
    pod = captured(f"{UPSTREAM}/sidecar-killed-after-exit-3")
    status = pod["status"]
    status["initContainerStatuses"] = [captured(f"{REAL}/exit-1")["status"]["containerStatuses"][0]]
    status["initContainerStatuses"][0]["name"] = "spotrun-restore"
    status["containerStatuses"] = [{"name": "main", "state": {"waiting": {"reason": "PodInitializing"}}}]
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.exit_code) == ("Failed", 1)
    assert "spotrun-restore" in outcome.message


@pytest.mark.parametrize("reason", ["NodePorts", "UnknownReason", "UnexpectedPredicateFailureType"])
def test_the_other_node_side_admission_rejections_are_interruptions(reason: str) -> None:
    pod = captured(f"{UPSTREAM}/node-affinity")
    pod["status"]["reason"] = reason
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", reason)


@pytest.mark.parametrize("reason", ["PodOSNotSupported", "InitContainerRestartPolicyForbidden", "SysctlForbidden"])
def test_an_admission_rejection_of_the_pods_own_spec_is_a_failure(reason: str) -> None:
    # These repeat on every node: an interruption would only loop until maxInterruptions.
    pod = captured(f"{UPSTREAM}/node-affinity")
    pod["status"]["reason"] = reason
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Failed", reason)


def test_a_running_pod_its_restarted_kubelet_rejects_is_an_interruption() -> None:
    # After a kubelet restart the GPU device plugin may not have registered again: re-admission fails
    # and the kubelet kills the running container, whose 143 is the kill's, not the task's.
    pod = captured(f"{REAL}/preempted")
    pod["status"]["conditions"] = [c for c in pod["status"]["conditions"] if c["type"] != "DisruptionTarget"]
    pod["status"]["reason"] = "OutOfnvidia.com/gpu"
    pod["status"]["message"] = (
        "Pod was rejected: Node didn't have enough resource: nvidia.com/gpu, requested: 1, used: 0, capacity: 0"
    )
    outcome = classify(pod)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", "OutOfnvidia.com/gpu")


@pytest.mark.parametrize(
    ("memory_policy", "kind", "reason"),
    [
        (True, "Failed", "Evicted"),  # onOOMKilled: the task outgrew its request, as with an OOM kill
        (False, "Interrupted", "TerminationByKubelet"),  # no memory policy: the node's pressure
    ],
)
def test_a_memory_pressure_eviction_of_a_container_over_its_request_follows_the_memory_policy(
    memory_policy: bool, kind: str, reason: str
) -> None:
    pod = captured(f"{UPSTREAM}/evicted-node-memory-pressure")
    outcome = classify(pod, memory_policy=memory_policy)
    assert outcome is not None
    assert (outcome.kind, outcome.reason, outcome.fatal) == (kind, reason, False)
    if memory_policy:
        assert outcome.message.startswith("evicted under memory pressure: container main used more memory")


def test_a_pressure_eviction_for_another_resource_stays_an_interruption_whatever_the_memory_policy() -> None:
    pod = captured(f"{UPSTREAM}/evicted-node-disk-pressure-no-condition")
    outcome = classify(pod, memory_policy=True)
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == ("Interrupted", "Evicted")


@pytest.mark.parametrize(
    ("name", "rejected"),
    [
        (f"{UPSTREAM}/unexpected-admission-error", True),
        (f"{UPSTREAM}/outofnvidia-gpu", True),
        (f"{UPSTREAM}/outofmemory", True),
        (f"{UPSTREAM}/node-affinity", True),
        ("real/outofcpu", True),
        (f"{UPSTREAM}/evicted-node-memory-pressure", False),  # it ran: evicted, not refused
        ("preempted", False),
        ("exit-3", False),
    ],
)
def test_a_node_that_refused_a_pod_at_admission_is_told_apart(name: str, rejected: bool) -> None:
    assert rejected_at_admission(captured(name)) is rejected
