"""Uninstall: stop the operator, then take Spotrun's finalizers off TaskRuns and pods; never delete data.

With the operator gone, kopf's finalizer on TaskRuns and the accounting finalizer on pods would
hold every TaskRun, pod, namespace and the CRD in deletion forever. This removes exactly those two
finalizers and nothing else: running pods keep running, TaskRuns stay, checkpoints stay in S3.
The operator is stopped first, because a running one puts its finalizers back on the next event.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from spotrun_operator import names
from spotrun_operator.api import Api

log = logging.getLogger("spotrun.cleanup")


class CleanupError(Exception):
    """The cleanup could not finish in time; the message says what is left."""


@dataclasses.dataclass
class Released:
    """What the cleanup changed: `namespace/name` of each TaskRun and pod it released."""

    taskruns: list[str] = dataclasses.field(default_factory=list)
    pods: list[str] = dataclasses.field(default_factory=list)


def _key(obj: dict[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def stop_operator(
    api: Api,
    namespace: str,
    deployment: str,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Scales the operator's Deployment to 0 and waits until none of its pods is left."""
    selector = api.scale_deployment_to_zero(namespace, deployment)
    if selector is None:
        log.info("Found no Deployment %s/%s: no operator to stop", namespace, deployment)
        return
    deadline = clock() + timeout
    while (left := api.count_pods(namespace, selector)) > 0:
        if clock() > deadline:
            raise CleanupError(f"{left} pod(s) of Deployment {namespace}/{deployment} still exist after {timeout:.0f}s")
        sleep(1.0)
    log.info("Stopped the operator: Deployment %s/%s scaled to 0", namespace, deployment)


def release_all(
    api: Api,
    namespaces: Sequence[str],
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Released:
    """Removes Spotrun's finalizers in `namespaces` (empty: the whole cluster) until none is left.

    Each write carries the resourceVersion that was read; one that conflicts is read again on the
    next round, so a change made meanwhile by someone else is never overwritten.
    """
    scopes: list[str | None] = list(namespaces) or [None]
    released = Released()
    deadline = clock() + timeout
    while True:
        pending = 0
        for scope in scopes:
            for taskrun in api.list_taskruns(scope):
                if names.FINALIZER in (taskrun["metadata"].get("finalizers") or []):
                    pending += 1
                    if api.release_taskrun(taskrun):
                        pending -= 1
                        released.taskruns.append(_key(taskrun))
                        log.info("Removed finalizer %s from TaskRun %s", names.FINALIZER, _key(taskrun))
            for pod in api.list_taskrun_pods(scope):
                if names.POD_FINALIZER in (pod["metadata"].get("finalizers") or []):
                    # release_pod writes with the resourceVersion read and skips a conflict; the
                    # next round lists the pod again and retries.
                    api.release_pod(pod)
                    released.pods.append(_key(pod))
        if pending == 0 and not _pods_left(api, scopes):
            break
        if clock() > deadline:
            raise CleanupError(f"Spotrun's finalizers are still on some objects after {timeout:.0f}s")
        sleep(0.5)
    released.pods = sorted(set(released.pods))
    for pod_key in released.pods:
        log.info("Removed finalizer %s from pod %s", names.POD_FINALIZER, pod_key)
    return released


def _pods_left(api: Api, scopes: Sequence[str | None]) -> bool:
    return any(
        names.POD_FINALIZER in (pod["metadata"].get("finalizers") or [])
        for scope in scopes
        for pod in api.list_taskrun_pods(scope)
    )
