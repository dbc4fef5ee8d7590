"""Classifies how a TaskRun's pod ended: Succeeded, Failed (with its failurePolicy action) or Interrupted."""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Sequence
from typing import Any

from spotrun_operator import memory, names

Obj = dict[str, Any]

# Pod status reasons that mean the node or the kubelet took the pod away. `Evicted` without a
# DisruptionTarget is a node-pressure eviction on a kubelet before PodDisruptionConditions (v1.31),
# or the eviction manager refusing a pod under pressure, unless its message is an own-limit one below.
INTERRUPTION_REASONS = ("Terminated", "Shutdown", "NodeShutdown", "NodeLost", "Evicted")
# The kubelet's admission refused the pod (pkg/kubelet/lifecycle/predicate.go, the topology
# manager): the node's fault (a fresh spot node whose device plugin, labels or resources are not
# yet what the scheduler counted on; a reclaim taint that came first), not the task's.
# `OutOf<resource>` covers OutOfcpu, OutOfmemory, OutOfpods and extended resources such as
# OutOfnvidia.com/gpu. Rejections of the pod's own spec (PodOSNotSupported,
# InitContainerRestartPolicyForbidden, SysctlForbidden, ...) repeat on every node: failures.
ADMISSION_REJECTIONS = (
    "NodeAffinity",
    "NodePorts",
    "TaintToleration",
    "InvalidNodeInfo",
    "UnexpectedAdmissionError",
    "UnexpectedPredicateFailureType",
    "UnknownReason",
    "TopologyAffinityError",
)
OUT_OF = "OutOf"
# A kubelet that rejects a running pod (re-admission after it restarted, e.g. before the GPU device
# plugin registered again) kills its containers: these exits are the kill's, not the task's.
KILL_EXIT_CODES = (137, 143)
# The eviction manager's messages for a pod over its own ephemeral-storage or emptyDir sizeLimit
# (pkg/kubelet/eviction/helpers.go: containerEphemeralStorageMessageFmt, podEphemeralStorageMessageFmt,
# emptyDirMessageFmt). These evictions carry no DisruptionTarget: the task's fault, like an OOM kill.
OWN_LIMIT_EVICTION = re.compile(
    r"exceeded its local ephemeral storage limit"
    r"|^Pod ephemeral local storage usage exceeds the total limit"
    r"|^Usage of EmptyDir volume .* exceeds the limit"
)
# What the kubelet reports for a container the runtime no longer knows (node rebooted, VM back under
# the same name) or never saw end: exit 137 that no process returned (pkg/kubelet/kubelet_pods.go).
LOST = "ContainerStatusUnknown"
# A container that ended this long before its pod's deletion was asked for ended on its own; closer
# than that, node and API server clocks cannot tell it from a container the deletion killed.
CLOCK_SKEW = datetime.timedelta(seconds=5)
INTERRUPTION_NODE_NOT_READY = "NodeNotReady"


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


def _time(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _terminations(pod: Obj) -> list[tuple[str, Obj]]:
    """The terminated containers whose exit can decide the outcome, in the order that decides.

    As the Job controller's podFailurePolicy (pkg/controller/job/pod_failure_policy.go): main
    containers before init containers. Native sidecars (init containers with restartPolicy Always,
    such as the checkpoint-sync sidecar podbuild injects) are left out: the kubelet stops them
    after the task, so their 137 or 143 is the kubelet's, and they never decide a pod's phase.
    """
    status = pod.get("status", {})
    sidecars = {
        c["name"] for c in pod.get("spec", {}).get("initContainers") or [] if c.get("restartPolicy") == "Always"
    }
    found = []
    for entry in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        terminated = (entry.get("state") or {}).get("terminated")
        if terminated and entry["name"] not in sidecars:
            found.append((entry["name"], terminated))
    return found


def _exits(terminations: Sequence[tuple[str, Obj]]) -> list[tuple[str, Obj]]:
    """The terminations a process returned: not the kubelet's stand-in for a lost container."""
    return [(n, t) for n, t in terminations if t.get("reason") != LOST]


def rejected_at_admission(pod: Obj) -> bool:
    """Whether the kubelet's admission refused the pod for its node's sake (see ADMISSION_REJECTIONS):
    the node it was bound to is one to avoid for a while."""
    if pod.get("status", {}).get("phase") != "Failed" or not pod.get("spec", {}).get("nodeName"):
        return False
    return _rejected_at_admission(pod)


def _rejected_at_admission(pod: Obj) -> bool:
    reason = str(pod.get("status", {}).get("reason") or "")
    if not (reason.startswith(OUT_OF) or reason in ADMISSION_REJECTIONS):
        return False
    codes = [int(t.get("exitCode", 0)) for _, t in _exits(_terminations(pod))]
    return all(code in KILL_EXIT_CODES for code in codes if code != 0)


def _evicted_over_own_limit(pod: Obj) -> bool:
    status = pod.get("status", {})
    return status.get("reason") == "Evicted" and bool(OWN_LIMIT_EVICTION.search(status.get("message") or ""))


def _ended_before_deletion(pod: Obj) -> bool:
    """The pod had ended before anyone asked to delete it, so its end, not the deletion, counts.

    deletionTimestamp minus deletionGracePeriodSeconds is when the deletion was asked for: the API
    server keeps that invariant when a later delete shortens the grace period.
    """
    meta = pod.get("metadata", {})
    deleted = _time(meta.get("deletionTimestamp"))
    ends = [_time(t.get("finishedAt")) for _, t in _exits(_terminations(pod))]
    if deleted is None or not ends or None in ends:
        return False
    asked = deleted - datetime.timedelta(seconds=int(meta.get("deletionGracePeriodSeconds") or 0))
    return max(e for e in ends if e is not None) + CLOCK_SKEW < asked


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
    node_ready: bool = True,
    rules: Sequence[Obj] = (),
    memory_policy: bool = False,
) -> Outcome | None:
    """The outcome of a pod that ended or vanished; None while it still runs.

    `pod` is None when the pod is gone from the API without the operator having seen its end. A pod
    counts once it is terminal, so that a task that ends within its grace period (it finished, or
    saw `preempted()` and returned) keeps its success; a pod not yet terminal counts at once only
    when its node is gone (`node_exists`), or when it is being deleted or disrupted on a node that
    is not Ready (`node_ready`): its kubelet is dead, and nothing will finish its grace period.
    With `memory_policy` (spec.resources.onOOMKilled), an eviction under memory pressure that names
    a container using more than its request is a failure, as an OOM kill is: the next attempt gets
    more memory; without one it stays an interruption (the node's pressure, not the task's limit).
    """
    if pod is None:
        return Outcome(names.OUTCOME_INTERRUPTED, names.INTERRUPTION_POD_DELETED, message="the pod disappeared")
    status = pod.get("status", {})
    phase = status.get("phase")
    annotations = pod.get("metadata", {}).get("annotations") or {}
    stopped_by_operator = annotations.get(names.ANNOTATION_STOPPED_BY)
    if phase == "Succeeded":
        return Outcome(names.OUTCOME_SUCCEEDED, "Completed", exit_code=0)
    if phase != "Failed":
        disruption = _condition(pod, "DisruptionTarget")
        disrupted = bool(disruption and disruption.get("status") == "True")
        ending = disrupted or bool(pod.get("metadata", {}).get("deletionTimestamp"))
        # A running pod on a node that is briefly not Ready is left alone (its kubelet may be back in a
        # moment, as the taint manager's 300 s default toleration assumes); one that is ending there
        # will not end, and one whose node is gone is gone with it.
        will_not_end = not node_exists or (ending and not node_ready)
        if not pod.get("spec", {}).get("nodeName"):
            if pod.get("metadata", {}).get("deletionTimestamp"):
                # The API server binds no pod that is being deleted: this one will never run.
                return Outcome(
                    names.OUTCOME_INTERRUPTED,
                    names.INTERRUPTION_POD_DELETED,
                    message="the pod was deleted before it was scheduled",
                )
            return None
        if not will_not_end:
            return None
        if disrupted:
            reason = (disruption or {}).get("reason") or "DisruptionTarget"
        else:
            reason = names.INTERRUPTION_NODE_GONE if not node_exists else INTERRUPTION_NODE_NOT_READY
        message = "the pod's node no longer exists" if not node_exists else "the pod's node is not Ready"
        return Outcome(names.OUTCOME_INTERRUPTED, reason, message=message)
    # From here on the pod is Failed.
    over_request = memory.evicted_over_request(pod) if memory_policy else []
    if over_request:
        # Before the DisruptionTarget (TerminationByKubelet): the task used more than it asked for.
        message = f"evicted under memory pressure: container {over_request[0]} used more memory than it requested"
        return Outcome(names.OUTCOME_FAILED, memory.EVICTED, message=f"{message}; {status.get('message', '')}".strip())
    if _evicted_over_own_limit(pod):
        # Before the rules: the containers' 137 is the eviction's kill, not an exit of the task.
        return Outcome(names.OUTCOME_FAILED, "Evicted", message=status.get("message", ""))
    disruption = _condition(pod, "DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        return Outcome(
            names.OUTCOME_INTERRUPTED,
            disruption.get("reason") or "DisruptionTarget",
            message=disruption.get("message", ""),
        )
    if status.get("reason") in INTERRUPTION_REASONS:
        return Outcome(names.OUTCOME_INTERRUPTED, status["reason"], message=status.get("message", ""))
    if _rejected_at_admission(pod):
        return Outcome(names.OUTCOME_INTERRUPTED, status["reason"], message=status.get("message", ""))
    deleted = pod.get("metadata", {}).get("deletionTimestamp")
    if deleted and not stopped_by_operator and not _ended_before_deletion(pod):
        return Outcome(names.OUTCOME_INTERRUPTED, names.INTERRUPTION_POD_DELETED, message="the pod was deleted")
    terminations = _terminations(pod)
    exits = _exits(terminations)
    for rule in rules:
        code = _matches(rule, exits)
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
    failed = [(n, t) for n, t in exits if int(t.get("exitCode", 0)) != 0]
    if failed:
        name, terminated = failed[0]
        code = int(terminated["exitCode"])
        reason = terminated.get("reason") or "Error"
        return Outcome(
            names.OUTCOME_FAILED, reason, exit_code=code, message=f"container {name} exited with {code} ({reason})"
        )
    lost = [n for n, t in terminations if t.get("reason") == LOST]
    if lost:
        return Outcome(
            names.OUTCOME_INTERRUPTED,
            LOST,
            message=f"container {lost[0]} could not be located: its node restarted or lost it",
        )
    return Outcome(names.OUTCOME_FAILED, status.get("reason") or "Failed", message=status.get("message", ""))
