"""Every name the operator writes to the cluster: API group, labels, annotations, reasons, children."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

GROUP = "spotrun.dev"
VERSION = "v1alpha1"
KIND = "TaskRun"
PLURAL = "taskruns"
API_VERSION = f"{GROUP}/{VERSION}"

# Labels on every pod of a TaskRun.
LABEL_TASKRUN = f"{GROUP}/taskrun"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_CAPACITY = f"{GROUP}/capacity"
LABEL_RANK = f"{GROUP}/rank"  # on each pod of a gang (spec.replicas > 1)
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "spotrun-operator"

# Annotations.
ANNOTATION_STOPPED_BY = f"{GROUP}/stopped-by"  # on a pod the operator itself deletes, with the reason
# On a TaskRun, "true": deleting the TaskRun also deletes its checkpoints (kept by default).
ANNOTATION_DELETE_CHECKPOINTS = f"{GROUP}/delete-checkpoints"
# On a pod whose node is about to be reclaimed or drained: JSON {time, reason, kind, seconds}. Every
# container sees it in a file (a downward-API volume) that the SDK watches.
ANNOTATION_NOTICE = f"{GROUP}/notice"
# Karpenter leaves a node alone for voluntary disruption while one of its pods has this.
ANNOTATION_KARPENTER_DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"

# kopf's own bookkeeping, under Spotrun's prefix.
FINALIZER = f"{GROUP}/finalizer"
POD_FINALIZER = f"{GROUP}/accounting"  # keeps a pod until its outcome is counted
PROGRESS_PREFIX = GROUP

# Phases.
PENDING, RUNNING, BACKOFF, SUSPENDED, SUCCEEDED, FAILED = (
    "Pending",
    "Running",
    "Backoff",
    "Suspended",
    "Succeeded",
    "Failed",
)
TERMINAL_PHASES = (SUCCEEDED, FAILED)

# Attempt outcomes.
OUTCOME_SUCCEEDED, OUTCOME_FAILED, OUTCOME_INTERRUPTED = "Succeeded", "Failed", "Interrupted"
OUTCOME_RESCHEDULED = "Rescheduled"  # moved to other capacity before it ran: counted nowhere

# Condition types and reasons.
COND_READY = "Ready"  # a pod of the current attempt is running
COND_COMPLETE = "Complete"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
# An attempt found checkpoints and none intact (the SDK's record beside the manifests): it started over.
COND_CHECKPOINTS_CORRUPT = "CheckpointsCorrupt"
REASON_NO_INTACT_CHECKPOINT = "NoIntactCheckpoint"
REASON_POD_RUNNING = "PodRunning"
REASON_POD_PENDING = "PodPending"
REASON_BACKOFF = "BackoffLimitNotReached"
REASON_SUCCEEDED = "Succeeded"
REASON_RETRIES_EXHAUSTED = "RetriesExhausted"
REASON_INTERRUPTIONS_EXHAUSTED = "MaxInterruptionsExceeded"
REASON_FAILURE_POLICY = "FailurePolicyRule"
REASON_DEADLINE = "DeadlineExceeded"
REASON_SUSPENDED = "Suspended"
REASON_NO_SPOT_CAPACITY = "NoSpotCapacity"  # a spot pod unschedulable for capacity.fallback.afterPendingSeconds
REASON_PROGRESS_DEADLINE = "ProgressDeadlineExceeded"  # no commit for progressDeadlineSeconds: a failure
REASON_GANG_ENDED = "GangMemberEnded"  # the other pods of a gang whose pod ended: stopped, counted nowhere
# A spec that can never run (validate.py, or the API server's 422): the run fails before a pod is made.
REASON_INVALID_TEMPLATE = "InvalidPodTemplate"  # spec.template
REASON_INVALID_MEMORY_POLICY = "InvalidMemoryPolicy"  # spec.resources.onOOMKilled
REASON_INVALID_SPEC = "InvalidSpec"  # any other field: checkpoint, failurePolicy

# Why a pod was interrupted, when the pod itself does not say.
INTERRUPTION_NODE_GONE = "NodeGone"
INTERRUPTION_POD_DELETED = "PodDeleted"
INTERRUPTION_DRAINED = "Drained"  # the operator stopped it on a drained node, after a fresh checkpoint
INTERRUPTION_NOTICE = "InterruptionNotice"  # it stopped by itself after a reclaim notice

# Notices (ANNOTATION_NOTICE's kind) and spec.disruption.voluntary.
NOTICE_RECLAIM, NOTICE_DRAIN = "Reclaim", "Drain"
VOLUNTARY_CHECKPOINT, VOLUNTARY_ALLOW = "Checkpoint", "Allow"

CAPACITY_SPOT, CAPACITY_ON_DEMAND, CAPACITY_ANY = "spot", "on-demand", "any"

# A label value, and a pod's hostname (which the kubelet takes from its name), hold at most 63
# characters; a TaskRun's name, like any object name, may have 253.
MAX_NAME = 63
_DIGEST = 8


def _shortened(name: str, room: int) -> str:
    """`name` if it fits in `room`, else a cut of it plus a hash of all of it: stable, and unique in
    practice (two names sharing the cut differ in the hash)."""
    if len(name) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_DIGEST]
    # A cut ending in '.' or '-' would put ".-" or "--" before the hash; ".-" is no valid DNS name.
    return f"{name[: room - _DIGEST - 1].rstrip('.-')}-{digest}"


def taskrun_label(taskrun: str) -> str:
    """The value of LABEL_TASKRUN on a TaskRun's pods: its name, shortened when longer than a label
    value may be. Every selector of a TaskRun's pods uses this; the full name is in the owner reference."""
    return _shortened(taskrun, MAX_NAME)


def taskrun_of(pod_meta: Mapping[str, Any]) -> str | None:
    """The name of the TaskRun that controls a pod (its owner reference), or None. The label value
    may be shortened, so it cannot name the TaskRun."""
    for owner in pod_meta.get("ownerReferences") or []:
        if owner.get("controller") and owner.get("kind") == KIND and owner.get("apiVersion") == API_VERSION:
            return str(owner["name"])
    return None


def pod_name(taskrun: str, attempt: int, rank: int | None = None) -> str:
    """The one name of attempt N's pod (of rank R's, in a gang): deterministic, so a retried create
    finds it (409)."""
    suffix = f"-a{attempt}" if rank is None else f"-a{attempt}-r{rank}"
    return _shortened(taskrun, MAX_NAME - len(suffix)) + suffix


def gang_service(taskrun: str) -> str:
    """The headless Service that gives a gang's pods their DNS names: a DNS-1035 label (a letter
    first, no dots), stable for the TaskRun."""
    label = taskrun.replace(".", "-")
    if not label[0].isalpha():
        label = f"g-{label}"
    if label == taskrun:
        return _shortened(label, MAX_NAME)
    # Changed to fit: a hash of the real name keeps "a.b" and "a-b" (or "1x" and "g-1x") apart.
    digest = hashlib.sha256(taskrun.encode()).hexdigest()[:_DIGEST]
    return f"{_shortened(label, MAX_NAME - _DIGEST - 1)}-{digest}"


def hostname(pod: str) -> str:
    """A pod's hostname (a DNS label) from its name, which may hold dots."""
    return pod.replace(".", "-")


def budget_name(taskrun: str) -> str:
    """The name of the PodDisruptionBudget that keeps a drain from evicting a TaskRun's pod."""
    return _shortened(taskrun, 253)


def event_name(taskrun: str, unique: str) -> str:
    """The name of an Event about a TaskRun: NAME.UNIQUE, shortened to a valid object name (253)."""
    return f"{_shortened(taskrun, 253 - len(unique) - 1)}.{unique}"
