"""spec.disruption.consolidation on the local cluster: an autoscaler's evictions, through the real
Eviction API and retried on 429 as cluster-autoscaler and Karpenter retry them, meet the budget."""

from __future__ import annotations

from typing import Any

import pytest
from spotrun import Checkpoint, open_storage

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import create_taskrun, status, steps_taskrun, wait_phase

pytestmark = pytest.mark.integration
Obj = dict[str, Any]


class Autoscaler:
    """Evicts the TaskRun's current pod once a second, as an autoscaler moving it off its node does,
    counting the evictions the budget refused (HTTP 429)."""

    def __init__(self, kube: Client, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.refused = 0

    def try_once(self) -> str | None:
        """The pod evicted, or None when the budget refused or there is no Ready pod: a finished or
        starting pod is no autoscaler's concern (the budget lets those go: nothing is lost)."""
        pod = status(self.kube, self.namespace, self.name).get("podName")
        if not pod or not ready(self.kube, self.namespace, pod):
            return None
        try:
            self.kube.evict(self.namespace, pod)
        except ApiError as err:
            if err.status == 429:
                self.refused += 1
                return None
            if err.status == 404:
                return None
            raise
        return str(pod)


def ready(kube: Client, namespace: str, pod: str) -> bool:
    try:
        found = kube.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
    except ApiError:
        return False
    conditions = found.get("status", {}).get("conditions") or []
    live = found["status"].get("phase") == "Running" and not found["metadata"].get("deletionTimestamp")
    return live and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def newest(kube: Client, namespace: str, name: str) -> Any:
    uri = status(kube, namespace, name)["checkpoint"]["uri"]
    return Checkpoint(open_storage(uri, read_only=True)).latest()


def test_consolidation_never_refuses_an_autoscalers_eviction_for_the_whole_run(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    # A checkpoint every second: Never keeps the budget closed however fresh they are.
    body = steps_taskrun("held", steps=60, step_seconds=0.2, env={"CHECKPOINT_EVERY": "5"})
    create_taskrun(kube, task_namespace, body)
    wait_phase(kube, task_namespace, "held", "Running", timeout=60)
    autoscaler = Autoscaler(kube, task_namespace, "held")

    def ended() -> Obj | None:
        assert autoscaler.try_once() is None, "an eviction went through under consolidation: Never"
        phase = status(kube, task_namespace, "held").get("phase")
        return status(kube, task_namespace, "held") if phase in ("Succeeded", "Failed") else None

    final = wait_for(ended, 90, "the run to end", interval=1.0)
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"]) == (1, 0)
    assert autoscaler.refused >= 5, autoscaler.refused


def test_consolidation_after_checkpoint_lets_an_eviction_through_right_after_a_checkpoint(
    cluster: Cluster, kube: Client, task_namespace: str, spot_pool: None
) -> None:
    # A checkpoint every 5 s (25 steps of 0.2 s), a window of 5 s after each one the operator sees.
    body = steps_taskrun(
        "moved",
        steps=150,
        step_seconds=0.2,
        env={"CHECKPOINT_EVERY": "25"},
        disruption={"consolidation": "AfterCheckpoint", "evictionWindowSeconds": 5},
    )
    create_taskrun(kube, task_namespace, body)
    wait_phase(kube, task_namespace, "moved", "Running", timeout=60)
    autoscaler = Autoscaler(kube, task_namespace, "moved")
    evicted = wait_for(autoscaler.try_once, 60, "an eviction to go through", interval=1.0)
    at_eviction = newest(kube, task_namespace, "moved")
    assert evicted == "moved-a1"
    assert autoscaler.refused >= 1, "the budget was open before any checkpoint"
    assert at_eviction is not None
    assert at_eviction.attempt == 1
    final = wait_phase(kube, task_namespace, "moved", "Succeeded", "Failed", timeout=120)
    assert final["phase"] == "Succeeded", final.get("message")
    first = final["attempts"][0]
    assert (first["outcome"], first["reason"]) == ("Interrupted", "EvictionByEvictionAPI"), first
    # The next attempt resumed from the checkpoint the window opened after (or one committed in it).
    assert final["result"]["resumed"][1] >= at_eviction.step > 0
    # Lost: the work since that checkpoint, at most the operator's 5 s read interval, the 5 s window
    # and a second of the autoscaler's retry, not the attempt's whole run.
    assert first["lostSeconds"] <= 11.0, first


@pytest.mark.parametrize(
    ("disruption", "message"),
    [
        ({"consolidation": "Sometimes"}, "Unsupported value"),
        (
            {"voluntary": "Allow", "consolidation": "AfterCheckpoint"},
            "consolidation: AfterCheckpoint applies to voluntary: Checkpoint",
        ),
    ],
)
def test_a_consolidation_that_cannot_work_is_refused_at_apply(
    kube: Client, task_namespace: str, disruption: Obj, message: str
) -> None:
    body = steps_taskrun("refused", disruption=disruption)
    with pytest.raises(ApiError) as refused:
        create_taskrun(kube, task_namespace, body)
    assert refused.value.status == 422
    assert message in str(refused.value), str(refused.value)
