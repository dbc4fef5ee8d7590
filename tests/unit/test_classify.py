"""The classifier on real pod objects captured from the local cluster (tests/capture_pod_statuses.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from spotrun_operator.classify import classify

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
        ("killed", "Interrupted", "DeletionByTaintManager", None),
        ("evicted", "Interrupted", "EvictionByEvictionAPI", None),
        ("scheduler_preempted", "Interrupted", "PreemptionByScheduler", None),
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
        ("killed", "Interrupted", "DeletionByTaintManager", None),
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
