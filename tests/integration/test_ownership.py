"""Objects that are not the TaskRun's under its children's names (issue 25, defect 5), against the
real API server of the local cluster.

A user's PodDisruptionBudget or Service that shares the TaskRun's name is never adopted nor deleted.
"""

from __future__ import annotations

from typing import Any

from spotrun_operator.controller import REASON_BUDGET_TAKEN

from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import create_taskrun, get_taskrun, status, taskrun, wait_phase

Obj = dict[str, Any]


def quick(name: str, **spec: Any) -> Obj:
    return taskrun(name, ["python", "-c", "print('done')"], **spec)


def users_budget(name: str) -> Obj:
    """A user's budget, no owner, under the name the TaskRun's would take."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "users-own"}}},
    }


def events(kube: Client, namespace: str, reason: str) -> list[Obj]:
    items: list[Obj] = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e.get("reason") == reason]


def test_a_users_budget_of_the_same_name_is_never_deleted(kube: Client, task_namespace: str) -> None:
    ns = task_namespace
    theirs = kube.create(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", users_budget("train"))
    create_taskrun(kube, ns, quick("train"))
    final = wait_phase(kube, ns, "train", "Succeeded", "Failed", timeout=90)
    assert final["phase"] == "Succeeded", final.get("message")
    assert "disruptionBudget" not in final  # so that nothing ever deletes it
    (warning,) = wait_for(lambda: events(kube, ns, REASON_BUDGET_TAKEN), 30, "the Warning Event")
    assert warning["type"] == "Warning"
    assert "a drain may evict the pod without waiting for a checkpoint" in warning["message"]
    assert "PodDisruptionBudget train exists and is not this TaskRun's" in warning["message"]
    kept = kube.get(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/train")
    assert kept["metadata"]["uid"] == theirs["metadata"]["uid"]
    assert not kept["metadata"].get("ownerReferences")


def test_a_gang_waits_for_a_users_service_of_its_name_to_go(kube: Client, task_namespace: str) -> None:
    ns = task_namespace
    kube.create(
        f"/api/v1/namespaces/{ns}/services",
        {"metadata": {"name": "pair"}, "spec": {"selector": {"app": "users-own"}, "ports": [{"port": 80}]}},
    )
    create_taskrun(kube, ns, quick("pair", replicas=2))

    def told() -> Obj | None:
        current = status(kube, ns, "pair")
        return current if "delete or rename that Service" in (current.get("message") or "") else None

    waiting = wait_for(told, 60, "the TaskRun to say what to do about the Service")
    assert waiting["phase"] == "Pending"
    assert waiting.get("attempt", 0) == 0  # no rank was created without its Service
    kube.delete(f"/api/v1/namespaces/{ns}/services/pair")
    final = wait_phase(kube, ns, "pair", "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
    service = kube.get(f"/api/v1/namespaces/{ns}/services/pair")
    assert service["metadata"]["ownerReferences"][0]["uid"] == get_taskrun(kube, ns, "pair")["metadata"]["uid"]
