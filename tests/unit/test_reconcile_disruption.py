"""The reconcile pass with notices, drains and accounting: table tests without a cluster."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
from typing import Any

import pytest
from spotrun_operator.config import Prices
from spotrun_operator.reconcile import decide

from tests.unit.test_reconcile import CONFIG, NODES, NOW, apply, pod_of, running, taskrun

Obj = dict[str, Any]
LATER = NOW + datetime.timedelta(seconds=5)


class Stored:
    """Checkpoints as storage holds them, newest last; `broken`: storage cannot be read."""

    def __init__(self, *infos: Obj, broken: bool = False) -> None:
        self.infos, self.broken, self.reads = list(infos), broken, 0

    def latest(self) -> Obj | None:
        self.reads += 1
        if self.broken:
            raise OSError("S3 is down")
        return self.infos[-1] if self.infos else None

    def newest_of(self, attempt: int) -> Obj | None:
        return next((i for i in reversed(self.infos) if i["attempt"] <= attempt), None)


def checkpoint(attempt: int, sequence: int, time: str) -> Obj:
    return {"id": f"{attempt:05d}-{sequence:05d}", "attempt": attempt, "step": sequence, "time": time, "size": 1}


def nodes(**facts: Obj) -> Any:
    return lambda name: facts.get(name.replace("-", "_"))


def noticed(pod: Obj, kind: str = "Reclaim", reason: str = "aws-node-termination-handler/spot-itn") -> Obj:
    pod = copy.deepcopy(pod)
    notice = {"time": "2026-11-27T12:00:00Z", "reason": reason, "kind": kind, "seconds": 120}
    pod["metadata"].setdefault("annotations", {})["spotrun.dev/notice"] = json.dumps(notice)
    return pod


def test_a_pod_on_a_node_with_a_reclaim_notice_is_told_once_and_keeps_running() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    facts = nodes(spot_1={"ready": True, "taints": ["aws-node-termination-handler/spot-itn"]})
    d = decide(tr, [running(1)], NODES, NOW, CONFIG, node_info=facts, checkpoints=Stored())
    (pod, annotation), *_ = d.notify
    assert pod == "train-a1"
    assert json.loads(annotation) == {
        "time": "2026-11-27T12:00:00Z",
        "reason": "aws-node-termination-handler/spot-itn",
        "kind": "Reclaim",
        "seconds": 120,
    }
    assert d.stop == []
    assert d.create is None
    assert d.status["notice"]["reason"] == "aws-node-termination-handler/spot-itn"
    again = decide(apply(tr, d), [noticed(running(1))], NODES, LATER, CONFIG, node_info=facts, checkpoints=Stored())
    assert again.notify == []
    assert again.stop == []


def test_no_notice_without_a_signal_and_none_for_a_drain_under_allow() -> None:
    quiet = decide(taskrun({"attempt": 1}), [running(1)], NODES, NOW, CONFIG, node_info=nodes(spot_1={"ready": True}))
    assert quiet.notify == []
    allow = taskrun({"attempt": 1}, disruption={"voluntary": "Allow"})
    cordoned = nodes(spot_1={"ready": True, "unschedulable": True})
    d = decide(allow, [running(1)], NODES, NOW, CONFIG, node_info=cordoned, checkpoints=Stored())
    assert d.notify == []
    assert d.stop == []


def test_a_drain_taint_waits_for_a_checkpoint_committed_after_the_notice_then_stops_the_pod() -> None:
    # Karpenter's drain taint on a cordoned node: a drain is under way, the operator moves the task.
    tr = taskrun({"attempt": 2, "accountedAttempt": 1, "phase": "Running", "disruptionBudget": "train"})
    draining = nodes(spot_1={"ready": True, "unschedulable": True, "taints": ["karpenter.sh/disrupted"]})
    storage = Stored(checkpoint(2, 1, "2026-11-27T11:59:00+00:00"))
    first = decide(tr, [running(2)], NODES, NOW, CONFIG, node_info=draining, checkpoints=storage)
    assert [p for p, _ in first.notify] == ["train-a2"]
    told = json.loads(first.notify[0][1])
    assert (told["kind"], told["reason"]) == ("Drain", "karpenter.sh/disrupted")
    assert first.stop == []
    assert first.requeue_after == 2.0
    assert first.status["drain"] == {
        "pod": "train-a2",
        "since": "2026-11-27T12:00:00Z",
        "checkpointAtNotice": "00002-00001",
    }
    pod = noticed(running(2), "Drain", "karpenter.sh/disrupted")
    waiting = decide(apply(tr, first), [pod], NODES, LATER, CONFIG, node_info=draining, checkpoints=storage)
    assert waiting.stop == []
    assert waiting.notify == []
    storage.infos.append(checkpoint(2, 2, "2026-11-27T12:00:04+00:00"))
    done = decide(apply(tr, waiting), [pod], NODES, LATER, CONFIG, node_info=draining, checkpoints=storage)
    assert done.stop == [("train-a2", "Drained")]
    assert any("committed after the notice" in message for _, _, message in done.events)


CORDONED = nodes(spot_1={"ready": True, "unschedulable": True, "taints": ["node.kubernetes.io/unschedulable"]})
UNCORDONED = nodes(spot_1={"ready": True})


def passes(tr: Obj, pod: Obj, storage: Stored, *steps: tuple[float, Any]) -> list[Any]:
    """Passes at NOW + each step's seconds, on each step's node facts, each from the status before;
    `pod` takes the notice annotation of the pass that gives one (the controller's patch)."""
    decisions = []
    for seconds, facts in steps:
        d = decide(
            tr, [pod], NODES, NOW + datetime.timedelta(seconds=seconds), CONFIG, node_info=facts, checkpoints=storage
        )
        for name, annotation in d.notify:
            assert name == pod["metadata"]["name"]
            pod = copy.deepcopy(pod)
            pod["metadata"].setdefault("annotations", {})["spotrun.dev/notice"] = annotation
        tr = apply(tr, d)
        decisions.append(d)
    return decisions


@pytest.mark.parametrize(
    ("commits_at", "floors"),
    [
        # A checkpoint at 4 s (after the notice at 0 s) opens the budget for 60 s; it closes at 64 s.
        (4.0, [1, 1, 0, 0, 1, 1]),
        # No checkpoint at all: the budget opens at the timeout (120 s after the notice), once.
        (None, [1, 1, 1, 1, 0, 1]),
    ],
)
def test_a_cordon_alone_never_stops_the_pod_and_opens_the_budget_after_a_fresh_checkpoint(
    commits_at: float | None, floors: list[int]
) -> None:
    tr = taskrun({"attempt": 1, "phase": "Running", "disruptionBudget": "train"})
    storage = Stored(checkpoint(1, 1, "2026-11-27T11:59:00+00:00"))
    if commits_at is not None:  # committed by the pass after 4 s: the task's checkpoint on the notice
        storage.infos.append(checkpoint(1, 2, "2026-11-27T12:00:04+00:00"))
        late = storage.infos.pop()
    decisions = []
    pod = running(1)
    for at in [0.0, 2.0, 5.0, 30.0, 121.0, 190.0]:
        if commits_at is not None and at > commits_at and late not in storage.infos:
            storage.infos.append(late)
        (d,) = passes(tr, pod, storage, (at, CORDONED))
        if d.notify:
            pod = noticed(pod, "Drain", "Cordoned")
        tr = apply(tr, d)
        decisions.append(d)
    assert json.loads(decisions[0].notify[0][1])["reason"] == "Cordoned"
    assert all(d.stop == [] for d in decisions), "a cordon stops new scheduling, not the pod"
    assert "drain" not in decisions[-1].status
    assert [d.budget_min_available for d in decisions] == floors
    assert sum(e[1] == "EvictionWindowOpened" for d in decisions for e in d.events) == 1
    assert all(d.requeue_after is not None and d.requeue_after <= 2.0 for d in decisions)


def test_an_uncordon_withdraws_the_notice_and_closes_the_budget() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running", "disruptionBudget": "train"})
    storage = Stored(checkpoint(1, 1, "2026-11-27T11:59:00+00:00"))
    told, opened = passes(tr, running(1), storage, (0.0, CORDONED), (130.0, CORDONED))
    assert [name for name, _ in told.notify] == ["train-a1"]
    assert opened.budget_min_available == 0  # the timeout passed: open
    pod = noticed(running(1), "Drain", "Cordoned")
    back = decide(
        apply(tr, opened),
        [pod],
        NODES,
        NOW + datetime.timedelta(seconds=131),
        CONFIG,
        node_info=UNCORDONED,
        checkpoints=storage,
    )
    assert back.notify == [("train-a1", "")], "the notice annotation is emptied: no notice for the SDK"
    assert "notice" not in back.status
    assert "evictionWindow" not in back.status
    assert back.budget_min_available == 1
    assert any(e[1] == "NoticeWithdrawn" for e in back.events)
    assert back.stop == []
    # Emptied, the annotation reads as no notice: the next pass says nothing, a new cordon tells again.
    cleared = copy.deepcopy(pod)
    cleared["metadata"]["annotations"]["spotrun.dev/notice"] = ""
    quiet = decide(
        apply(tr, back),
        [cleared],
        NODES,
        NOW + datetime.timedelta(seconds=140),
        CONFIG,
        node_info=UNCORDONED,
        checkpoints=storage,
    )
    assert quiet.notify == []
    again = decide(
        apply(tr, quiet),
        [cleared],
        NODES,
        NOW + datetime.timedelta(seconds=150),
        CONFIG,
        node_info=CORDONED,
        checkpoints=storage,
    )
    assert [name for name, _ in again.notify] == ["train-a1"]
    assert again.budget_min_available == 1, "a new cordon waits for its own fresh checkpoint"


def test_a_reclaim_notice_that_goes_is_withdrawn() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    pod = noticed(running(1))
    d = decide(tr, [pod], NODES, NOW, CONFIG, node_info=UNCORDONED, checkpoints=Stored())
    assert d.notify == [("train-a1", "")]


def test_a_drain_gives_up_waiting_after_its_timeout() -> None:
    tr = taskrun({"attempt": 1}, disruption={"voluntary": "Checkpoint", "checkpointTimeoutSeconds": 30})
    cordoned = nodes(spot_1={"ready": True, "taints": ["karpenter.sh/disrupted"]})
    pod = noticed(running(1), "Drain", "karpenter.sh/disrupted")  # noticed at NOW
    status = {"attempt": 1, "drain": {"pod": "train-a1", "since": "2026-11-27T12:00:00Z", "checkpointAtNotice": ""}}
    before = decide(
        taskrun(status, **{"disruption": tr["spec"]["disruption"]}),
        [pod],
        NODES,
        NOW + datetime.timedelta(seconds=29),
        CONFIG,
        node_info=cordoned,
        checkpoints=Stored(broken=True),
    )
    assert before.stop == []
    after = decide(
        taskrun(status, **{"disruption": tr["spec"]["disruption"]}),
        [pod],
        NODES,
        NOW + datetime.timedelta(seconds=30),
        CONFIG,
        node_info=cordoned,
        checkpoints=Stored(broken=True),
    )
    assert after.stop == [("train-a1", "Drained")]


def drained(attempt: int) -> Obj:
    """A pod the operator stopped for a drain, terminal after its grace period."""
    pod = noticed(pod_of(attempt, "deleted"), "Drain", "Cordoned")
    pod["metadata"]["annotations"]["spotrun.dev/stopped-by"] = "Drained"
    return pod


def test_a_pod_stopped_for_a_drain_is_an_interruption_with_its_lost_work_and_the_next_attempt_starts() -> None:
    pod = drained(1)
    end = pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    end_at = datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
    pod["status"]["startTime"] = (end_at - datetime.timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit = (end_at - datetime.timedelta(seconds=3)).isoformat()
    tr = taskrun({"attempt": 1, "phase": "Running", "disruptionBudget": "train"})
    d = decide(tr, [pod], NODES, NOW, CONFIG, checkpoints=Stored(checkpoint(1, 4, commit)))
    (entry,) = d.status["attempts"]
    assert (entry["outcome"], entry["reason"]) == ("Interrupted", "Drained")
    assert entry["notice"]["kind"] == "Drain"
    assert entry["lostSeconds"] == 3.0
    assert (d.status["interruptions"], d.status["failures"], d.status["lostSeconds"]) == (1, 0, 3.0)
    assert d.status["usage"]["spotSeconds"] == 100.0
    assert d.status["checkpoint"]["id"] == "00001-00004"
    assert d.create is not None
    assert d.create["metadata"]["name"] == "train-a2"
    assert "notice" not in d.status
    assert "drain" not in d.status


@pytest.mark.parametrize(("kind", "reason"), [("Reclaim", "InterruptionNotice"), ("Drain", "Drained")])
def test_a_task_that_exits_75_after_a_notice_was_interrupted_not_failed(kind: str, reason: str) -> None:
    pod = noticed(pod_of(1, "exit-75-recoverable"), kind)
    d = decide(taskrun({"attempt": 1, "phase": "Running"}), [pod], NODES, NOW, CONFIG, checkpoints=Stored())
    assert (d.status["attempts"][0]["outcome"], d.status["attempts"][0]["reason"]) == ("Interrupted", reason)
    assert d.status["failures"] == 0
    assert d.create is not None
    plain = decide(taskrun({"attempt": 1, "phase": "Running"}), [pod_of(1, "exit-3")], NODES, NOW, CONFIG)
    assert plain.status["attempts"][0]["outcome"] == "Failed"  # without a notice a failure stays one


def test_without_storage_lost_work_is_estimated_from_what_status_last_said() -> None:
    pod = pod_of(1, "preempted")
    tr = taskrun(
        {
            "attempt": 1,
            "phase": "Running",
            "checkpoint": {"id": "00001-00001", "attempt": 1, "time": "2026-11-27T10:37:50+00:00"},
        }
    )
    d = decide(tr, [pod], NODES, NOW, CONFIG, checkpoints=Stored(broken=True))
    (entry,) = d.status["attempts"]
    assert entry["lostSecondsEstimated"] is True
    assert d.status["checkpoint"]["id"] == "00001-00001"  # kept, not wiped
    assert d.create is not None  # storage trouble never holds up the next attempt


def test_an_any_capacity_attempt_is_costed_as_the_node_it_ran_on() -> None:
    config = dataclasses.replace(CONFIG, prices=Prices(spot=0.25, on_demand=1.0))
    pod = pod_of(1, "preempted")
    pod["metadata"]["labels"]["spotrun.dev/capacity"] = "any"
    pod["status"]["startTime"] = "2026-11-27T10:36:54Z"  # 60 s before it ended
    tr = taskrun({"attempt": 1, "placement": {"pod": "train-a1", "spot": False, "instanceType": "m5.large"}})
    d = decide(tr, [pod], NODES, NOW, config, checkpoints=Stored())
    (entry,) = d.status["attempts"]
    assert (entry["capacity"], entry["instanceType"]) == ("on-demand", "m5.large")
    assert d.status["usage"] == {"spotSeconds": 0.0, "onDemandSeconds": 60.0}
    assert d.status["cost"]["savedPercent"] == 0.0


def test_checkpoint_first_runs_get_a_disruption_budget_that_goes_when_they_finish() -> None:
    first = decide(taskrun(), [], NODES, NOW, CONFIG)
    assert first.budget is not None
    assert first.budget["spec"]["minAvailable"] == 1
    assert first.budget["spec"]["selector"] == {"matchLabels": {"spotrun.dev/taskrun": "train"}}
    assert first.status["disruptionBudget"] == "train"
    done = decide(apply(taskrun(), first), [pod_of(1, "succeeded")], NODES, NOW, CONFIG)
    assert done.status["phase"] == "Succeeded"
    assert done.delete_budget == "train"
    assert "disruptionBudget" not in done.status
    allow = decide(taskrun(disruption={"voluntary": "Allow"}), [], NODES, NOW, CONFIG)
    assert allow.budget is None
    assert "disruptionBudget" not in allow.status


def test_every_container_sees_the_notice_file() -> None:
    d = decide(taskrun(checkpoint={"keep": 3, "mountPath": "/data"}), [], NODES, NOW, CONFIG)
    assert d.create is not None
    spec = d.create["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "spotrun-notice"]
    assert volume["downwardAPI"]["items"] == [
        {"path": "notice", "fieldRef": {"fieldPath": "metadata.annotations['spotrun.dev/notice']"}}
    ]
    for container in [*spec["containers"], *spec["initContainers"]]:
        assert {"name": "spotrun-notice", "mountPath": "/var/run/spotrun", "readOnly": True} in container[
            "volumeMounts"
        ]
        assert {"name": "SPOTRUN_NOTICE_FILE", "value": "/var/run/spotrun/notice"} in container["env"]


def test_an_attempt_counted_before_its_pod_ended_is_accounted_once_it_has() -> None:
    # Graceful node shutdown: the node is not Ready and the pod disrupted, so the attempt counts at
    # once (the next attempt need not wait), but the pod may still commit in its grace period.
    ending = running(1)
    ending["status"]["startTime"] = "2026-11-27T11:59:00Z"
    ending["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]
    storage = Stored(checkpoint(1, 1, "2026-11-27T11:59:30+00:00"))
    tr = taskrun({"attempt": 1, "phase": "Running"})
    first = decide(tr, [ending], {**NODES, "spot-1": False}, NOW, CONFIG, checkpoints=storage)
    (entry,) = first.status["attempts"]
    assert entry["outcome"] == "Interrupted"
    assert entry["accountPending"] is True
    assert "lostSeconds" not in entry
    assert "lostSeconds" not in first.status
    assert first.create is not None  # the replacement does not wait for the accounting
    # Its SIGTERM callback committed at 11:59:58; the pod ended at 12:00:00.
    storage.infos.append(checkpoint(1, 2, "2026-11-27T11:59:58+00:00"))
    ended = pod_of(1, "preempted")
    ended["status"]["startTime"] = "2026-11-27T11:59:00Z"
    ended["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-11-27T12:00:00Z"
    later = decide(apply(tr, first), [ended, running(2, "spot-2")], NODES, LATER, CONFIG, checkpoints=storage)
    (settled,) = later.status["attempts"]
    assert "accountPending" not in settled
    assert settled["lostSeconds"] == 2.0
    assert later.status["lostSeconds"] == 2.0
    assert later.status["usage"]["spotSeconds"] == 60.0
    again = decide(apply(tr, later), [ended, running(2, "spot-2")], NODES, LATER, CONFIG, checkpoints=storage)
    assert again.status["lostSeconds"] == 2.0  # once, not again


def over_time(tr: Obj, storage: Stored, commits: dict[float, Obj], seconds: list[float]) -> list[Any]:
    """Passes at NOW + each of `seconds` on a node with no notice; `commits[t]` is committed just before t."""
    decisions = []
    for at in seconds:
        if at in commits:
            storage.infos.append(commits[at])
        (d,) = passes(tr, running(1), storage, (at, UNCORDONED))
        tr = apply(tr, d)
        decisions.append(d)
    return decisions


def test_consolidation_never_keeps_the_budget_closed_for_the_whole_run() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running", "disruptionBudget": "train"})
    storage = Stored(checkpoint(1, 1, "2026-11-27T11:59:00+00:00"))
    commits = {5.0: checkpoint(1, 2, "2026-11-27T12:00:04+00:00"), 75.0: checkpoint(1, 3, "2026-11-27T12:01:14+00:00")}
    decisions = over_time(tr, storage, commits, [0.0, 5.0, 30.0, 75.0, 600.0])
    assert [d.budget_min_available for d in decisions] == [1, 1, 1, 1, 1]
    assert all("evictionWindow" not in d.status for d in decisions)
    assert storage.reads == 0, "Never reads no storage for it"


def test_consolidation_after_checkpoint_opens_the_budget_for_a_window_after_each_fresh_checkpoint() -> None:
    spec = {"disruption": {"consolidation": "AfterCheckpoint", "evictionWindowSeconds": 60}}
    tr = taskrun({"attempt": 1, "phase": "Running", "disruptionBudget": "train"}, **spec)
    storage = Stored(checkpoint(1, 1, "2026-11-27T11:59:00+00:00"))  # before the operator first looked
    commits = {5.0: checkpoint(1, 2, "2026-11-27T12:00:04+00:00"), 75.0: checkpoint(1, 3, "2026-11-27T12:01:14+00:00")}
    decisions = over_time(tr, storage, commits, [0.0, 5.0, 30.0, 70.0, 75.0, 140.0])
    # The first read only records what is there; each newer checkpoint opens the budget for 60 s.
    assert [d.budget_min_available for d in decisions] == [1, 0, 0, 1, 0, 1]
    assert [e[1] for d in decisions for e in d.events] == ["EvictionWindowOpened", "EvictionWindowOpened"]
    assert decisions[1].status["evictionWindow"]["checkpoint"] == "00001-00002"
    assert decisions[1].requeue_after == 5.0  # storage is read every few seconds for a fresh checkpoint
    assert all(d.stop == [] and d.notify == [] for d in decisions)
    # A gang's budget closes at its size, and opens to 0.
    gang = taskrun({"attempt": 1, "phase": "Running", "disruptionBudget": "train"}, replicas=2, **spec)
    closed = decide(gang, [], NODES, NOW, CONFIG, checkpoints=Stored())
    assert closed.budget_min_available == 2


def test_a_checkpoint_of_an_earlier_attempt_opens_no_window() -> None:
    spec = {"disruption": {"consolidation": "AfterCheckpoint"}}
    tr = taskrun({"attempt": 2, "accountedAttempt": 1, "phase": "Running", "disruptionBudget": "train"}, **spec)
    storage = Stored()
    first = decide(tr, [running(2)], NODES, NOW, CONFIG, node_info=UNCORDONED, checkpoints=storage)
    storage.infos.append(checkpoint(1, 9, "2026-11-27T12:00:01+00:00"))  # a late commit of attempt 1
    later = decide(apply(tr, first), [running(2)], NODES, LATER, CONFIG, node_info=UNCORDONED, checkpoints=storage)
    assert later.budget_min_available == 1


def test_a_pass_never_changes_the_taskrun_it_was_given() -> None:
    """decide() is pure: a pass whose decision is dropped (held for a storage read, or a write that
    conflicted) must leave the cached TaskRun as it was, or the next pass starts from a status that
    was never written (here: an attempt accounted in memory only, its lost work and usage lost)."""
    ending = running(1)
    ending["status"]["startTime"] = "2026-11-27T11:59:00Z"
    ending["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]
    storage = Stored(checkpoint(1, 1, "2026-11-27T11:59:30+00:00"))
    tr = taskrun({"attempt": 1, "phase": "Running"})
    counted = apply(tr, decide(tr, [ending], {**NODES, "spot-1": False}, NOW, CONFIG, checkpoints=storage))
    ended = pod_of(1, "preempted")
    ended["status"]["startTime"] = "2026-11-27T11:59:00Z"
    ended["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-11-27T12:00:00Z"
    before = copy.deepcopy(counted)
    dropped = decide(counted, [ended, running(2, "spot-2")], NODES, LATER, CONFIG, checkpoints=storage)
    assert dropped.status["lostSeconds"] == 30.0  # from the commit at 11:59:30 to the end at 12:00:00
    assert counted == before, "the pass changed the TaskRun it was given"
    again = decide(counted, [ended, running(2, "spot-2")], NODES, LATER, CONFIG, checkpoints=storage)
    assert again.status["lostSeconds"] == 30.0  # the pass after a dropped one accounts it all the same
    assert again.status["usage"] == dropped.status["usage"]
