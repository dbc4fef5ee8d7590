"""Notices and drains: what a node's taints and cordon mean for the pod on it. Pure.

A reclaim notice (a taint such as aws-node-termination-handler/spot-itn) means the cloud takes
the node soon: the pod is told at once, and the reclaim proceeds as it would. A drain taint (such
as karpenter.sh/disrupted) is voluntary and respects PodDisruptionBudgets: with
`spec.disruption.voluntary: Checkpoint` the pod is told, the operator waits for a checkpoint
committed after the notice (at most `checkpointTimeoutSeconds`), then stops the pod itself, so
the drain completes and the next attempt resumes from that fresh checkpoint.

A plain cordon only stops new scheduling: `kubectl drain` is a cordon plus evictions, and an
eviction refused by the budget leaves no trace, so a cordon alone cannot be told from a drain. The
pod is told (so that it checkpoints soon) and left running; once a checkpoint newer than the notice
is committed (or the timeout passes) the budget is opened for an eviction window: a drain under way
evicts the pod right after its fresh checkpoint, a cordon alone changes nothing more. With
`spec.disruption.consolidation: AfterCheckpoint` every fresh checkpoint opens such a window, so that
an autoscaler's consolidation can move the task when little work is at risk (docs/consolidation.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from spotrun_operator import names

Obj = dict[str, Any]
DEFAULT_CHECKPOINT_TIMEOUT = 120  # seconds a drain waits for a fresh checkpoint
DRAIN_POLL_SECONDS = 2.0  # how often a draining TaskRun's newest checkpoint is read
CORDONED = "Cordoned"
# The node lifecycle controller's taint for spec.unschedulable: a cordon, whichever drain taints a
# profile lists (config.DRAIN_TAINTS names it for the nodes whose `unschedulable` is not watched).
CORDON_TAINT = "node.kubernetes.io/unschedulable"
# spec.disruption.consolidation: whether the budget ever lets an autoscaler's eviction through.
CONSOLIDATION_NEVER, CONSOLIDATION_AFTER_CHECKPOINT = "Never", "AfterCheckpoint"
DEFAULT_EVICTION_WINDOW = 60  # seconds the budget stays open after a fresh checkpoint
CONSOLIDATION_POLL_SECONDS = 5.0  # how often storage is read for fresh checkpoints under AfterCheckpoint


@dataclasses.dataclass(frozen=True)
class Notice:
    """What the pod is told (ANNOTATION_NOTICE, as JSON)."""

    kind: str  # NOTICE_RECLAIM or NOTICE_DRAIN
    reason: str  # the taint key, or CORDONED
    seconds: int  # the warning expected from `time`
    time: str = ""  # when it was given (RFC 3339)

    def annotation(self) -> str:
        return json.dumps({"time": self.time, "reason": self.reason, "kind": self.kind, "seconds": self.seconds})

    @classmethod
    def of_pod(cls, pod: Obj | None) -> Notice | None:
        raw = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(names.ANNOTATION_NOTICE)
        if not raw:
            return None
        try:
            body = json.loads(raw)
            return cls(str(body["kind"]), str(body["reason"]), int(body["seconds"]), str(body.get("time", "")))
        except (ValueError, KeyError, TypeError):
            return cls(names.NOTICE_RECLAIM, "Unknown", 0)


def voluntary(spec: Obj) -> str:
    return str((spec.get("disruption") or {}).get("voluntary", names.VOLUNTARY_CHECKPOINT))


def checkpoint_timeout(spec: Obj) -> int:
    return int((spec.get("disruption") or {}).get("checkpointTimeoutSeconds", DEFAULT_CHECKPOINT_TIMEOUT))


def consolidation(spec: Obj) -> str:
    return str((spec.get("disruption") or {}).get("consolidation", CONSOLIDATION_NEVER))


def window_seconds(spec: Obj) -> int:
    return int((spec.get("disruption") or {}).get("evictionWindowSeconds", DEFAULT_EVICTION_WINDOW))


def node_notice(
    node: Obj | None,
    spec: Obj,
    notice_taints: Mapping[str, int],
    drain_taints: Sequence[str],
    grace: int = 30,
) -> Notice | None:
    """The notice a pod on `node` (a trimmed Node: taints, unschedulable) should have, or None.

    A drain (a drain taint, or a cordon: reason CORDONED) wins over a reclaim notice when both are
    there (the AWS Node Termination Handler taints, cordons and drains): moving after a fresh
    checkpoint beats waiting for the reclaim. Its wait then ends `grace` (the pod's termination
    grace period) before the reclaim, so that the pod still gets its SIGTERM and grace period before
    the VM goes. A drain taint wins over a cordon: it says a drain is under way, a cordon does not.
    With voluntary Allow, a drain is left to evict the pod as it would without Spotrun.
    """
    if node is None:
        return None
    taints = set(node.get("taints") or ())
    reclaim = [(notice_taints[k], k) for k in sorted(taints) if k in notice_taints]
    cordoned = bool(node.get("unschedulable")) or CORDON_TAINT in taints
    draining = next((k for k in drain_taints if k in taints and k != CORDON_TAINT), None) or (
        CORDONED if cordoned else None
    )
    if draining and voluntary(spec) == names.VOLUNTARY_CHECKPOINT:
        seconds = min([checkpoint_timeout(spec), *(max(0, s - grace) for s, _ in reclaim)])
        return Notice(names.NOTICE_DRAIN, draining, seconds)
    if reclaim:
        seconds, key = min(reclaim)
        return Notice(names.NOTICE_RECLAIM, key, seconds)
    return None


def fresh_checkpoint(latest: Obj | None, attempt: int, at_notice: str) -> bool:
    """Whether `latest` (the newest checkpoint: id, attempt) was committed by `attempt` after the
    notice, when the newest was `at_notice` (ids grow with each commit; clocks are not compared)."""
    return bool(latest) and int((latest or {}).get("attempt", 0)) == attempt and (latest or {}).get("id") != at_notice


def drain_step(
    drain: Obj | None,
    pod: Obj,
    attempt: int,
    latest: tuple[bool, Obj | None],
    now: datetime.datetime,
    timeout: int,
) -> tuple[Obj, str | None]:
    """One pass of a drain with voluntary Checkpoint: (the status.drain to keep, why the pod is to
    be stopped now, or None to wait). `drain` is status.drain from earlier passes ({pod, since,
    checkpointAtNotice}): `since` is when this drain was first seen (its own clock, so that a drain
    after an uncordon, or a garbled notice, waits its full timeout); `latest` is (storage read, its
    newest checkpoint). The newest checkpoint at the notice is the one the first successful read
    found: a newer one is fresh. While storage cannot be read, only the timeout ends the wait."""
    name = pod["metadata"]["name"]
    read, newest = latest
    if not drain or drain.get("pod") != name or not _parse(drain.get("since")):
        drain = {"pod": name, "since": _iso(now)}
    if read and "checkpointAtNotice" not in drain:
        drain = {**drain, "checkpointAtNotice": (newest or {}).get("id", "")}
    if (pod.get("status") or {}).get("phase") != "Running":
        return drain, "the pod was not running: nothing to checkpoint"
    if read and fresh_checkpoint(newest, attempt, drain["checkpointAtNotice"]):
        return drain, f"checkpoint {(newest or {}).get('id')} was committed after the notice"
    since = _parse(drain["since"]) or now
    if (now - since).total_seconds() >= timeout:
        return drain, f"no checkpoint within {timeout}s of the notice"
    return drain, None


def eviction_window(
    window: Obj | None,
    pod: str,
    attempt: int,
    latest: tuple[bool, Obj | None],
    now: datetime.datetime,
    seconds: int,
    cordon: Notice | None = None,
) -> Obj:
    """One pass of the eviction window (status.evictionWindow: {pod, checkpoint, cordoned, opened,
    until}): the budget is open while `until` is ahead (`window_open`). `checkpoint` is the newest
    checkpoint the operator has seen: one newer than it, committed by this `attempt`, is fresh and
    opens the window for `seconds` (the first read only records what is there). `cordon`: the notice
    of the pod's plain cordon, if it has one: with no fresh checkpoint within its `seconds` the
    window opens once all the same (a drain is not held up for ever by a task that cannot commit);
    when the cordon goes, a window it opened closes at once. `latest` is (storage read, newest)."""
    if not window or window.get("pod") != pod:
        window = {"pod": pod}
    read, newest = latest
    newest_id = str((newest or {}).get("id", ""))
    if cordon is None and "cordoned" in window:
        window = {k: v for k, v in window.items() if k != "cordoned"}
        if window_open(window, now):
            window["until"] = _iso(now)  # uncordoned: what the cordon opened is not wanted any more
    elif cordon is not None and not _parse(window.get("cordoned")):
        window = {**window, "cordoned": _iso(now)}
    if read:
        fresh = "checkpoint" in window and fresh_checkpoint(newest, attempt, window["checkpoint"])
        window = {**window, "checkpoint": newest_id}
        if fresh:
            return _opened(window, now, seconds)
    cordoned = _parse(window.get("cordoned"))
    opened = _parse(window.get("opened"))
    overdue = cordon is not None and cordoned is not None and (now - cordoned).total_seconds() >= cordon.seconds
    if overdue and (opened is None or cordoned is None or opened < cordoned):
        return _opened(window, now, seconds)  # no checkpoint within the timeout: the drain goes ahead
    return window


def window_open(window: Obj | None, now: datetime.datetime) -> bool:
    until = _parse((window or {}).get("until"))
    return until is not None and until > now


def window_closes_in(window: Obj | None, now: datetime.datetime) -> float | None:
    """Seconds until an open window closes, else None."""
    until = _parse((window or {}).get("until"))
    return (until - now).total_seconds() if until is not None and until > now else None


def _opened(window: Obj, now: datetime.datetime, seconds: int) -> Obj:
    return {**window, "opened": _iso(now), "until": _iso(now + datetime.timedelta(seconds=seconds))}


def _parse(text: Any) -> datetime.datetime | None:
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
