"""Every name the operator writes to the cluster: API group, labels, annotations, reasons, children."""

from __future__ import annotations

import hashlib

GROUP = "spotrun.dev"
VERSION = "v1alpha1"
KIND = "TaskRun"
PLURAL = "taskruns"
API_VERSION = f"{GROUP}/{VERSION}"

# Labels on every pod of a TaskRun.
LABEL_TASKRUN = f"{GROUP}/taskrun"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_CAPACITY = f"{GROUP}/capacity"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "spotrun-operator"

# Annotations.
ANNOTATION_STOPPED_BY = f"{GROUP}/stopped-by"  # on a pod the operator itself deletes, with the reason
# On a TaskRun, "true": deleting the TaskRun also deletes its checkpoints (kept by default).
ANNOTATION_DELETE_CHECKPOINTS = f"{GROUP}/delete-checkpoints"

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

# Condition types and reasons.
COND_READY = "Ready"  # a pod of the current attempt is running
COND_COMPLETE = "Complete"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
REASON_POD_RUNNING = "PodRunning"
REASON_POD_PENDING = "PodPending"
REASON_BACKOFF = "BackoffLimitNotReached"
REASON_SUCCEEDED = "Succeeded"
REASON_RETRIES_EXHAUSTED = "RetriesExhausted"
REASON_INTERRUPTIONS_EXHAUSTED = "MaxInterruptionsExceeded"
REASON_FAILURE_POLICY = "FailurePolicyRule"
REASON_DEADLINE = "DeadlineExceeded"
REASON_SUSPENDED = "Suspended"

# Why a pod was interrupted, when the pod itself does not say.
INTERRUPTION_NODE_GONE = "NodeGone"
INTERRUPTION_POD_DELETED = "PodDeleted"

CAPACITY_SPOT, CAPACITY_ON_DEMAND, CAPACITY_ANY = "spot", "on-demand", "any"

MAX_NAME = 63


def pod_name(taskrun: str, attempt: int) -> str:
    """The one name of attempt N's pod: deterministic, so a retried create finds it (409)."""
    suffix = f"-a{attempt}"
    if len(taskrun) + len(suffix) <= MAX_NAME:
        return taskrun + suffix
    digest = hashlib.sha256(taskrun.encode()).hexdigest()[:8]
    return f"{taskrun[: MAX_NAME - len(suffix) - 9]}-{digest}{suffix}"
