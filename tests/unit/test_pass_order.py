"""The order of a pass's steps (reconcile.EVERY_PASS, then FIRST_THAT_ENDS), where it shows in a decision."""

from __future__ import annotations

import copy
from typing import Any

from spotrun_operator import names
from spotrun_operator.reconcile import decide

from tests.unit.test_gang import rank
from tests.unit.test_reconcile import CONFIG, NODES, NOW, apply, pod_of, running, taskrun
from tests.unit.test_reconcile_disruption import LATER, Stored, checkpoint, noticed

Obj = dict[str, Any]


def test_a_drained_rank_keeps_its_reason_when_another_rank_failed_and_each_pod_is_stopped_once() -> None:
    # notify_live_pod runs before stop_rest_of_gangs: the drain stops its rank first, as Drained
    # (an interruption, not the gang's failure), and a pod already stopped is not stopped again.
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=3)
    facts = {"spot-2": {"taints": ["karpenter.sh/disrupted"], "spot": True}}
    pods = [rank(running(1, "spot-1"), 0), rank(running(1, "spot-2"), 1)]
    first = decide(tr, pods, NODES, NOW, CONFIG, node_info=facts.get, checkpoints=Stored(checkpoint(1, 3, "t")))
    assert first.stop == []
    told = [noticed(p, kind="Drain", reason="karpenter.sh/disrupted") for p in pods]
    failed = rank(pod_of(1, "exit-3", node="ondemand-1"), 2)
    fresh = Stored(checkpoint(1, 3, "t"), checkpoint(1, 4, "t2"))
    second = decide(apply(tr, first), [*told, failed], NODES, LATER, CONFIG, node_info=facts.get, checkpoints=fresh)
    assert sorted(second.stop) == [("train-a1-r0", names.REASON_GANG_ENDED), ("train-a1-r1", "Drained")]


def test_an_earlier_namesakes_pods_are_deleted_before_an_invalid_spec_fails_the_run() -> None:
    # wait_for_namesakes runs before refuse_invalid_spec: a run that fails at once would leave the
    # pods of the earlier TaskRun of its name behind (a finished run stops only its own).
    orphan = running(1)
    orphan["metadata"]["ownerReferences"] = [
        {"apiVersion": "spotrun.dev/v1alpha1", "kind": "TaskRun", "name": "train", "uid": "uid-0", "controller": True}
    ]
    invalid = taskrun(checkpoint={"mountPath": "/var/run/spotrun"})
    waiting = decide(invalid, [copy.deepcopy(orphan)], NODES, NOW, CONFIG)
    assert waiting.stop == [("train-a1", "OwnerGone")]
    assert waiting.status["phase"] == names.PENDING
    failed = decide(apply(invalid, waiting), [], NODES, NOW, CONFIG)
    assert (failed.status["phase"], failed.create) == (names.FAILED, None)
