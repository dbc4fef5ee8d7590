"""Captures pod objects as the REAL kubelet and controllers leave them, one per way a pod ends.

    python -m localcluster up --real-nodes && python -m localcluster image
    python -m tests.capture_real_pod_statuses [NAME ...]

writes tests/unit/pod_statuses/real/NAME.json: the pod as the API returned it at the moment a
controller would classify it (terminal, carrying its DisruptionTarget, or stuck with its waiting
reason). The containers run the Spotrun image on kubelet v1.36 with containerd and runc; the
disruptions are the local cluster's (graceful node shutdown through logind, abrupt VM loss).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster.cluster import Cluster
from localcluster.images import PROJECT_IMAGE
from localcluster.kube import Client
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
from tests.integration import helpers
from tests.integration.helpers import create_pod, get_pod, phase_is, wait_for


def container(script: str = "true", **extra: Any) -> Obj:
    """The Spotrun image as the node imported it (never pulled); a failure's message is its log tail."""
    image = {"image": PROJECT_IMAGE, "imagePullPolicy": "Never", "terminationMessagePolicy": "FallbackToLogsOnError"}
    return helpers.container(script=script, **(image | extra))


def pod(name: str, *containers: Obj, node: str | None = None, **spec: Any) -> Obj:
    """With the operator's finalizer, as the operator creates pods, so that an ended pod stays readable."""
    body = helpers.pod(name, *containers, node=node, **({"terminationGracePeriodSeconds": 10} | spec))
    body["metadata"]["finalizers"] = [FINALIZER]
    return body


def waiting(kube: Client, ns: str, name: str, reason: str) -> Obj:
    def check() -> Obj | None:
        found = get_pod(kube, ns, name)
        for entry in found.get("status", {}).get("containerStatuses") or []:
            if (entry.get("state") or {}).get("waiting", {}).get("reason") == reason:
                return found
        return None

    return wait_for(check, 120, f"{name} to wait with {reason}")


def main() -> None:
    cluster = Cluster(Path(os.environ["LOCALCLUSTER_STATE_DIR"]) if "LOCALCLUSTER_STATE_DIR" in os.environ else None)
    if not cluster.running() or not cluster.real_nodes:
        raise SystemExit("capture: start a cluster with real nodes first: python -m localcluster up --real-nodes")
    kube = cluster.admin()
    ns = new_namespace(kube)
    pods = f"/api/v1/namespaces/{ns}/pods"

    def create(body: Obj) -> None:
        create_pod(kube, ns, body)

    def simple(name: str, script: str, **extra: Any) -> Obj:
        create(pod(name, container(script, **extra)))
        return terminal(kube, ns, name)

    def on_node(name: str, script: str = SLEEP) -> str:
        node = new_spot_node(cluster)
        start(kube, ns, pod(name, container(script), node=node))
        return node

    def preempted() -> Obj:
        cluster.preempt_node(on_node("preempted", LINGER), grace=20)
        return get_pod(kube, ns, "preempted")

    def killed() -> Obj:
        cluster.kill_node(on_node("killed"))
        return disrupted(kube, ns, "killed")

    def killed_then_podgc() -> Obj:
        cluster.kill_node(on_node("killed-podgc"))
        return wait_for(lambda: phase_is(kube, ns, "killed-podgc", "Failed"), 240, "PodGC to fail killed-podgc")

    def evicted() -> Obj:
        on_node("evicted", LINGER)
        kube.evict(ns, "evicted")
        return terminal(kube, ns, "evicted")

    def deleted() -> Obj:
        on_node("deleted", LINGER)
        kube.delete(f"{pods}/deleted")
        return terminal(kube, ns, "deleted")

    def scheduler_preempted() -> Obj:
        priority_classes(kube)
        node = new_spot_node(cluster)
        big = {"requests": {"cpu": "1500m"}}  # a real node has the host's 2 CPUs: two do not fit
        start(kube, ns, pod("victim", container(LINGER, resources=big), node=node, priorityClassName="cap-low"))
        create(pod("preemptor", container(SLEEP, resources=big), node=node, priorityClassName="cap-high"))
        return terminal(kube, ns, "victim")

    def out_of_cpu() -> Obj:
        # Bound straight to a node (no scheduler) with more CPU than it has: the kubelet's admission refuses it.
        create(pod("outofcpu", container(SLEEP, resources={"requests": {"cpu": "64"}}), nodeName="ondemand-1"))
        return terminal(kube, ns, "outofcpu")

    def image_never_pulled() -> Obj:
        create(pod("neverpull", container(image="ghcr.io/spotrun/not-imported:1")))
        return waiting(kube, ns, "neverpull", "ErrImageNeverPull")

    def missing_secret() -> Obj:
        env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "AWS_ACCESS_KEY_ID"}}}]
        create(pod("nosecret", container(env=env)))
        return waiting(kube, ns, "nosecret", "CreateContainerConfigError")

    scenarios: dict[str, Callable[[], Obj]] = {
        "succeeded": lambda: simple("succeeded", "print('done')"),
        "exit-1": lambda: simple("exit-1", "import sys; print('Failed at iteration 3'); sys.exit(1)"),
        "exit-75-recoverable": lambda: simple("exit-75", "import sys; sys.exit(75)"),
        "oomkilled": lambda: simple(
            "oomkilled",
            "x = bytearray(512 * 2**20); x[::4096] = b'1' * len(x[::4096]); print(len(x))",
            resources={"limits": {"memory": "64Mi"}},
        ),
        "deleted": deleted,
        "evicted": evicted,
        "preempted": preempted,
        "killed": killed,
        "killed-podgc": killed_then_podgc,
        "scheduler_preempted": scheduler_preempted,
        "outofcpu": out_of_cpu,
        "err-image-never-pull": image_never_pulled,
        "create-container-config-error": missing_secret,
    }
    capture(scenarios, POD_STATUSES / "real")
    for item in kube.get(pods)["items"]:  # let the namespace go
        kube.merge_patch(f"{pods}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})
    kube.delete(f"/api/v1/namespaces/{ns}")


if __name__ == "__main__":
    main()
