"""Gangs (spec.replicas > 1): the outcome of an attempt from its ranks', and whole passes."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from spotrun_operator import accounting, gang, names
from spotrun_operator.classify import Outcome
from spotrun_operator.podbuild import build_service
from spotrun_operator.reconcile import decide, refused, unseen_attempts

from tests.unit.test_reconcile import CONFIG, NODES, NOW, apply, pod_of, running, taskrun
from tests.unit.test_reconcile_disruption import LATER, Stored, checkpoint, noticed

Obj = dict[str, Any]
OK = (names.OUTCOME_SUCCEEDED, Outcome(names.OUTCOME_SUCCEEDED, "Completed", exit_code=0))
FAILED = (names.OUTCOME_FAILED, Outcome(names.OUTCOME_FAILED, "Error", exit_code=1))
OOM = (names.OUTCOME_FAILED, Outcome(names.OUTCOME_FAILED, "OOMKilled", exit_code=137))
GONE = (names.OUTCOME_INTERRUPTED, Outcome(names.OUTCOME_INTERRUPTED, "TerminationByKubelet"))
STOPPED = ("Stopped", Outcome(names.OUTCOME_FAILED, "Error", exit_code=143))
MOVED = (names.OUTCOME_RESCHEDULED, Outcome(names.OUTCOME_RESCHEDULED, names.REASON_NO_SPOT_CAPACITY))
RUNS = None


@pytest.mark.parametrize(
    ("ranks", "ended_at", "expected"),
    [
        ([RUNS, RUNS], {}, None),
        ([OK, RUNS], {}, None),  # rank 0 is done; rank 1 still works
        ([OK, OK], {}, (0, names.OUTCOME_SUCCEEDED)),
        ([RUNS, GONE], {}, (1, names.OUTCOME_INTERRUPTED)),  # at once: the others are stopped
        ([FAILED, GONE], {}, (1, names.OUTCOME_INTERRUPTED)),  # a peer's loss broke the collective
        ([FAILED, RUNS], {}, None),  # the rest is stopped first: its node may be the cause
        ([FAILED, STOPPED], {}, (0, names.OUTCOME_FAILED)),
        ([OOM, FAILED], {0: 5, 1: 3}, (1, names.OUTCOME_FAILED)),  # the first to end decides
        ([FAILED, OOM], {0: 5, 1: 3}, (1, names.OUTCOME_FAILED)),
        ([STOPPED, MOVED], {}, (1, names.OUTCOME_RESCHEDULED)),
        ([STOPPED, OK], {}, (0, "Stopped")),
        ([OK, OK, OK, GONE], {}, (3, names.OUTCOME_INTERRUPTED)),
    ],
)
def test_an_attempts_outcome_from_its_ranks(ranks: list[Any], ended_at: dict[int, int], expected: Any) -> None:
    def when(rank: int) -> datetime.datetime | None:
        return NOW + datetime.timedelta(seconds=ended_at[rank]) if rank in ended_at else None

    decided = gang.combine(ranks, when)
    assert (decided and decided[:2]) == expected


@pytest.mark.parametrize(
    ("ranks", "stop"), [([RUNS, RUNS], False), ([OK, RUNS], False), ([FAILED, RUNS], True), ([RUNS, GONE], True)]
)
def test_the_rest_is_stopped_once_a_rank_ends_other_than_in_success(ranks: list[Any], stop: bool) -> None:
    assert gang.stop_the_rest(ranks) is stop


def rank(pod: Obj, r: int) -> Obj:
    pod["metadata"]["name"] = f"{pod['metadata']['name']}-r{r}"
    pod["metadata"]["labels"][names.LABEL_RANK] = str(r)
    return pod


def test_a_gangs_attempt_is_n_pods_with_the_rank_contract_and_a_headless_service() -> None:
    d = decide(taskrun(replicas=3), [], NODES, NOW, CONFIG)
    assert [p["metadata"]["name"] for p in d.pods] == ["train-a1-r0", "train-a1-r1", "train-a1-r2"]
    assert d.status["podName"] == "train-a1-r0"
    for r, pod in enumerate(d.pods):
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert {k: env[k] for k in ("SPOTRUN_RANK", "RANK", "SPOTRUN_WORLD_SIZE", "WORLD_SIZE", "LOCAL_RANK")} == {
            "SPOTRUN_RANK": str(r),
            "RANK": str(r),
            "SPOTRUN_WORLD_SIZE": "3",
            "WORLD_SIZE": "3",
            "LOCAL_RANK": "0",
        }
        assert env["MASTER_ADDR"] == "train-a1-r0.train.ml.svc"
        assert env["MASTER_PORT"] == "29500"
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"train-a1-r{r}", "train")
        assert pod["metadata"]["labels"][names.LABEL_RANK] == str(r)
    assert d.service == build_service(taskrun(replicas=3))
    assert d.service["spec"]["clusterIP"] == "None"
    assert d.service["spec"]["publishNotReadyAddresses"] is True
    assert d.budget is not None
    assert d.budget["spec"]["minAvailable"] == 3  # a drain evicts no rank alone


def test_a_templates_own_master_port_wins() -> None:
    tr = taskrun(replicas=2)
    tr["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "MASTER_PORT", "value": "23456"}]
    env = decide(tr, [], NODES, NOW, CONFIG).pods[1]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "MASTER_PORT"] == ["23456"]


def test_a_single_pods_name_and_env_are_unchanged() -> None:
    pod = decide(taskrun(), [], NODES, NOW, CONFIG).pods
    assert [p["metadata"]["name"] for p in pod] == ["train-a1"]
    env = {e["name"] for e in pod[0]["spec"]["containers"][0]["env"]}
    assert not env & {"SPOTRUN_RANK", "RANK", "MASTER_ADDR"}
    assert "hostname" not in pod[0]["spec"]


def test_one_rank_preempted_stops_the_others_and_the_next_gang_waits_for_them() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=2)
    pods = [rank(running(1), 0), rank(pod_of(1, "preempted", node="spot-2"), 1)]
    d = decide(tr, pods, NODES, NOW, CONFIG)
    assert (d.status["interruptions"], d.status["failures"]) == (1, 0)
    assert d.status["attempts"][0]["rank"] == 1
    assert d.status["attempts"][0]["replicas"] == 2
    assert d.stop == [("train-a1-r0", names.REASON_GANG_ENDED)]  # SIGTERM: it joins a final checkpoint
    assert d.pods == []  # not while rank 0 still ends: it may commit the final checkpoint
    stopped = rank(pod_of(1, "exit-3"), 0)
    stopped["metadata"]["annotations"] = {names.ANNOTATION_STOPPED_BY: names.REASON_GANG_ENDED}
    later = decide(apply(tr, d), [stopped, pods[1]], NODES, NOW, CONFIG)
    assert (later.status["interruptions"], later.status["failures"]) == (1, 0)  # its exit counts nowhere
    assert [p["metadata"]["name"] for p in later.pods] == ["train-a2-r0", "train-a2-r1"]


def test_a_failed_rank_fails_the_attempt_once_the_rest_has_stopped() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=2)
    failed = rank(pod_of(1, "exit-3"), 1)
    d = decide(tr, [rank(running(1), 0), failed], NODES, NOW, CONFIG)
    assert d.status["failures"] == 0  # not yet: rank 0's end may show an interruption behind it
    assert d.stop == [("train-a1-r0", names.REASON_GANG_ENDED)]
    stopped = rank(pod_of(1, "exit-3"), 0)
    stopped["metadata"]["annotations"] = {names.ANNOTATION_STOPPED_BY: names.REASON_GANG_ENDED}
    later = decide(apply(tr, d), [stopped, failed], NODES, NOW, CONFIG)
    assert (later.status["failures"], later.status["interruptions"], later.status["phase"]) == (1, 0, "Backoff")
    assert later.status["attempts"][0]["rank"] == 1


def test_the_gang_succeeds_when_every_rank_has_and_reports_rank_0s_result() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=2)
    done = []
    for r, result in enumerate(("7", "8")):
        pod = rank(pod_of(1, "succeeded"), r)
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = '{"result": ' + result + "}"
        done.append(pod)
    half = decide(tr, [done[0], rank(running(1), 1)], NODES, NOW, CONFIG)
    assert (half.status["phase"], half.stop) == ("Running", [])
    d = decide(tr, done, NODES, NOW, CONFIG)
    assert (d.status["phase"], d.status["result"]) == ("Succeeded", 7)


def test_a_gang_created_part_way_is_completed_not_counted() -> None:
    # The pass that began attempt 2 created rank 0, then stopped before rank 1 and before status.
    tr = taskrun({"attempt": 1, "accountedAttempt": 1, "phase": "Pending", "interruptions": 1}, replicas=2)
    old = [rank(pod_of(1, "preempted", finalizer=False), r) for r in (0, 1)]
    d = decide(tr, [*old, rank(running(2), 0)], NODES, NOW, CONFIG)
    assert d.status["interruptions"] == 1
    assert [p["metadata"]["name"] for p in d.pods] == ["train-a2-r1"]
    assert d.status["attempt"] == 2
    # Once status names attempt 2, a rank without a pod in a live read is one that went: an interruption.
    gone = decide(apply(tr, d), [*old, rank(running(2), 0)], NODES, NOW, CONFIG, listed=True)
    assert gone.status["interruptions"] == 2
    assert gone.stop == [("train-a2-r0", names.REASON_GANG_ENDED)]


def test_a_notice_on_one_ranks_node_is_given_to_every_rank() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=2)
    pods = [rank(running(1, "spot-1"), 0), rank(running(1, "spot-2"), 1)]
    facts = {"spot-2": {"taints": ["aws-node-termination-handler/spot-itn"], "spot": True}}
    d = decide(tr, pods, NODES, NOW, CONFIG, node_info=facts.get)
    assert sorted(name for name, _ in d.notify) == ["train-a1-r0", "train-a1-r1"]


def test_no_spot_room_for_one_rank_moves_the_whole_gang() -> None:
    spec = {"capacity": {"type": "spot", "fallback": {"afterPendingSeconds": 60}}, "replicas": 2}
    tr = taskrun({"attempt": 1, "phase": "Pending"}, **spec)
    pending = rank(running(1), 1)
    pending["spec"].pop("nodeName")
    since = (NOW - datetime.timedelta(seconds=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pending["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": since}
        ],
    }
    d = decide(tr, [rank(running(1), 0), pending], NODES, NOW, CONFIG)
    assert d.reschedule == ["train-a1-r1"]
    assert d.stop == [("train-a1-r0", names.REASON_GANG_ENDED)]
    removed = dict(pending, metadata={**pending["metadata"], "deletionTimestamp": since})
    removed["metadata"]["annotations"] = {names.ANNOTATION_STOPPED_BY: names.REASON_NO_SPOT_CAPACITY}
    stopped = rank(pod_of(1, "exit-3"), 0)
    stopped["metadata"]["annotations"] = {names.ANNOTATION_STOPPED_BY: names.REASON_GANG_ENDED}
    later = decide(apply(tr, d), [stopped, removed], NODES, NOW, CONFIG)
    assert later.status["attempts"][0]["outcome"] == names.OUTCOME_RESCHEDULED
    assert (later.status["failures"], later.status["interruptions"]) == (0, 0)
    assert {p["metadata"]["labels"][names.LABEL_CAPACITY] for p in later.pods} == {"on-demand"}


def test_a_gangs_usage_counts_every_pod() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=2)
    one = pod_of(1, "preempted")
    ended = accounting.ended_at(one)
    assert ended is not None
    start = (ended - datetime.timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    one["status"]["startTime"] = start
    pods = [rank(pod_of(1, "preempted"), r) for r in (0, 1)]
    for pod in pods:
        pod["status"]["startTime"] = start
    d = decide(tr, pods, NODES, NOW, CONFIG)
    single = decide(taskrun({"attempt": 1, "phase": "Running"}), [one], NODES, NOW, CONFIG)
    assert single.status["usage"]["spotSeconds"] == 60
    assert d.status["usage"]["spotSeconds"] == 2 * single.status["usage"]["spotSeconds"]


def test_a_rank_the_api_server_refused_is_created_later_and_its_gang_is_counted_once_the_rest_ends() -> None:
    # Attempt 1: rank 0 was created, rank 1 refused (a quota): status still names attempt 0.
    tr = taskrun({"phase": "Pending"}, replicas=2)
    made = decide(tr, [], NODES, NOW, CONFIG)
    after = refused(tr, made, 403, "exceeded quota: pods=1", NOW)
    assert after.status["attempt"] == 0
    waiting = apply(tr, after)
    d = decide(waiting, [rank(running(1), 0)], NODES, NOW, CONFIG)
    assert d.pods == []  # the refusal's backoff first
    later = decide(waiting, [rank(running(1), 0)], NODES, NOW + datetime.timedelta(seconds=3), CONFIG)
    assert [p["metadata"]["name"] for p in later.pods] == ["train-a1-r1"]
    # Rank 0 gave up waiting for its peer: the attempt is counted, a failure, and not passed by.
    gave_up = decide(waiting, [rank(pod_of(1, "exit-3"), 0)], NODES, NOW, CONFIG)
    assert (gave_up.status["failures"], gave_up.status["accountedAttempt"], gave_up.pods) == (1, 1, [])


def test_a_drain_of_one_ranks_node_waits_for_a_fresh_checkpoint_then_moves_the_gang() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, replicas=2)
    facts = {"spot-2": {"taints": ["karpenter.sh/disrupted"], "spot": True}}
    pods = [rank(running(1, "spot-1"), 0), rank(running(1, "spot-2"), 1)]
    first = decide(tr, pods, NODES, NOW, CONFIG, node_info=facts.get, checkpoints=Stored(checkpoint(1, 3, "t")))
    assert sorted(name for name, _ in first.notify) == ["train-a1-r0", "train-a1-r1"]
    assert first.stop == []
    told = [noticed(p, kind="Drain", reason="karpenter.sh/disrupted") for p in pods]
    fresh = Stored(checkpoint(1, 3, "t"), checkpoint(1, 4, "t2"))
    second = decide(apply(tr, first), told, NODES, LATER, CONFIG, node_info=facts.get, checkpoints=fresh)
    assert sorted(second.stop) == [("train-a1-r0", names.REASON_GANG_ENDED), ("train-a1-r1", "Drained")]


@pytest.mark.parametrize(
    ("status", "pods", "listed", "interruptions", "stopped"),
    [
        # A relist or events reordered after a leader handover: the cache lacks rank 1 of a running gang.
        ({"attempt": 1, "phase": "Running"}, [rank(running(1), 0)], False, 0, []),
        ({"attempt": 1, "phase": "Running"}, [], False, 0, []),  # the cache lacks the whole gang
        # A live read that lacks it: rank 1 is gone, the attempt is an interruption and rank 0 stops.
        ({"attempt": 1, "phase": "Running"}, [rank(running(1), 0)], True, 1, ["train-a1-r0"]),
        # Counted attempts are not looked for: their pods may be gone.
        (
            {"attempt": 2, "accountedAttempt": 1, "interruptions": 1},
            [rank(running(2), 0), rank(running(2), 1)],
            False,
            1,
            [],
        ),
    ],
)
def test_a_gang_rank_missing_from_the_cache_is_never_counted_without_a_live_read(
    status: Obj, pods: list[Obj], listed: bool, interruptions: int, stopped: list[str]
) -> None:
    tr = taskrun(status, replicas=2)
    d = decide(tr, pods, NODES, NOW, CONFIG, listed=listed)
    assert d.status["interruptions"] == interruptions
    assert [name for name, _ in d.stop] == stopped
    assert d.pods == []
    if not listed:
        assert d.status.get("accountedAttempt", 0) == status.get("accountedAttempt", 0)


def test_every_rank_of_an_uncounted_attempt_the_cache_lacks_is_looked_up_live() -> None:
    tr = taskrun({"attempt": 2, "accountedAttempt": 1}, replicas=3)
    assert unseen_attempts(tr, [rank(running(2), 0), rank(running(2), 2)]) == [(2, 1)]
    assert unseen_attempts(tr, [rank(running(2), r) for r in range(3)]) == []
    assert unseen_attempts(tr, []) == [(2, 0), (2, 1), (2, 2)]
