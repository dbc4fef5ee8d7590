"""A TaskRun with a name longer than a label value (64-253 characters) runs like any other."""

from __future__ import annotations

import pytest
from spotrun_operator import names

from localcluster.kube import Client
from tests.integration.operator_fixtures import (
    SEED,
    create_taskrun,
    current_pod,
    steps_taskrun,
    taskrun,
    wait_phase,
    wait_step,
)

pytestmark = pytest.mark.integration


def long_name(tag: str, length: int = 200) -> str:
    return f"{tag}-" + "x" * (length - len(tag) - 1)


def test_a_taskrun_with_a_200_character_name_retries_and_succeeds(kube: Client, task_namespace: str) -> None:
    name = long_name("seed")
    body = taskrun(name, ["python", str(SEED)], retries=3, backoff={"initialSeconds": 1, "maxSeconds": 2})
    create_taskrun(kube, task_namespace, body)
    final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=180)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["result"], final["attempt"], final["failures"], final["interruptions"]) == (9, 4, 3, 0)
    assert [a["pod"] for a in final["attempts"]] == [names.pod_name(name, n) for n in range(1, 5)]


def test_the_pod_of_a_long_named_taskrun_keeps_its_accounting_finalizer(kube: Client, task_namespace: str) -> None:
    # Pod events must reconcile the TaskRun itself, not a TaskRun named by the shortened label value.
    name = long_name("steps")
    create_taskrun(kube, task_namespace, steps_taskrun(name, steps=20, step_seconds=0.3))
    wait_step(kube, task_namespace, name, 3)
    live = current_pod(kube, task_namespace, name)
    assert live is not None
    assert live["metadata"]["labels"][names.LABEL_TASKRUN] == names.taskrun_label(name)
    assert names.POD_FINALIZER in live["metadata"].get("finalizers", [])
    final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
