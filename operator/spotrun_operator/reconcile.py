"""The reconcile decision: (TaskRun, its pods, the nodes, now) -> what to create, stop and record.

Level-based: every pass recomputes from what exists. All that must survive an operator restart
lives in the TaskRun's status (counters, the last attempt accounted for) and in the pods' labels
and annotations, so a pass after a crash at any point reaches the same decision.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from spotrun_operator import names, policy
from spotrun_operator.classify import Outcome, classify
from spotrun_operator.config import Config
from spotrun_operator.podbuild import build_pod, checkpoint_uri
from spotrun_operator.status import set_condition

Obj = dict[str, Any]
HISTORY = 20  # attempts kept in status.attempts
OUTCOME_STOPPED = "Stopped"  # the operator stopped the pod (suspend, deadline): counted nowhere
REASON_RESUME_SOURCE_MISSING = "ResumeSourceMissing"
REASON_POD_REFUSED = "PodRefused"
REASON_INVALID_TEMPLATE = "InvalidPodTemplate"
REFUSAL_BACKOFF = (2.0, 300.0)  # first wait and cap, doubling per refusal in a row


@dataclasses.dataclass
class Decision:
    """What one pass wants done. The handler applies it through the API module, then writes status."""

    status: Obj
    create: Obj | None = None
    stop: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (pod, reason): graceful delete
    force_delete: list[str] = dataclasses.field(default_factory=list)  # pods on nodes that are gone
    release: list[str] = dataclasses.field(default_factory=list)  # pods whose outcome is counted
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
    refresh_checkpoint: bool = False
    delete_taskrun: bool = False


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _attempt_of(pod: Obj) -> int:
    try:
        return int(pod["metadata"]["labels"][names.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return 0


def _finished(pod: Obj | None) -> bool:
    return pod is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def _result(pod: Obj | None) -> Any:
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
_WAITING_REASONS = (
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


def _pending_cause(pod: Obj) -> tuple[str, str] | None:
    """(reason, message) of a pod that does not start: the scheduler's Unschedulable, else a container's."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("reason") or "Unschedulable"), str(condition.get("message") or "")
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _WAITING_REASONS:
            return str(
                waiting["reason"]
            ), f"container {entry.get('name')}: {waiting.get('message') or waiting['reason']}"
    return None


def _record(pod: Obj | None, attempt: int, outcome: Outcome | None, kind: str, now: datetime.datetime) -> Obj:
    status = (pod or {}).get("status", {})
    entry: Obj = {
        "attempt": attempt,
        "pod": (pod or {}).get("metadata", {}).get("name", ""),
        "node": (pod or {}).get("spec", {}).get("nodeName", ""),
        "capacity": (pod or {}).get("metadata", {}).get("labels", {}).get(names.LABEL_CAPACITY, ""),
        "startTime": status.get("startTime") or (pod or {}).get("metadata", {}).get("creationTimestamp", ""),
        "endTime": _iso(now),
        "outcome": kind,
        "reason": outcome.reason if outcome else "",
    }
    if outcome and outcome.exit_code is not None:
        entry["exitCode"] = outcome.exit_code
    return entry


def decide(
    taskrun: Obj,
    pods: list[Obj],
    nodes: Mapping[str, bool],
    now: datetime.datetime,
    config: Config,
    *,
    resume_from: str | None = "",
) -> Decision:
    """One pass. `nodes`: every Node's name, and whether it is Ready. `resume_from`: the resolved
    resumeFrom source ("" when there is none), or None when spec.checkpoint.resumeFrom.taskRun names a
    TaskRun that cannot be found (deleted by its TTL)."""
    meta, spec = taskrun["metadata"], taskrun["spec"]
    old: Obj = taskrun.get("status") or {}
    st: Obj = copy.deepcopy(old)
    decision = Decision(status=st)
    rules = (spec.get("failurePolicy") or {}).get("rules") or []
    ours = [p for p in pods if any(o.get("uid") == meta["uid"] for o in p["metadata"].get("ownerReferences") or [])]
    # Pods of an earlier TaskRun of this name (deleted, then created again), still being deleted by
    # the garbage collector: never adopted, and the new run waits until they are gone.
    namesakes = [p for p in pods if p not in ours and names.taskrun_of(p["metadata"]) == meta["name"]]
    by_attempt = {_attempt_of(p): p for p in ours if _attempt_of(p) > 0}

    st.setdefault("failures", 0)
    st.setdefault("interruptions", 0)
    st["observedGeneration"] = meta.get("generation", 1)
    st["checkpoint"] = {**(old.get("checkpoint") or {}), "uri": checkpoint_uri(taskrun, config)}
    attempt = max(int(old.get("attempt", 0)), max(by_attempt, default=0))
    st["attempt"] = attempt
    accounted = int(old.get("accountedAttempt", 0))
    history: list[Obj] = list(old.get("attempts") or [])

    # 1. Count every attempt that ended since the last pass, in order.
    for n in range(accounted + 1, attempt + 1):
        pod = by_attempt.get(n)
        node = (pod or {}).get("spec", {}).get("nodeName")
        node_exists = not node or node in nodes
        node_ready = not node or nodes.get(node, False)
        outcome = classify(pod, node_exists=node_exists, node_ready=node_ready, rules=rules)
        if outcome is None:
            break  # this attempt still runs
        stopped_by = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(names.ANNOTATION_STOPPED_BY)
        kind = OUTCOME_STOPPED if stopped_by and outcome.kind != names.OUTCOME_SUCCEEDED else outcome.kind
        if kind == names.OUTCOME_FAILED:
            st["failures"] += 1
        elif kind == names.OUTCOME_INTERRUPTED:
            st["interruptions"] += 1
        history.append(_record(pod, n, outcome, kind, now))
        st["accountedAttempt"] = n
        st["lastOutcome"] = {"attempt": n, "kind": kind, "reason": outcome.reason, "fatal": outcome.fatal}
        st["lastEndTime"] = _iso(now)
        if kind == names.OUTCOME_SUCCEEDED:
            st["result"] = _result(pod)
        decision.refresh_checkpoint = True
        detail = f" (exit code {outcome.exit_code})" if outcome.exit_code is not None else ""
        decision.events.append(
            (
                "Normal" if kind in (names.OUTCOME_SUCCEEDED, OUTCOME_STOPPED) else "Warning",
                f"Attempt{kind}",
                f"Attempt {n} ({(pod or {}).get('metadata', {}).get('name', 'pod gone')}) {kind.lower()}: "
                f"{outcome.reason}{detail}",
            )
        )
    st["attempts"] = history[-HISTORY:]
    # A counted pod lets go of its accounting finalizer once it is terminal, so that its final
    # status stays readable until then. Recomputed each pass: a release that failed (a conflict,
    # a crash) is simply done again.
    counted = int(st.get("accountedAttempt", 0))
    decision.release = [
        p["metadata"]["name"]
        for n, p in sorted(by_attempt.items())
        if n <= counted and _finished(p) and names.POD_FINALIZER in (p["metadata"].get("finalizers") or [])
    ]

    unfinished = [p for n, p in by_attempt.items() if n <= attempt and not _finished(p)]
    for pod in unfinished:
        node = pod.get("spec", {}).get("nodeName")
        if node and node not in nodes:
            # Its node is gone, and its process with it: nothing else will finish deleting the pod
            # (PodGC waits 40 s or more), and it must be gone before the next attempt starts.
            decision.force_delete.append(pod["metadata"]["name"])
    unfinished = [p for p in unfinished if p["metadata"]["name"] not in decision.force_delete]
    # A pod counted while it is still ending on a node that is not Ready (classify) does not hold up
    # the next attempt: its kubelet is dead and will never finish it, and fencing keeps a survivor
    # from writing over newer checkpoints. It is stopped with the others when the run ends.
    live = [
        p for p in unfinished if _attempt_of(p) > counted or nodes.get(p.get("spec", {}).get("nodeName") or "", True)
    ]
    last = st.get("lastOutcome") or {}
    phase = old.get("phase", names.PENDING)
    start = _parse(old.get("startTime"))

    def finish(new_phase: str, reason: str, message: str) -> None:
        st["phase"] = new_phase
        st["message"] = message
        st.setdefault("completionTime", _iso(now))
        for pod in unfinished:
            decision.stop.append((pod["metadata"]["name"], reason))
        kind = names.COND_COMPLETE if new_phase == names.SUCCEEDED else names.COND_FAILED
        set_condition(st, kind, True, reason, message, now)
        set_condition(st, names.COND_READY, False, reason, message, now)
        if phase != new_phase:
            decision.events.append(("Normal" if new_phase == names.SUCCEEDED else "Warning", reason, message))

    if phase in names.TERMINAL_PHASES:
        for pod in unfinished:
            decision.stop.append((pod["metadata"]["name"], str(old.get("message", phase))))
        ttl = spec.get("ttlSecondsAfterFinished")
        done_at = _parse(old.get("completionTime"))
        if ttl is not None and done_at is not None:
            left = (done_at + datetime.timedelta(seconds=int(ttl)) - now).total_seconds()
            if left <= 0:
                decision.delete_taskrun = True
            else:
                decision.requeue_after = left
        return decision

    if last.get("kind") == names.OUTCOME_SUCCEEDED:
        finish(names.SUCCEEDED, names.REASON_SUCCEEDED, f"attempt {last['attempt']} succeeded")
        return decision
    if last.get("fatal"):
        finish(
            names.FAILED,
            names.REASON_FAILURE_POLICY,
            f"attempt {last['attempt']} failed: a failurePolicy Fail rule matched",
        )
        return decision
    exhausted = policy.exhausted_budget(
        spec, st["failures"], st["interruptions"], config.default_retries, config.default_max_interruptions
    )
    if exhausted:
        reason, message = exhausted
        finish(names.FAILED, reason, f"{message}; last attempt {last.get('attempt')} ended {last.get('reason')}")
        return decision
    if spec.get("suspend"):
        for pod in unfinished:
            decision.stop.append((pod["metadata"]["name"], names.REASON_SUSPENDED))
        # As a batch/v1 Job's: the activeDeadlineSeconds timer stops, and starts afresh on resume.
        st.pop("startTime", None)
        st["phase"] = names.SUSPENDED
        st["message"] = "suspended: the pod is stopped, its checkpoints are kept"
        set_condition(st, names.COND_SUSPENDED, True, names.REASON_SUSPENDED, st["message"], now)
        set_condition(st, names.COND_READY, False, names.REASON_SUSPENDED, st["message"], now)
        if phase != names.SUSPENDED:
            decision.events.append(("Normal", names.REASON_SUSPENDED, st["message"]))
        return decision
    set_condition(st, names.COND_SUSPENDED, False, "Resumed", "", now)

    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and start is not None:
        left = (start + datetime.timedelta(seconds=int(deadline)) - now).total_seconds()
        if left <= 0:
            finish(
                names.FAILED, names.REASON_DEADLINE, f"the TaskRun ran longer than activeDeadlineSeconds ({deadline})"
            )
            return decision
        decision.requeue_after = left

    if decision.force_delete:
        # Its node is gone; the next attempt waits until the force-deleted pod is gone too, so that
        # two pods of one TaskRun never exist at once. Its deletion event starts the next pass.
        gone = by_attempt[max(n for n, p in by_attempt.items() if p["metadata"]["name"] in decision.force_delete)]
        st["phase"] = names.PENDING
        st["podName"] = gone["metadata"]["name"]
        st["message"] = (
            f"waiting for pod {gone['metadata']['name']} to be deleted: its node {gone['spec'].get('nodeName')} is gone"
        )
        set_condition(st, names.COND_READY, False, names.REASON_POD_PENDING, st["message"], now)
        decision.requeue_after = min(1.0, decision.requeue_after or 1.0)
        return decision

    if live:
        pod = live[-1]
        running = pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
        st["phase"] = names.RUNNING if running else names.PENDING
        st["podName"] = pod["metadata"]["name"]
        st["nodeName"] = pod.get("spec", {}).get("nodeName", "")
        st["capacity"] = pod["metadata"].get("labels", {}).get(names.LABEL_CAPACITY, st.get("capacity", ""))
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        cause = None if running or terminating else _pending_cause(pod)
        reason = names.REASON_POD_RUNNING if running else (cause or (names.REASON_POD_PENDING, ""))[0]
        if running:
            st["message"] = f"attempt {attempt} is running on {st['nodeName']}"
        elif cause:
            st["message"] = f"pod {pod['metadata']['name']} is not starting: {cause[0]}: {cause[1]}"
        else:
            st["message"] = f"waiting for pod {pod['metadata']['name']} to {'terminate' if terminating else 'start'}"
        set_condition(st, names.COND_READY, running, reason, st["message"], now)
        return decision

    if last.get("kind") == names.OUTCOME_FAILED:
        delay = policy.backoff_seconds(spec, st["failures"])
        ended = _parse(st.get("lastEndTime")) or now
        wait = (ended + datetime.timedelta(seconds=delay) - now).total_seconds()
        if wait > 0:
            # The time the retry is due, not a countdown: the status stays the same while it waits.
            st["phase"] = names.BACKOFF
            st["retryAfter"] = _iso(ended + datetime.timedelta(seconds=delay))
            st["message"] = f"attempt {last['attempt']} failed ({last.get('reason')}); retrying at {st['retryAfter']}"
            set_condition(st, names.COND_READY, False, names.REASON_BACKOFF, st["message"], now)
            if phase != names.BACKOFF:
                decision.events.append(("Normal", names.REASON_BACKOFF, st["message"]))
            decision.requeue_after = min(wait, decision.requeue_after or wait)
            return decision

    if namesakes:
        # Their owner is gone (a name names one TaskRun at a time), and the garbage collector may not
        # notice when the name is taken again at once: they are deleted here, gracefully.
        for pod in namesakes:
            if not pod["metadata"].get("deletionTimestamp"):
                decision.stop.append((pod["metadata"]["name"], "OwnerGone"))
            if names.POD_FINALIZER in (pod["metadata"].get("finalizers") or []):
                decision.release.append(pod["metadata"]["name"])
        pod = namesakes[0]
        st["phase"] = names.PENDING
        st["message"] = (
            f"waiting for pod {pod['metadata']['name']} of an earlier TaskRun named {meta['name']} to be gone"
        )
        set_condition(st, names.COND_READY, False, names.REASON_POD_PENDING, st["message"], now)
        decision.requeue_after = min(2.0, decision.requeue_after or 2.0)
        return decision
    # The resumeFrom source is resolved once and kept: it matters only until the run has a checkpoint
    # of its own, and the TaskRun it names may be deleted meanwhile.
    source = resume_from if resume_from is not None else st["checkpoint"].get("resumeFrom")
    if source is None and not st["checkpoint"].get("id"):
        missing = ((spec.get("checkpoint") or {}).get("resumeFrom") or {}).get("taskRun")
        st["phase"] = names.PENDING
        st["message"] = f"waiting for checkpoint.resumeFrom.taskRun {missing!r}: no such TaskRun in this namespace"
        set_condition(st, names.COND_READY, False, REASON_RESUME_SOURCE_MISSING, st["message"], now)
        if phase != names.PENDING or (old.get("message") != st["message"]):
            decision.events.append(("Warning", REASON_RESUME_SOURCE_MISSING, st["message"]))
        decision.requeue_after = min(10.0, decision.requeue_after or 10.0)
        return decision
    if source:
        st["checkpoint"]["resumeFrom"] = source
    refusal = st.get("podRefusal") or {}
    retry_at = _parse(refusal.get("retryAfter"))
    if retry_at is not None and retry_at > now:
        # The API server refused the last create (quota, PodSecurity, a webhook): wait, unchanged.
        decision.requeue_after = min((retry_at - now).total_seconds(), decision.requeue_after or 3600.0)
        return decision
    next_attempt = attempt + 1
    capacity = policy.capacity_for_next_attempt(spec, st["interruptions"])
    pod = build_pod(taskrun, next_attempt, capacity, config, resume_from=source or "")
    decision.create = pod
    st["attempt"] = next_attempt
    st["capacity"] = capacity
    st["podName"] = pod["metadata"]["name"]
    st["nodeName"] = ""
    st["phase"] = names.PENDING
    st.pop("retryAfter", None)
    st.pop("podRefusal", None)
    st["message"] = f"created attempt {next_attempt} on {capacity} capacity"
    st.setdefault("startTime", _iso(now))
    set_condition(st, names.COND_READY, False, names.REASON_POD_PENDING, st["message"], now)
    decision.events.append(
        ("Normal", "AttemptCreated", f"Created pod {pod['metadata']['name']} (attempt {next_attempt}, {capacity})")
    )
    return decision


def refused(taskrun: Obj, decision: Decision, code: int, message: str, now: datetime.datetime) -> Decision:
    """The pass whose pod the API server refused (HTTP `code`, its `message`): no attempt started.

    What the pass counted stays; the attempt it was about to start does not exist, so the status
    keeps the previous attempt. A template the API server finds invalid (422) cannot heal: the run
    fails with its message. Anything else (ResourceQuota, PodSecurity, an admission webhook) can:
    Ready False with the message, an Event when the message is new, and the next try after a wait
    that doubles with each refusal in a row (2 s to 300 s), not a retry every pass.
    """
    old: Obj = taskrun.get("status") or {}
    st = decision.status
    pod_name = (decision.create or {}).get("metadata", {}).get("name", "the pod")
    for key in ("attempt", "podName", "nodeName", "capacity", "startTime"):
        if key in old:
            st[key] = old[key]
        else:
            st.pop(key, None)
    st.setdefault("attempt", 0)
    result = Decision(status=st, release=decision.release, stop=decision.stop, force_delete=decision.force_delete)
    result.events = [e for e in decision.events if e[1] != "AttemptCreated"]
    if code == 422:
        text = f"the API server refused pod {pod_name} as invalid: {message}"
        st["phase"] = names.FAILED
        st["message"] = text
        st.setdefault("completionTime", _iso(now))
        set_condition(st, names.COND_FAILED, True, REASON_INVALID_TEMPLATE, text, now)
        set_condition(st, names.COND_READY, False, REASON_INVALID_TEMPLATE, text, now)
        result.events.append(("Warning", REASON_INVALID_TEMPLATE, text))
        return result
    previous: Obj = old.get("podRefusal") or {}
    count = int(previous.get("count", 0)) + 1
    first, cap = REFUSAL_BACKOFF
    wait = min(cap, first * 2 ** (count - 1))
    retry_at = _iso(now + datetime.timedelta(seconds=wait))
    st["podRefusal"] = {"count": count, "code": code, "message": message, "retryAfter": retry_at}
    st["phase"] = names.PENDING
    st["message"] = f"the API server refused pod {pod_name}: {message}; retrying at {retry_at}"
    set_condition(st, names.COND_READY, False, REASON_POD_REFUSED, st["message"], now)
    if previous.get("message") != message:
        result.events.append(("Warning", REASON_POD_REFUSED, st["message"]))
    result.requeue_after = wait
    return result
