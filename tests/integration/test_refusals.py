"""The operator on the local cluster when the API server refuses its pods, and when a TaskRun is re-created."""

from __future__ import annotations

import time

import pytest

from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import (
    create_taskrun,
    current_pod,
    get_taskrun,
    steps_taskrun,
    taskrun_gone,
    wait_phase,
    wait_step,
)
from tests.integration.operator_fixtures import (
    status as status_of,
)

pytestmark = pytest.mark.integration


def _ready(kube: Client, ns: str, name: str) -> dict[str, str]:
    return next((c for c in status_of(kube, ns, name).get("conditions") or [] if c["type"] == "Ready"), {})


def _events(kube: Client, ns: str, name: str, reason: str) -> list[dict[str, object]]:
    items = kube.get(f"/api/v1/namespaces/{ns}/events")["items"]
    return [e for e in items if e["involvedObject"].get("name") == name and e.get("reason") == reason]


def test_a_pod_over_the_quota_is_a_condition_and_an_event_and_runs_once_the_quota_allows(
    kube: Client, task_namespace: str
) -> None:
    quota = f"/api/v1/namespaces/{task_namespace}/resourcequotas"
    kube.create(quota, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}})
    create_taskrun(kube, task_namespace, steps_taskrun("quota", steps=3, step_seconds=0.1))
    refused = wait_for(
        lambda: (c := _ready(kube, task_namespace, "quota")).get("reason") == "PodRefused" and c,
        60,
        "the Ready condition to say PodRefused",
    )
    assert "exceeded quota" in refused["message"]
    st = status_of(kube, task_namespace, "quota")
    assert (st["phase"], st["attempt"], st["interruptions"], st["failures"]) == ("Pending", 0, 0, 0)
    wait_for(lambda: _events(kube, task_namespace, "quota", "PodRefused"), 30, "a PodRefused Event")
    # Retried with backoff, not every pass: a few seconds bring two or three refusals, not dozens.
    time.sleep(6)
    assert status_of(kube, task_namespace, "quota")["podRefusal"]["count"] <= 4
    kube.delete(f"{quota}/no-pods")
    final = wait_phase(kube, task_namespace, "quota", "Succeeded", "Failed", timeout=180)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (1, 0, 0)
    assert "podRefusal" not in final


def test_a_pod_the_api_server_finds_invalid_fails_the_run_with_its_message(kube: Client, task_namespace: str) -> None:
    body = steps_taskrun("invalid", steps=3)
    body["spec"]["template"]["spec"]["containers"][0]["name"] = "Task_1"  # not a DNS label
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, "invalid", "Succeeded", "Failed", timeout=60)
    assert final["phase"] == "Failed"
    assert "is invalid" in final["message"]
    assert "Task_1" in final["message"]
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidPodTemplate"
    assert final["attempt"] == 0


def test_a_taskrun_created_again_under_its_name_waits_for_the_old_pods_and_never_adopts_them(
    kube: Client, task_namespace: str
) -> None:
    ns = task_namespace
    create_taskrun(
        kube, ns, steps_taskrun("again", steps=200, step_seconds=0.2, pod={"terminationGracePeriodSeconds": 8})
    )
    wait_step(kube, ns, "again", 2)
    old = current_pod(kube, ns, "again")
    assert old is not None
    old_uid = old["metadata"]["uid"]
    kube.delete(f"/apis/spotrun.dev/v1alpha1/namespaces/{ns}/taskruns/again")
    wait_for(lambda: taskrun_gone(kube, ns, "again"), 60, "the first TaskRun to be deleted")
    create_taskrun(kube, ns, steps_taskrun("again", steps=3, step_seconds=0.1))
    new_uid = get_taskrun(kube, ns, "again")["metadata"]["uid"]
    # Until the old pod is gone, the new run has no pod of its own and does not count the old one. The
    # new run's first pod takes the same name (again-a1): the old one is told apart by its UID.
    deadline = time.monotonic() + 90
    while True:
        pods = kube.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        others = [p for p in pods if p["metadata"]["uid"] == old_uid]
        if not others:
            break
        mine = [p for p in pods if any(o["uid"] == new_uid for o in p["metadata"].get("ownerReferences") or [])]
        assert not mine, "the new run's pod exists beside the old run's"
        assert status_of(kube, ns, "again").get("interruptions", 0) == 0
        assert time.monotonic() < deadline, f"the old pod is not gone: {others[0]['metadata']}"
        time.sleep(0.2)
    final = wait_phase(kube, ns, "again", "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (1, 0, 0)
