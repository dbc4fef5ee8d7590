"""One attempt's pod as the operator reads it: whether it ended, its outcome once the operator's own
stops (drain, stall, no spot room, suspend) are taken into account, its history entry, what the
task returned, why it does not start. Pure."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from spotrun_operator import accounting, disruption, gang, memory, names
from spotrun_operator.classify import Outcome

Obj = dict[str, Any]
OUTCOME_STOPPED = "Stopped"  # the operator stopped the pod (suspend, deadline): counted nowhere
# Exits of a task that stopped by itself after a notice (RecoverableError, or its own SIGTERM path):
# the notice's interruption, not a failure of the task.
NOTICE_EXITS = (75, 143)
EVICTED_THROUGH_THE_API = "EvictionByEvictionAPI"  # the DisruptionTarget reason of an eviction


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def attempt_of(pod: Obj) -> int:
    try:
        return int(pod["metadata"]["labels"][names.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return 0


def finished(pod: Obj | None) -> bool:
    """Whether a pod has ended: terminal, gone, or deleted before it was scheduled (never to run)."""
    if pod is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return bool(pod["metadata"].get("deletionTimestamp")) and not pod.get("spec", {}).get("nodeName")


@dataclasses.dataclass(frozen=True, eq=False)
class PodView:
    """One of a TaskRun's pods, parsed once at the start of a pass into what the pass reads of it.
    `raw` is the object as the API server sent it (never changed): for the pure modules that read
    more of it (classify, accounting, healing) and for the API edge. Compared by identity, as the
    dict it wraps was: two pods are one only when they are the same object."""

    name: str
    uid: str
    resource_version: str
    attempt: int  # its attempt label; 0 when it has none (not a pod of an attempt)
    rank: int  # its rank in a gang; 0 for a single pod
    node: str  # spec.nodeName; "" until it is scheduled
    phase: str  # status.phase; "" before the kubelet reports one
    deleting: bool  # a deletionTimestamp is set
    finished: bool  # terminal, or deleted before it was scheduled: see finished()
    holds_finalizer: bool  # the operator's accounting finalizer is on it (its outcome not released)
    capacity: str | None  # the capacity label it was created with, None when it has none
    owners: tuple[str, ...]  # the uids of its owner references
    taskrun: str | None  # the TaskRun that controls it (names.taskrun_of)
    raw: Obj

    @classmethod
    def of(cls, pod: Obj) -> PodView:
        meta = pod["metadata"]
        return cls(
            name=meta["name"],
            uid=meta.get("uid", ""),
            resource_version=meta.get("resourceVersion", ""),
            attempt=attempt_of(pod),
            rank=gang.rank_of(pod),
            node=pod.get("spec", {}).get("nodeName") or "",
            phase=pod.get("status", {}).get("phase") or "",
            deleting=bool(meta.get("deletionTimestamp")),
            finished=finished(pod),
            holds_finalizer=names.POD_FINALIZER in (meta.get("finalizers") or []),
            capacity=meta.get("labels", {}).get(names.LABEL_CAPACITY),
            owners=tuple(o.get("uid") for o in meta.get("ownerReferences") or []),
            taskrun=names.taskrun_of(meta),
            raw=pod,
        )

    @property
    def running(self) -> bool:
        """Running, and not being deleted."""
        return self.phase == "Running" and not self.deleting


@dataclasses.dataclass(frozen=True, eq=False)
class Attempt:
    """One attempt of a TaskRun, as a pass found it: its number and its pods by rank (one at rank 0
    for a single pod; a gang's ranks that exist, in rank order)."""

    number: int
    pods: Mapping[int, PodView]

    @property
    def lead(self) -> PodView:
        """The pod that speaks for it: rank 0's, or the first there is."""
        return self.pods.get(0) or next(iter(self.pods.values()))

    @property
    def ended(self) -> bool:
        """Whether every pod of it has ended."""
        return all(pod.finished for pod in self.pods.values())


def result(pod: Obj | None) -> Any:
    """What the task reported: `{"result": ...}` JSON on its termination message."""
    for entry in (pod or {}).get("status", {}).get("containerStatuses") or []:
        message = ((entry.get("state") or {}).get("terminated") or {}).get("message")
        if not message:
            continue
        try:
            body = json.loads(message)
        except ValueError:
            continue
        if isinstance(body, dict) and "result" in body:
            return body["result"]
    return None


# Why a pod does not start, as the kubelet reports it on a container: what a user must fix or wait out.
WAITING_REASONS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreCreateHookError",
    "PostStartHookError",
)


def pending_cause(pod: Obj) -> tuple[str, str] | None:
    """(reason, message) of a pod that does not start: the scheduler's Unschedulable, else a container's."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("reason") or "Unschedulable"), str(condition.get("message") or "")
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in WAITING_REASONS:
            return str(
                waiting["reason"]
            ), f"container {entry.get('name')}: {waiting.get('message') or waiting['reason']}"
    return None


def task_started(pod: Obj | None) -> bool:
    """Whether a container of the pod's task ever ran (running now, or ended after it started): a pod
    the kubelet refused at admission, or that was gone before it started, made no progress."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    states = [s.get("state") or {} for s in statuses]
    return any("running" in st or (st.get("terminated") or {}).get("startedAt") for st in states)


def record(pod: Obj | None, attempt: int, outcome: Outcome | None, kind: str, now: datetime.datetime) -> Obj:
    """An attempt's history entry. endTime is when its pod ended (its last container's finish, else
    its deletion), at most now; startTime when the kubelet started it."""
    status = (pod or {}).get("status", {})
    ended = accounting.ended_at(pod) if pod else None
    entry: Obj = {
        "attempt": attempt,
        "pod": (pod or {}).get("metadata", {}).get("name", ""),
        "node": (pod or {}).get("spec", {}).get("nodeName", ""),
        "capacity": (pod or {}).get("metadata", {}).get("labels", {}).get(names.LABEL_CAPACITY, ""),
        "startTime": status.get("startTime") or "",
        "endTime": iso(min(ended, now) if ended else now),
        "outcome": kind,
        "reason": outcome.reason if outcome else "",
    }
    if outcome and outcome.exit_code is not None:
        entry["exitCode"] = outcome.exit_code
    ran_with = memory.of_pod(pod)
    if ran_with:
        entry["memory"] = ran_with
    notice = disruption.Notice.of_pod(pod)
    if notice is not None:
        entry["notice"] = {"time": notice.time, "reason": notice.reason, "kind": notice.kind}
    return entry


def after_notice(pod: Obj | None, outcome: Outcome) -> Outcome:
    """A task told of a reclaim or drain that then exits by itself (RecoverableError's 75, or 143 from
    its SIGTERM path) stopped because of the notice: an interruption, not a failure. A pod evicted
    through the Eviction API after a drain's notice (a kubectl drain, let through by the budget's
    window once the task had checkpointed) was moved by the drain: Drained, as the operator's own
    stop on a drain taint is."""
    notice = disruption.Notice.of_pod(pod)
    if notice is None:
        return outcome
    if (
        notice.kind == names.NOTICE_DRAIN
        and outcome.kind == names.OUTCOME_INTERRUPTED
        and outcome.reason == EVICTED_THROUGH_THE_API
    ):
        return Outcome(
            names.OUTCOME_INTERRUPTED,
            names.INTERRUPTION_DRAINED,
            exit_code=outcome.exit_code,
            message=f"evicted after a drain's notice: {notice.reason}",
        )
    if outcome.kind != names.OUTCOME_FAILED or outcome.fatal:
        return outcome
    if outcome.exit_code not in NOTICE_EXITS:
        return outcome
    reason = names.INTERRUPTION_DRAINED if notice.kind == names.NOTICE_DRAIN else names.INTERRUPTION_NOTICE
    return Outcome(
        names.OUTCOME_INTERRUPTED, reason, exit_code=outcome.exit_code, message=f"after a notice: {notice.reason}"
    )


def stopped_outcome(pod: Obj | None, outcome: Outcome) -> tuple[str, Outcome]:
    """(kind, outcome) of an attempt, given the reason the operator stopped its pod for, if it did
    (a success within the grace period stays a success): a drain's stop is an interruption, a stall's
    a failure, a move off spot counted nowhere (Rescheduled), any other stop (suspend, a deadline)
    Stopped."""
    annotations = (pod or {}).get("metadata", {}).get("annotations") or {}
    stopped = annotations.get(names.ANNOTATION_STOPPED_BY)
    if not stopped or outcome.kind == names.OUTCOME_SUCCEEDED:
        return outcome.kind, outcome
    if stopped == names.INTERRUPTION_DRAINED:
        return names.OUTCOME_INTERRUPTED, Outcome(names.OUTCOME_INTERRUPTED, names.INTERRUPTION_DRAINED)
    if stopped == names.REASON_PROGRESS_DEADLINE:
        if outcome.kind == names.OUTCOME_INTERRUPTED:
            return outcome.kind, outcome  # its node went (or told of a reclaim) meanwhile: not the task's fault
        return names.OUTCOME_FAILED, Outcome(
            names.OUTCOME_FAILED, stopped, exit_code=outcome.exit_code, message="stopped: no checkpoint in time"
        )
    if stopped == names.REASON_GANG_ENDED and outcome.kind == names.OUTCOME_INTERRUPTED:
        return outcome.kind, outcome  # stopped for a peer, and its own node went meanwhile
    if stopped == names.REASON_NO_SPOT_CAPACITY:
        if (pod or {}).get("spec", {}).get("nodeName"):
            # Bound just as it was removed (the delete was refused, or the operator stopped between
            # the two writes): it ran, so it ends as any pod does.
            return outcome.kind, outcome
        return names.OUTCOME_RESCHEDULED, Outcome(names.OUTCOME_RESCHEDULED, stopped)
    return OUTCOME_STOPPED, outcome
