"""Classifies how a TaskRun's pod ended: Succeeded, Failed (with its failurePolicy action) or Interrupted."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from spotrun_operator import names

Obj = dict[str, Any]

# Pod status reasons that mean the node or the kubelet took the pod away.
INTERRUPTION_REASONS = ("Terminated", "Shutdown", "NodeShutdown", "Evicted", "NodeLost", "UnexpectedAdmissionError")
# The kubelet's admission refused the pod before any container ran (pkg/kubelet/lifecycle): the
# node's fault (a fresh spot node without the resources the scheduler counted on), not the task's.
# `OutOf<resource>` covers OutOfcpu, OutOfmemory, OutOfpods and extended resources.
ADMISSION_REJECTIONS = ("NodeAffinity", "InvalidNodeInfo")  # UnexpectedAdmissionError: above


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt ended.

    Attributes:
        kind: Succeeded, Failed or Interrupted.
        reason: why, in one word: an exit reason (Error, OOMKilled), a DisruptionTarget reason
            (PreemptionByScheduler, TerminationByKubelet, ...), NodeGone or PodDeleted.
        exit_code: the exit code that decided it, when a container's exit decided it.
        fatal: a failurePolicy `Fail` rule matched: no retry, whatever the budget.
        message: for people.
    """

    kind: str
    reason: str
    exit_code: int | None = None
    fatal: bool = False
    message: str = ""


def _condition(pod: Obj, kind: str) -> Obj | None:
    return next((c for c in pod.get("status", {}).get("conditions") or [] if c.get("type") == kind), None)


def _terminations(pod: Obj) -> list[tuple[str, Obj]]:
    status = pod.get("status", {})
    found = []
    for entry in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        terminated = (entry.get("state") or {}).get("terminated")
        if terminated:
            found.append((entry["name"], terminated))
    return found


def _rejected_at_admission(pod: Obj) -> bool:
    reason = str(pod.get("status", {}).get("reason") or "")
    rejected = reason.startswith("OutOf") or reason in ADMISSION_REJECTIONS
    return rejected and not _terminations(pod)


def _matches(rule: Obj, terminations: Sequence[tuple[str, Obj]]) -> int | None:
    """The exit code that makes the rule match, as batch/v1 podFailurePolicy's onExitCodes does."""
    spec = rule["onExitCodes"]
    values = set(spec["values"])
    for name, terminated in terminations:
        code = int(terminated.get("exitCode", 0))
        if code == 0 or (spec.get("containerName") and spec["containerName"] != name):
            continue
        if (spec["operator"] == "In") == (code in values):
            return code
    return None


def classify(
    pod: Obj | None,
    *,
    node_exists: bool = True,
    rules: Sequence[Obj] = (),
) -> Outcome | None:
    """The outcome of a pod that ended or vanished; None while it still runs.

    `pod` is None when the pod is gone from the API without the operator having seen its end.
    """
    if pod is None:
        return Outcome(names.OUTCOME_INTERRUPTED, names.INTERRUPTION_POD_DELETED, message="the pod disappeared")
    status = pod.get("status", {})
    phase = status.get("phase")
    annotations = pod.get("metadata", {}).get("annotations") or {}
    stopped_by_operator = annotations.get(names.ANNOTATION_STOPPED_BY)
    if phase == "Succeeded":
        return Outcome(names.OUTCOME_SUCCEEDED, "Completed", exit_code=0)
    disruption = _condition(pod, "DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        return Outcome(
            names.OUTCOME_INTERRUPTED,
            disruption.get("reason") or "DisruptionTarget",
            message=disruption.get("message", ""),
        )
    if status.get("reason") in INTERRUPTION_REASONS:
        return Outcome(names.OUTCOME_INTERRUPTED, status["reason"], message=status.get("message", ""))
    if phase == "Failed" and _rejected_at_admission(pod):
        return Outcome(names.OUTCOME_INTERRUPTED, status["reason"], message=status.get("message", ""))
    if pod.get("metadata", {}).get("deletionTimestamp") and not stopped_by_operator:
        return Outcome(names.OUTCOME_INTERRUPTED, names.INTERRUPTION_POD_DELETED, message="the pod was deleted")
    if phase == "Failed":
        terminations = _terminations(pod)
        for rule in rules:
            code = _matches(rule, terminations)
            if code is None:
                continue
            action = rule["action"]
            if action == "Interruption":
                return Outcome(names.OUTCOME_INTERRUPTED, "FailurePolicy", exit_code=code, message=f"exit code {code}")
            return Outcome(
                names.OUTCOME_FAILED,
                names.REASON_FAILURE_POLICY,
                exit_code=code,
                fatal=action == "Fail",
                message=f"exit code {code} matched a failurePolicy rule with action {action}",
            )
        failed = [(n, t) for n, t in terminations if int(t.get("exitCode", 0)) != 0]
        if failed:
            name, terminated = failed[0]
            code = int(terminated["exitCode"])
            reason = terminated.get("reason") or "Error"
            return Outcome(
                names.OUTCOME_FAILED, reason, exit_code=code, message=f"container {name} exited with {code} ({reason})"
            )
        return Outcome(names.OUTCOME_FAILED, status.get("reason") or "Failed", message=status.get("message", ""))
    if not node_exists and pod.get("spec", {}).get("nodeName"):
        return Outcome(
            names.OUTCOME_INTERRUPTED, names.INTERRUPTION_NODE_GONE, message="the pod's node no longer exists"
        )
    return None
