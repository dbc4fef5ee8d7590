"""Self-healing on the local cluster: spot with no room, `any`, a task that stops making progress.

An OOM kill needs a container runtime that enforces the memory limit: it is tested on real nodes
(tests/e2e's test_an_oom_killed_attempt_gets_more_memory, run by tests/real_nodes.py).
"""

from __future__ import annotations

import datetime

import pytest

from localcluster.kube import Client
from tests.integration.operator_fixtures import (
    SPOT_NODES,
    create_taskrun,
    steps_taskrun,
    wait_phase,
)

pytestmark = pytest.mark.integration


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _reasons(kube: Client, namespace: str, name: str) -> list[str]:
    items = kube.get(f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


@pytest.fixture
def spot_full(kube: Client, spot_pool: None) -> None:
    """No room on spot: both spot nodes cordoned (spot_pool puts them back afterwards)."""
    for node in SPOT_NODES:
        kube.merge_patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})


def test_a_spot_run_with_no_spot_room_moves_to_on_demand_counted_nowhere(
    kube: Client, task_namespace: str, spot_full: None
) -> None:
    body = steps_taskrun("nospot", steps=4, step_seconds=0.2, capacity={"fallback": {"afterPendingSeconds": 3}})
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "nospot", "Succeeded", "Failed", timeout=90)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["failures"], final["interruptions"], final["attempt"]) == (0, 0, 2)
    first, second = final["attempts"]
    assert (first["outcome"], first["reason"], first["capacity"]) == ("Rescheduled", "NoSpotCapacity", "spot")
    assert first["node"] == "", "it never ran"
    assert (second["capacity"], second["node"]) == ("on-demand", "ondemand-1")
    assert final["capacityFallback"]["reason"] == "NoSpotCapacity"
    # It waited afterPendingSeconds, no less (the scheduler says Unschedulable within a second).
    created = _parse(final["startTime"])
    assert (_parse(first["endTime"]) - created).total_seconds() >= 3 - 1  # endTime in whole seconds
    assert "NoSpotCapacity" in _reasons(kube, task_namespace, "nospot")


def test_any_prefers_spot_and_takes_on_demand_at_once_when_spot_is_full(
    kube: Client, task_namespace: str, spot_pool: None
) -> None:
    create_taskrun(kube, task_namespace, steps_taskrun("anyspot", steps=2, step_seconds=0.2, capacity={"type": "any"}))
    on_spot = wait_phase(kube, task_namespace, "anyspot", "Succeeded", "Failed", timeout=60)
    assert on_spot["phase"] == "Succeeded", on_spot.get("message")
    assert on_spot["attempts"][0]["node"] in SPOT_NODES
    assert on_spot["attempts"][0]["capacity"] == "spot", "for any, the node's capacity is recorded"

    for node in SPOT_NODES:
        kube.merge_patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})
    create_taskrun(kube, task_namespace, steps_taskrun("anyfull", steps=2, step_seconds=0.2, capacity={"type": "any"}))
    full = wait_phase(kube, task_namespace, "anyfull", "Succeeded", "Failed", timeout=60)
    assert full["phase"] == "Succeeded", full.get("message")
    assert (full["attempt"], full["attempts"][0]["node"], full["attempts"][0]["capacity"]) == (
        1,
        "ondemand-1",
        "on-demand",
    )


def test_a_stalled_task_is_stopped_at_its_progress_deadline_and_retried_from_its_checkpoint(
    kube: Client, task_namespace: str, spot_pool: None
) -> None:
    # Commits every 0.5 s for 4 s (longer than the 3 s deadline: the commits move it on), then hangs.
    body = steps_taskrun(
        "stall",
        steps=12,
        step_seconds=0.5,
        env={"STALL_AT_STEP": "8"},
        progressDeadlineSeconds=3,
        retries=1,
        backoff={"initialSeconds": 1},
    )
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "stall", "Succeeded", "Failed", timeout=90)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["failures"], final["interruptions"]) == (1, 0)
    first = final["attempts"][0]
    assert (first["outcome"], first["reason"]) == ("Failed", "ProgressDeadlineExceeded")
    assert final["result"]["resumed"] == [0, 8], "attempt 2 resumed from the stalled attempt's last commit"
    ran = (_parse(first["endTime"]) - _parse(first["startTime"])).total_seconds()
    # 8 steps of 0.5 s, then the 3 s deadline, then SIGTERM ends the sleeping task: no sooner than
    # that (the commits kept it alive past its first 3 s), and not long after.
    assert 4 + 3 - 1 <= ran <= 4 + 3 + 5 + 3, f"attempt 1 ran {ran}s"
    reasons = _reasons(kube, task_namespace, "stall")
    assert "ProgressDeadlineExceeded" in reasons, reasons
    assert first["exitCode"] == 143, "stopped gracefully: SIGTERM (143), not killed at the end of its grace (137)"
