"""Notices and drains: which node facts mean what, and when a drain stops the pod."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from spotrun_operator import disruption, names
from spotrun_operator.attempts import after_notice
from spotrun_operator.classify import Outcome
from spotrun_operator.config import DRAIN_TAINTS, NOTICE_TAINTS

Obj = dict[str, Any]
NOW = datetime.datetime(2026, 12, 2, 12, 0, 0, tzinfo=datetime.UTC)
CHECKPOINT = {"disruption": {"voluntary": "Checkpoint", "checkpointTimeoutSeconds": 60}}
ALLOW = {"disruption": {"voluntary": "Allow"}}


@pytest.mark.parametrize(
    ("node", "spec", "expected"),
    [
        (None, CHECKPOINT, None),
        ({"ready": True}, CHECKPOINT, None),
        ({"taints": ["spotrun.dev/capacity"]}, CHECKPOINT, None),
        (
            {"taints": ["aws-node-termination-handler/spot-itn"]},
            CHECKPOINT,
            ("Reclaim", "aws-node-termination-handler/spot-itn", 120),
        ),
        (
            {"taints": ["cloud.google.com/impending-node-termination"]},
            ALLOW,
            ("Reclaim", "cloud.google.com/impending-node-termination", 30),
        ),
        ({"unschedulable": True}, CHECKPOINT, ("Drain", "Cordoned", 60)),
        ({"unschedulable": True}, {}, ("Drain", "Cordoned", 120)),  # the defaults: Checkpoint, 120 s
        ({"unschedulable": True}, ALLOW, None),  # Allow: the drain evicts, as without Spotrun
        ({"taints": ["karpenter.sh/disrupted"]}, CHECKPOINT, ("Drain", "karpenter.sh/disrupted", 60)),
        ({"taints": ["ToBeDeletedByClusterAutoscaler"]}, CHECKPOINT, ("Drain", "ToBeDeletedByClusterAutoscaler", 60)),
        # The node lifecycle controller's taint for a cordon is a cordon, not a drain.
        (
            {"unschedulable": True, "taints": ["node.kubernetes.io/unschedulable"]},
            CHECKPOINT,
            ("Drain", "Cordoned", 60),
        ),
        # A drain taint on a cordoned node says a drain is under way: it wins over the plain cordon.
        (
            {"unschedulable": True, "taints": ["karpenter.sh/disrupted"]},
            CHECKPOINT,
            ("Drain", "karpenter.sh/disrupted", 60),
        ),
        # NTH taints, cordons and drains: the drain wins, bounded by the notice's 2 minutes too.
        (
            {"unschedulable": True, "taints": ["aws-node-termination-handler/spot-itn"]},
            {"disruption": {"checkpointTimeoutSeconds": 600}},
            ("Drain", "Cordoned", 90),  # the reclaim's 120 s less the pod's 30 s of grace
        ),
        (
            {"unschedulable": True, "taints": ["aws-node-termination-handler/spot-itn"]},
            ALLOW,
            ("Reclaim", "aws-node-termination-handler/spot-itn", 120),
        ),
    ],
)
def test_node_facts_give_the_notice_a_pod_needs(
    node: Obj | None, spec: Obj, expected: tuple[str, str, int] | None
) -> None:
    notice = disruption.node_notice(node, spec, NOTICE_TAINTS, DRAIN_TAINTS)
    assert (None if notice is None else (notice.kind, notice.reason, notice.seconds)) == expected


def test_a_notice_reads_back_from_the_pod_and_a_garbled_one_still_counts() -> None:
    given = disruption.Notice("Drain", "Cordoned", 60, "2026-12-02T12:00:00Z")
    pod = {"metadata": {"annotations": {"spotrun.dev/notice": given.annotation()}}}
    assert disruption.Notice.of_pod(pod) == given
    assert disruption.Notice.of_pod({"metadata": {}}) is None
    garbled = disruption.Notice.of_pod({"metadata": {"annotations": {"spotrun.dev/notice": "{oops"}}})
    assert garbled is not None
    assert garbled.reason == "Unknown"


def running(name: str = "train-a2", phase: str = "Running") -> Obj:
    return {"metadata": {"name": name}, "status": {"phase": phase}}


def step(
    drain: Obj | None, latest: tuple[bool, Obj | None], after: float, pod: Obj | None = None
) -> tuple[Obj, str | None]:
    """A pass `after` seconds into a drain first seen at NOW (`drain` None: the first pass, then)."""
    if drain is not None:
        drain = {**drain, "since": "2026-12-02T12:00:00Z"}
    return disruption.drain_step(drain, pod or running(), 2, latest, NOW + datetime.timedelta(seconds=after), 60)


@pytest.mark.parametrize(
    ("drain", "latest", "after", "stops"),
    [
        (None, (True, {"id": "00001-00003", "attempt": 1}), 0, None),  # the first pass notes the newest
        (
            {"pod": "train-a2", "checkpointAtNotice": "00001-00003"},
            (True, {"id": "00001-00003", "attempt": 1}),
            10,
            None,
        ),
        # the same attempt committed after the notice: stop now
        (
            {"pod": "train-a2", "checkpointAtNotice": "00002-00001"},
            (True, {"id": "00002-00002", "attempt": 2}),
            10,
            "committed after the notice",
        ),
        (
            {"pod": "train-a2", "checkpointAtNotice": ""},
            (True, {"id": "00002-00001", "attempt": 2}),
            10,
            "committed after the notice",
        ),
        # a checkpoint of an older attempt is not this attempt's fresh one
        ({"pod": "train-a2", "checkpointAtNotice": ""}, (True, {"id": "00001-00009", "attempt": 1}), 10, None),
        (
            {"pod": "train-a2", "checkpointAtNotice": "00002-00001"},
            (True, {"id": "00002-00001", "attempt": 2}),
            60,
            "no checkpoint within",
        ),
        # storage down: only the timeout ends the wait, counted from the notice
        ({"pod": "train-a2"}, (False, None), 30, None),
        ({"pod": "train-a2"}, (False, None), 61, "no checkpoint within"),
        # the state of another pod (an earlier attempt) does not carry over
        (
            {"pod": "train-a1", "checkpointAtNotice": "00002-00001"},
            (True, {"id": "00002-00002", "attempt": 2}),
            10,
            None,
        ),
    ],
)
def test_a_drain_stops_the_pod_after_a_fresh_checkpoint_or_the_timeout(
    drain: Obj | None, latest: tuple[bool, Obj | None], after: float, stops: str | None
) -> None:
    kept, why = step(drain, latest, after)
    assert kept["pod"] == "train-a2"
    if stops is None:
        assert why is None
    else:
        assert why is not None
        assert stops in why


def test_a_drain_stops_a_pod_that_is_not_running_at_once() -> None:
    _, why = step(None, (True, None), 0, running(phase="Pending"))
    assert why is not None
    assert "not running" in why


def test_the_node_cache_keeps_what_notices_drains_and_cost_need() -> None:
    from spotrun_operator.controller import trim_node  # noqa: PLC0415 - the controller imports the API client

    node = {
        "metadata": {
            "name": "spot-1",
            "resourceVersion": "7",
            "labels": {"spotrun.dev/capacity": "spot", "node.kubernetes.io/instance-type": "m5.large"},
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {
            "unschedulable": True,
            "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "aws-node-termination-handler/spot-itn", "value": "evt-1", "effect": "NoSchedule"},
            ],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": [{"names": ["x"]}]},
    }
    assert trim_node(node, {"spotrun.dev/capacity": "spot"}) == {
        "metadata": {"name": "spot-1", "resourceVersion": "7"},
        "ready": True,
        "taints": ["aws-node-termination-handler/spot-itn", "node.kubernetes.io/unschedulable"],
        "unschedulable": True,
        "instanceType": "m5.large",
        "spot": True,
    }
    plain = trim_node({"metadata": {"name": "od-1"}, "status": {}}, {"spotrun.dev/capacity": "spot"})
    assert plain == {"metadata": {"name": "od-1", "resourceVersion": None}, "ready": False, "spot": False}


@pytest.mark.parametrize(
    ("notice_kind", "outcome", "reason"),
    [
        # A kubectl drain let through by the budget's window after the task checkpointed: Drained.
        ("Drain", Outcome("Interrupted", "EvictionByEvictionAPI"), "Drained"),
        # A reclaim notice is the cloud's: the eviction keeps its own reason.
        ("Reclaim", Outcome("Interrupted", "EvictionByEvictionAPI"), "EvictionByEvictionAPI"),
        ("Drain", Outcome("Interrupted", "TerminationByKubelet"), "TerminationByKubelet"),
        (None, Outcome("Interrupted", "EvictionByEvictionAPI"), "EvictionByEvictionAPI"),
    ],
)
def test_an_eviction_after_a_drains_notice_is_drained(notice_kind: str | None, outcome: Outcome, reason: str) -> None:
    pod: dict[str, Any] = {"metadata": {"annotations": {}}}
    if notice_kind:
        given = disruption.Notice(notice_kind, "Cordoned", 60, "2026-12-08T00:00:00Z")
        pod["metadata"]["annotations"][names.ANNOTATION_NOTICE] = given.annotation()
    assert after_notice(pod, outcome).reason == reason
