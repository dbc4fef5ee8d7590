"""Captures real pod objects, one per way a pod ends, from the local cluster for the classifier's tests.

    python -m localcluster up && python -m tests.capture_pod_statuses

writes tests/unit/pod_statuses/NAME.json. Each file is the pod as the API returned it at the
moment a controller would classify it (terminal, or carrying its DisruptionTarget).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import condition, container, get_pod, pod, running_container, wait_for

OUT = Path(__file__).resolve().parent / "unit" / "pod_statuses"
Obj = dict[str, Any]
SLEEP = "import time; time.sleep(600)"
LINGER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(3), sys.exit(143)))\n"
    "time.sleep(600)"
)


def scrub(obj: Obj) -> Obj:
    meta = obj["metadata"]
    for key in ("managedFields", "resourceVersion", "uid", "creationTimestamp"):
        meta.pop(key, None)
    meta["namespace"] = "captured"
    return obj


def terminal(kube: Client, ns: str, name: str) -> Obj:
    return wait_for(
        lambda: (p := get_pod(kube, ns, name)).get("status", {}).get("phase") in ("Succeeded", "Failed") and p,
        120,
        f"{name} to end",
    )


def disrupted(kube: Client, ns: str, name: str) -> Obj:
    def check() -> Obj | None:
        found = get_pod(kube, ns, name)
        target = condition(found, "DisruptionTarget")
        return found if target and target["status"] == "True" else None

    return wait_for(check, 120, f"{name} to carry DisruptionTarget", interval=0.05)


def priority_classes(kube: Client) -> None:
    """cap-low and cap-high, for a scheduler preemption."""
    for cls, value in (("cap-low", 1), ("cap-high", 100000)):
        try:
            kube.create("/apis/scheduling.k8s.io/v1/priorityclasses", {"metadata": {"name": cls}, "value": value})
        except ApiError as err:
            if err.status != 409:
                raise


def main() -> None:
    cluster = Cluster()
    kube = cluster.admin()
    ns = f"capture-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    wait_for(lambda: kube.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 30, "the default ServiceAccount")
    OUT.mkdir(parents=True, exist_ok=True)
    pods = f"/api/v1/namespaces/{ns}/pods"
    scenarios: dict[str, Callable[[], Obj]] = {}

    def simple(name: str, script: str) -> Obj:
        kube.create(pods, pod(name, container(script=script, terminationMessagePolicy="FallbackToLogsOnError")))
        return terminal(kube, ns, name)

    scenarios["succeeded"] = lambda: simple("succeeded", "print('done')")
    scenarios["exit-3"] = lambda: simple("exit-3", "import sys; sys.exit(3)")
    scenarios["exit-75-recoverable"] = lambda: simple("exit-75", "import sys; sys.exit(75)")

    def on_node(name: str, script: str = SLEEP) -> str:
        node = f"cap-{uuid.uuid4().hex[:5]}"
        cluster.add_node(node, "spot")
        kube.create(pods, pod(name, container(script=script), node=node, terminationGracePeriodSeconds=10))
        wait_for(lambda: running_container(kube, ns, name), 60, f"{name} to run")
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
        node = f"cap-{uuid.uuid4().hex[:5]}"
        cluster.add_node(node, "spot")
        body = pod("deleted", container(script=LINGER), node=node, terminationGracePeriodSeconds=10)
        body["metadata"]["finalizers"] = ["spotrun.dev/accounting"]
        kube.create(pods, body)
        wait_for(lambda: running_container(kube, ns, "deleted"), 60, "deleted to run")
        kube.delete(f"{pods}/deleted")
        ended = wait_for(
            lambda: (p := get_pod(kube, ns, "deleted")).get("status", {}).get("phase") == "Failed" and p,
            30,
            "deleted to end",
        )
        kube.merge_patch(f"{pods}/deleted", {"metadata": {"finalizers": None}})
        return ended

    def scheduler_preempted() -> Obj:
        priority_classes(kube)
        node = f"cap-{uuid.uuid4().hex[:5]}"
        cluster.add_node(node, "spot")
        big = {"requests": {"cpu": "6"}}
        kube.create(
            pods, pod("victim", container(script=LINGER, resources=big), node=node, priorityClassName="cap-low")
        )
        wait_for(lambda: running_container(kube, ns, "victim"), 60, "victim to run")
        kube.create(
            pods, pod("preemptor", container(script=SLEEP, resources=big), node=node, priorityClassName="cap-high")
        )
        return disrupted(kube, ns, "victim")

    scenarios.update(
        preempted=preempted, killed=killed, evicted=evicted, deleted=deleted, scheduler_preempted=scheduler_preempted
    )
    only = set(sys.argv[1:])
    for name, scenario in scenarios.items():
        if only and name not in only:
            continue
        captured = scrub(scenario())
        (OUT / f"{name}.json").write_text(json.dumps(captured, indent=1, sort_keys=True) + "\n")
        print(f"captured {name}: phase {captured['status'].get('phase')}")


if __name__ == "__main__":
    main()
