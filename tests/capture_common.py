"""What the two capture scripts share: their namespace, node and pod steps, the waits and how a capture is written."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.helpers import condition, create_pod, get_pod, phase_is, running_container, wait_for

Obj = dict[str, Any]
POD_STATUSES = Path(__file__).resolve().parent / "unit" / "pod_statuses"
SLEEP = "import time; time.sleep(600)"
# Lingers 3 s after SIGTERM, so that a pod's DisruptionTarget can be read before it ends.
LINGER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(3), sys.exit(143)))\n"
    "time.sleep(600)"
)
FINALIZER = "spotrun.dev/accounting"  # the operator's: keeps an ended pod readable until it is counted


def new_namespace(kube: Client) -> str:
    """A fresh namespace, once its default ServiceAccount exists (pods are refused before)."""
    ns = f"capture-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    wait_for(lambda: kube.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 30, "the default ServiceAccount")
    return ns


def new_spot_node(cluster: Cluster) -> str:
    """A spot node of the scenario's own, so that disrupting it leaves the others alone."""
    node = f"cap-{uuid.uuid4().hex[:5]}"
    cluster.add_node(node, "spot")
    return node


def start(kube: Client, ns: str, body: Obj) -> None:
    """Creates pod BODY and waits until all its containers run."""
    name = body["metadata"]["name"]
    create_pod(kube, ns, body)
    wait_for(lambda: running_container(kube, ns, name), 60, f"{name} to run")


def terminal(kube: Client, ns: str, name: str) -> Obj:
    return wait_for(lambda: phase_is(kube, ns, name, "Succeeded", "Failed"), 120, f"{name} to end")


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


def scrub(obj: Obj) -> Obj:
    meta = obj["metadata"]
    for key in ("managedFields", "resourceVersion", "uid", "creationTimestamp"):
        meta.pop(key, None)
    meta["namespace"] = "captured"
    return obj


def capture(scenarios: dict[str, Callable[[], Obj]], out: Path) -> None:
    """Runs the scenarios named on the command line (all of them without names); writes each pod to OUT/NAME.json."""
    out.mkdir(parents=True, exist_ok=True)
    only = set(sys.argv[1:])
    for name, scenario in scenarios.items():
        if only and name not in only:
            continue
        captured = scrub(scenario())
        (out / f"{name}.json").write_text(json.dumps(captured, indent=1, sort_keys=True) + "\n")
        print(f"captured {name}: phase {captured['status'].get('phase')}", flush=True)
