"""A TaskRun's status: its keys (Status), and its conditions: set one, keeping its
lastTransitionTime while its status does not flip."""

from __future__ import annotations

import datetime
from typing import Any, TypedDict

Obj = dict[str, Any]


class Status(TypedDict, total=False):
    """Every key of a TaskRun's status that the operator writes, in one place. A pass reads the
    status last written through this type; the one it builds is a plain dict (written back at the
    API edge as JSON) with these keys. Counters and markers that must survive an operator restart
    live here (the CRD keeps status as unknown fields: kopf's own progress is beside them)."""

    # What the run is doing
    phase: str  # names.PENDING, RUNNING, BACKOFF, SUSPENDED, SUCCEEDED, FAILED
    message: str
    conditions: list[Obj]  # set_condition
    observedGeneration: int
    startTime: str  # when the first attempt was created (dropped while suspended)
    completionTime: str
    retryAfter: str  # a backoff's due time
    result: Any  # what the successful attempt's task returned
    # Attempts
    attempt: int  # the newest attempt created
    accountedAttempt: int  # the newest attempt counted: every one up to it is in the counters
    attempts: list[Obj]  # the last attempts counted (reconcile.HISTORY), each attempts.record()'s entry
    lastOutcome: Obj  # {attempt, kind, reason, fatal} of the attempt counted last
    lastEndTime: str
    failures: int
    interruptions: int
    interruptionsInARow: int  # interruptions of attempts whose task never started, in a row
    oomKills: int
    podName: str  # the current attempt's pod (a gang's rank 0)
    nodeName: str
    capacity: str  # the current attempt's capacity
    startCheckpoint: Obj  # {attempt, id}: what the current attempt resumes from
    placement: Obj  # {pod, spot, instanceType} seen while the pod ran (its node may be gone later)
    capacityFallback: Obj  # {reason, attempt}: no spot room, the rest of the run is on-demand
    avoidNodes: list[Obj]  # {node, until}: nodes that rejected a pod at admission
    memory: Obj  # the memory the current attempt's pod asked for, under spec.resources.onOOMKilled
    podRefusal: Obj  # {count, code, message, retryAfter}: the API server refused the last create
    # Checkpoints and disruption
    checkpoint: Obj  # {uri, resumeFrom, and the newest checkpoint's id, attempt, step, time, size}
    disruptionBudget: str  # the PodDisruptionBudget's name
    notice: Obj  # {attempt, time, reason, kind}: the notice the current attempt was given
    drain: Obj  # disruption.drain_step's state
    evictionWindow: Obj  # disruption.eviction_window's state
    progressDeadline: str  # when the current attempt must have committed a checkpoint
    progressUnreadable: bool  # a due progress deadline could not be checked (storage unreadable)
    # Accounting (accounting.account)
    lostSeconds: float
    usage: Obj
    cost: Obj


def set_condition(status: Obj, kind: str, value: bool, reason: str, message: str, now: datetime.datetime) -> bool:
    """Sets condition `kind`; returns True when its status flipped (the moment for an Event)."""
    conditions: list[Obj] = status.setdefault("conditions", [])
    wanted = "True" if value else "False"
    for condition in conditions:
        if condition["type"] != kind:
            continue
        flipped = bool(condition["status"] != wanted)
        if flipped:
            condition["lastTransitionTime"] = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition.update(status=wanted, reason=reason, message=message)
        return flipped
    conditions.append(
        {
            "type": kind,
            "status": wanted,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    return True


def changed(old: Obj, new: Obj) -> bool:
    """Whether a status write is needed (kopf's own bookkeeping in status is ignored)."""
    strip = ("kopf",)
    return {k: v for k, v in old.items() if k not in strip} != {k: v for k, v in new.items() if k not in strip}
