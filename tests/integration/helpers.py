"""Small builders and waits shared by the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from localcluster.kube import ApiError, Client

T = TypeVar("T")
Obj = dict[str, Any]

SPOT_TOLERATION = {"key": "spotrun.dev/capacity", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Polls `check` until it returns something truthy; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (ApiError, KeyError, IndexError) as err:
            last_error = err
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def container(name: str = "main", script: str = "true", **extra: Any) -> Obj:
    return {"name": name, "image": "python:3.11-slim", "command": ["python", "-c", script], **extra}


def pod(name: str, *containers: Obj, node: str | None = None, restart: str = "Never", **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "containers": list(containers), **spec},
    }
    if node:
        body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        body["spec"]["tolerations"] = [SPOT_TOLERATION]
    return body


def create_pod(kube: Client, namespace: str, body: Obj) -> Obj:
    return kube.create(f"/api/v1/namespaces/{namespace}/pods", body)


def get_pod(kube: Client, namespace: str, name: str) -> Obj:
    return kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")


def pod_gone(kube: Client, namespace: str, name: str) -> bool:
    try:
        get_pod(kube, namespace, name)
    except ApiError as err:
        if err.status == 404:
            return True
        raise
    return False


def phase_is(kube: Client, namespace: str, name: str, *phases: str) -> Obj | None:
    pod = get_pod(kube, namespace, name)
    return pod if pod.get("status", {}).get("phase") in phases else None


def condition(pod: Obj, kind: str) -> Obj | None:
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def running_container(kube: Client, namespace: str, name: str) -> Obj | None:
    pod = get_pod(kube, namespace, name)
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return pod if statuses and all("running" in s["state"] for s in statuses) else None
