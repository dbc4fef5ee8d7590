"""Two operator processes elect a leader on a Lease: the standby writes nothing, and takes over when
the leader is SIGKILLed, within the Lease's duration and two tries (14 s)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import (
    LivePods,
    Operator,
    create_taskrun,
    current_pod,
    steps_taskrun,
    wait_phase,
    wait_step,
)

LEASE = "/apis/coordination.k8s.io/v1/namespaces/spotrun-system/leases/spotrun-operator"
TAKEOVER_LIMIT = 15.0  # issue 10: a standby takes over within 15 s of the leader's death


def holder(kube: Client) -> str:
    try:
        return str(kube.get(LEASE)["spec"].get("holderIdentity") or "")
    except Exception:  # no Lease yet
        return ""


def leading(replica: Operator) -> float | None:
    """spotrun_leader of this replica, from its own metrics endpoint (None: not serving yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("spotrun_leader{"):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def replicas(
    operator: Operator, kube: Client, task_namespace: str, no_other_operator: None
) -> Iterator[tuple[Operator, Operator]]:
    """Replicas a (leading) and b (standing by) with leader election, while the session's single
    operator is stopped."""

    def replica(n: str) -> Operator:
        log = operator.log.parent / f"replica-{n}.log"
        env = {"SPOTRUN_LEADER_ELECTION": "true", "SPOTRUN_POD_NAME": f"replica-{n}"}
        return Operator(operator.cluster, operator.kubeconfig, log, **env)

    pair = (replica("a"), replica("b"))
    try:
        pair[0].start()
        wait_for(lambda: holder(kube).startswith("replica-a_"), 30, "replica a to take the Lease")
        pair[1].start()
        wait_for(lambda: leading(pair[1]) == 0.0, 30, "replica b to stand by")
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def test_the_standby_takes_over_when_the_leader_is_killed_and_never_two_pods_run(
    replicas: tuple[Operator, Operator], cluster: Cluster, kube: Client, task_namespace: str
) -> None:
    a, b = replicas
    name = "failover"
    create_taskrun(kube, task_namespace, steps_taskrun(name, steps=80, step_seconds=0.25, maxInterruptions=5))
    wait_step(kube, task_namespace, name, 2)
    assert leading(a) == 1.0
    assert leading(b) == 0.0
    assert "Created pod" not in b.log.read_text(), "the standby wrote"

    with LivePods(kube, task_namespace, name) as live:
        old = current_pod(kube, task_namespace, name)
        assert old is not None
        a.kill()  # SIGKILL: the Lease is not given up
        killed = time.monotonic()
        # An interruption while nobody leads: only the new leader can replace the pod.
        kube.delete(f"/api/v1/namespaces/{task_namespace}/pods/{old['metadata']['name']}")
        replacement = wait_for(
            lambda: next(
                (
                    p
                    for p in kube.get(
                        f"/api/v1/namespaces/{task_namespace}/pods", labelSelector=f"spotrun.dev/taskrun={name}"
                    )["items"]
                    if p["metadata"]["labels"].get("spotrun.dev/attempt") == "2"
                ),
                None,
            ),
            60,
            "the replacement pod",
            interval=0.1,
        )
        took = time.monotonic() - killed
        final = wait_phase(kube, task_namespace, name, "Succeeded", "Failed", timeout=180)
    print(f"standby took over and replaced the pod {took:.1f}s after the leader's SIGKILL")
    assert took <= TAKEOVER_LIMIT, f"the standby needed {took:.1f}s"
    assert holder(kube).startswith("replica-b_")
    assert leading(b) == 1.0
    assert replacement["metadata"]["name"] == f"{name}-a2"
    assert final["phase"] == "Succeeded", final.get("message")
    assert (final["attempt"], final["interruptions"], final["failures"]) == (2, 1, 0)
    assert max(live.counts) == 1, "two pods of one TaskRun were alive at once"


def test_a_leader_stopped_with_sigterm_hands_over_at_once(
    replicas: tuple[Operator, Operator], kube: Client, task_namespace: str
) -> None:
    a, _ = replicas
    stopped = time.monotonic()
    a.stop()  # SIGTERM: the passes under way finish, the Lease is given up
    after = holder(kube)
    assert after == "" or after.startswith("replica-b_"), f"replica a kept the Lease after it stopped: {after}"
    wait_for(lambda: holder(kube).startswith("replica-b_"), 15, "replica b to take the Lease", interval=0.1)
    took = time.monotonic() - stopped
    print(f"replica b led {took:.1f}s after replica a's SIGTERM")
    assert took < 7.5  # a's shutdown and b's next try (every 2 s); without the hand-over, 8 s or more
    create_taskrun(kube, task_namespace, steps_taskrun("handed-over", steps=3, step_seconds=0.1))
    assert wait_phase(kube, task_namespace, "handed-over", "Succeeded", "Failed")["phase"] == "Succeeded"
