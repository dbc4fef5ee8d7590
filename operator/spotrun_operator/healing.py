"""Self-healing of a live attempt: spot capacity that is not there, and a task that stopped committing. Pure.

No spot capacity: a spot pod the scheduler has found no node for (PodScheduled False, reason
Unschedulable) for `capacity.fallback.afterPendingSeconds` is removed and the attempt starts again
on on-demand capacity (outcome Rescheduled: neither a failure nor an interruption).

Stalls: `progressDeadlineSeconds` bounds the time from the attempt's start, or from its newest
commit, to the next commit. The operator learns of commits from the checkpoint manifests, read
only when a deadline falls due (one read per TaskRun per deadline while storage answers, every
STORAGE_RETRY_SECONDS while it does not): a deadline that has passed is first checked against
storage, and a newer commit moves it on. The SDK does not report
progress to the API: a pod would need RBAC to write its own status, and a tenant's pod with
write access to TaskRuns could lie about it.
"""

from __future__ import annotations

import datetime
from typing import Any

from spotrun_operator import names
from spotrun_operator.accounting import parse_time

Obj = dict[str, Any]
UNSCHEDULABLE = "Unschedulable"
# A deadline whose check found storage unreadable is checked again this soon. The pod is left
# running meanwhile: storage that fails says nothing about the task.
STORAGE_RETRY_SECONDS = 15.0


def unschedulable_since(pod: Obj) -> datetime.datetime | None:
    """When the scheduler first found no node for a pod that is still not placed, else None."""
    if (pod.get("spec") or {}).get("nodeName") or pod["metadata"].get("deletionTimestamp"):
        return None
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            if condition.get("reason") != UNSCHEDULABLE:
                return None
            since = condition.get("lastTransitionTime") or pod["metadata"].get("creationTimestamp")
            return parse_time(since)
    return None


def spot_fallback(spec: Obj, pod: Obj, now: datetime.datetime) -> tuple[bool, float | None]:
    """(whether the pod should give way to an on-demand attempt now, else seconds until it should,
    or None when it never will): a spot attempt's pod unschedulable for afterPendingSeconds."""
    capacity = spec.get("capacity") or {}
    after = (capacity.get("fallback") or {}).get("afterPendingSeconds")
    labels = pod["metadata"].get("labels") or {}
    if after is None or labels.get(names.LABEL_CAPACITY) != names.CAPACITY_SPOT:
        return False, None
    since = unschedulable_since(pod)
    if since is None:
        return False, None
    left = (since + datetime.timedelta(seconds=int(after)) - now).total_seconds()
    return (True, None) if left <= 0 else (False, left)


def task_started(pod: Obj) -> datetime.datetime | None:
    """When the attempt's task began: its first container's start (after image pulls and init
    containers, which are not the task's time), else the pod's start."""
    status = pod.get("status") or {}
    starts = [
        parse_time(((entry.get("state") or {}).get("running") or {}).get("startedAt"))
        or parse_time(((entry.get("state") or {}).get("terminated") or {}).get("startedAt"))
        for entry in status.get("containerStatuses") or []
    ]
    known = [s for s in starts if s is not None]
    return min(known) if known else None


def progress_deadline(
    spec: Obj, pod: Obj, attempt: int, newest: Obj | None, now: datetime.datetime
) -> datetime.datetime | None:
    """When attempt `attempt` (its pod Running) will have gone progressDeadlineSeconds without a
    commit: from the later of its task's start and `newest` ({attempt, time}: the newest commit
    known, counted only when this attempt made it). A commit time ahead of `now` (a node's clock)
    counts as now. None without a deadline or before the task started."""
    seconds = spec.get("progressDeadlineSeconds")
    if seconds is None or (pod.get("status") or {}).get("phase") != "Running":
        return None
    started = task_started(pod)
    if started is None:
        return None
    since = started
    committed = parse_time((newest or {}).get("time"))
    if committed is not None and int((newest or {}).get("attempt", 0)) == attempt:
        since = max(since, min(committed, now))
    return since + datetime.timedelta(seconds=int(seconds))
