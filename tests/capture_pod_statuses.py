"""Captures real pod objects, one per way a pod ends, from the local cluster for the classifier's tests.

    python -m localcluster up && python -m tests.capture_pod_statuses

writes tests/unit/pod_statuses/NAME.json. Each file is the pod as the API returned it at the
moment a controller would classify it (terminal, or carrying its DisruptionTarget).
"""

from __future__ import annotations

from collections.abc import Callable

from localcluster.cluster import Cluster
from tests.capture_common import (
    FINALIZER,
    LINGER,
    POD_STATUSES,
    SLEEP,
    Obj,
    capture,
    disrupted,
    new_namespace,
    new_spot_node,
    priority_classes,
    start,
    terminal,
)
from tests.integration.helpers import container, create_pod, get_pod, phase_is, pod, wait_for


def main() -> None:
    cluster = Cluster()
    kube = cluster.admin()
    ns = new_namespace(kube)
    pods = f"/api/v1/namespaces/{ns}/pods"
    scenarios: dict[str, Callable[[], Obj]] = {}

    def simple(name: str, script: str) -> Obj:
        create_pod(kube, ns, pod(name, container(script=script, terminationMessagePolicy="FallbackToLogsOnError")))
        return terminal(kube, ns, name)

    scenarios["succeeded"] = lambda: simple("succeeded", "print('done')")
    scenarios["exit-3"] = lambda: simple("exit-3", "import sys; sys.exit(3)")
    scenarios["exit-75-recoverable"] = lambda: simple("exit-75", "import sys; sys.exit(75)")

    def on_node(name: str, script: str = SLEEP) -> str:
        node = new_spot_node(cluster)
        start(kube, ns, pod(name, container(script=script), node=node, terminationGracePeriodSeconds=10))
        return node

    def preempted() -> Obj:
        cluster.preempt_node(on_node("preempted"), grace=2)
        return get_pod(kube, ns, "preempted")

    def killed() -> Obj:
        node = on_node("killed")
        cluster.kill_node(node)
        return disrupted(kube, ns, "killed")

    def evicted() -> Obj:
        on_node("evicted", LINGER)
        kube.evict(ns, "evicted")
        return disrupted(kube, ns, "evicted")

    def deleted() -> Obj:
        # With the operator's finalizer, as the operator creates pods, the ended pod stays readable.
        body = pod("deleted", container(script=LINGER), node=new_spot_node(cluster), terminationGracePeriodSeconds=10)
        body["metadata"]["finalizers"] = [FINALIZER]
        start(kube, ns, body)
        kube.delete(f"{pods}/deleted")
        ended = wait_for(lambda: phase_is(kube, ns, "deleted", "Failed"), 30, "deleted to end")
        kube.merge_patch(f"{pods}/deleted", {"metadata": {"finalizers": None}})
        return ended

    def scheduler_preempted() -> Obj:
        priority_classes(kube)
        node = new_spot_node(cluster)
        big = {"requests": {"cpu": "6"}}
        start(kube, ns, pod("victim", container(script=LINGER, resources=big), node=node, priorityClassName="cap-low"))
        create_pod(
            kube, ns, pod("preemptor", container(script=SLEEP, resources=big), node=node, priorityClassName="cap-high")
        )
        return disrupted(kube, ns, "victim")

    scenarios.update(
        preempted=preempted, killed=killed, evicted=evicted, deleted=deleted, scheduler_preempted=scheduler_preempted
    )
    capture(scenarios, POD_STATUSES)


if __name__ == "__main__":
    main()
