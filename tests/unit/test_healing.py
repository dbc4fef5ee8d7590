"""Self-healing: spot with no room, a stalled task, an OOM kill. The pure rules, then whole passes."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from spotrun_operator import healing, memory, policy
from spotrun_operator.cache import trim_pod
from spotrun_operator.config import Config
from spotrun_operator.reconcile import decide

from tests.unit.test_reconcile import CONFIG, NODES, NOW, apply, pod_of, running, taskrun
from tests.unit.test_reconcile_disruption import Stored, checkpoint

Obj = dict[str, Any]
CAPTURED = Path(__file__).resolve().parent / "pod_statuses"


def at(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending(attempt: int, *, since: float = 0, reason: str = "Unschedulable", capacity: str = "spot") -> Obj:
    """A pod the scheduler has not placed: PodScheduled False since `since` seconds after NOW."""
    pod = running(attempt)
    pod["spec"].pop("nodeName")
    pod["metadata"]["labels"]["spotrun.dev/capacity"] = capacity
    pod["metadata"]["creationTimestamp"] = iso(since - 1)
    condition = {"type": "PodScheduled", "status": "False", "reason": reason, "lastTransitionTime": iso(since)}
    condition["message"] = "0/3 nodes are available: 2 node(s) were unschedulable, 1 node(s) didn't match selector."
    pod["status"] = {"phase": "Pending", "conditions": [condition]}
    return pod


def deleted(pod: Obj, reason: str) -> Obj:
    """The pod after the operator's stop: annotated with why, then deleted (held by the finalizer)."""
    pod = copy.deepcopy(pod)
    pod["metadata"].setdefault("annotations", {})["spotrun.dev/stopped-by"] = reason
    pod["metadata"]["deletionTimestamp"] = iso(0)
    return pod


def started(attempt: int, *, at_seconds: float = 0) -> Obj:
    """A Running pod whose task container started `at_seconds` after NOW."""
    pod = running(attempt)
    pod["status"]["containerStatuses"] = [{"name": "task", "state": {"running": {"startedAt": iso(at_seconds)}}}]
    return pod


# --- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "since"),
    [
        (pending(1, since=3), at(3)),
        (pending(1, reason="SchedulingGated"), None),  # not the scheduler finding no node
        (running(1), None),  # placed
        (deleted(pending(1), "Suspended"), None),  # going
    ],
)
def test_a_pod_is_unschedulable_since_the_scheduler_said_so(pod: Obj, since: datetime.datetime | None) -> None:
    assert healing.unschedulable_since(pod) == since


@pytest.mark.parametrize(
    ("capacity", "label", "now", "expected"),
    [
        ({"type": "spot", "fallback": {"afterPendingSeconds": 30}}, "spot", 10, (False, 20.0)),
        ({"type": "spot", "fallback": {"afterPendingSeconds": 30}}, "spot", 30, (True, None)),
        ({"type": "spot", "fallback": {"afterPendingSeconds": 30}}, "spot", 99, (True, None)),
        ({"type": "spot"}, "spot", 99, (False, None)),  # no fallback asked for
        ({"type": "spot", "fallback": {"afterInterruptions": 2}}, "spot", 99, (False, None)),
        # An attempt already on on-demand (after interruptions) waits like any pending pod.
        ({"type": "spot", "fallback": {"afterPendingSeconds": 30}}, "on-demand", 99, (False, None)),
        ({"type": "any", "fallback": {"afterPendingSeconds": 30}}, "any", 99, (False, None)),
    ],
)
def test_a_spot_pod_gives_way_after_pending_seconds(
    capacity: Obj, label: str, now: float, expected: tuple[bool, float | None]
) -> None:
    assert healing.spot_fallback({"capacity": capacity}, pending(1, capacity=label), at(now)) == expected


@pytest.mark.parametrize(
    ("spec", "interruptions", "no_spot", "capacity"),
    [
        ({"capacity": {"type": "spot"}}, 5, True, "on-demand"),
        ({"capacity": {"type": "spot"}}, 0, False, "spot"),
        ({"capacity": {"type": "spot", "fallback": {"afterInterruptions": 2}}}, 2, False, "on-demand"),
        ({"capacity": {"type": "any", "fallback": {"afterInterruptions": 2}}}, 1, False, "any"),
        ({"capacity": {"type": "any", "fallback": {"afterInterruptions": 2}}}, 2, False, "on-demand"),
        ({"capacity": {"type": "any"}}, 9, True, "any"),  # any needs no pending fallback
        ({"capacity": {"type": "on-demand"}}, 9, True, "on-demand"),
    ],
)
def test_where_the_next_attempt_runs(spec: Obj, interruptions: int, no_spot: bool, capacity: str) -> None:
    assert policy.capacity_for_next_attempt(spec, interruptions, no_spot_capacity=no_spot) == capacity


@pytest.mark.parametrize(
    ("pod", "newest", "deadline"),
    [
        (started(1, at_seconds=0), None, at(60)),  # from the task's start
        (started(2, at_seconds=0), checkpoint(2, 1, iso(40)), at(100)),  # from its newest commit
        (started(2, at_seconds=50), checkpoint(1, 9, iso(40)), at(110)),  # an earlier attempt's commit does not count
        (started(2, at_seconds=0), checkpoint(2, 1, iso(500)), at(60 + 60)),  # a node clock ahead counts as now
        (running(1), None, None),  # the task has not started (no startedAt)
        (pending(1), None, None),
    ],
)
def test_the_progress_deadline_counts_from_the_start_or_the_newest_commit(
    pod: Obj, newest: Obj | None, deadline: datetime.datetime | None
) -> None:
    attempt = int(pod["metadata"]["labels"]["spotrun.dev/attempt"])
    assert healing.progress_deadline({"progressDeadlineSeconds": 60}, pod, attempt, newest, at(60)) == deadline
    assert healing.progress_deadline({}, pod, attempt, newest, at(60)) is None


def test_the_task_starts_when_its_container_did_not_when_the_pod_did() -> None:
    pod = started(1, at_seconds=20)
    pod["status"]["startTime"] = iso(0)  # the kubelet took it at 0, then pulled the image for 20 s
    assert healing.task_started(pod) == at(20)


# --- no spot capacity ------------------------------------------------------------------------


FALLBACK = {"type": "spot", "fallback": {"afterPendingSeconds": 30}}


def test_a_spot_pod_with_no_room_waits_then_gives_way_to_on_demand_counted_nowhere() -> None:
    tr = taskrun({"attempt": 1, "phase": "Pending"}, capacity=FALLBACK)
    early = decide(tr, [pending(1)], NODES, at(10), CONFIG)
    assert (early.stop, early.create, early.requeue_after) == ([], None, 20.0)
    assert "Unschedulable" in early.status["message"]

    due = decide(tr, [pending(1)], NODES, at(30), CONFIG)
    assert (due.reschedule, due.stop) == (["train-a1"], [])  # removed only while still unscheduled
    assert due.create is None  # the pod goes first: never two of one TaskRun
    assert "capacityFallback" not in due.status, "decided once the pod is gone, not before"

    gone = decide(apply(tr, due), [deleted(pending(1), "NoSpotCapacity")], NODES, at(31), CONFIG)
    st = gone.status
    assert st["capacityFallback"] == {"reason": "NoSpotCapacity", "attempt": 1}
    assert any(e[1] == "NoSpotCapacity" and "on-demand" in e[2] for e in gone.events)
    assert (st["failures"], st["interruptions"], st["accountedAttempt"]) == (0, 0, 1)
    (entry,) = st["attempts"]
    assert (entry["outcome"], entry["reason"], entry["capacity"]) == ("Rescheduled", "NoSpotCapacity", "spot")
    assert gone.release == ["train-a1"]
    assert gone.create is not None, "the next attempt starts at once: no backoff"
    assert gone.create["metadata"]["labels"]["spotrun.dev/capacity"] == "on-demand"
    assert gone.create["spec"]["nodeSelector"] == {"spotrun.dev/capacity": "on-demand"}
    assert st["capacity"] == "on-demand"
    assert any(e[0] == "Normal" and e[1] == "AttemptRescheduled" for e in gone.events)


def test_a_pod_bound_just_as_it_was_removed_ends_as_any_pod_does() -> None:
    """The delete was refused (bound in between) or never sent: the pod ran, with the annotation."""
    tr = taskrun({"attempt": 1, "phase": "Running"}, capacity=FALLBACK, retries=0)
    ran = pod_of(1, "exit-3")
    ran["metadata"].setdefault("annotations", {})["spotrun.dev/stopped-by"] = "NoSpotCapacity"
    d = decide(tr, [ran], NODES, NOW, CONFIG)
    assert (d.status["attempts"][0]["outcome"], d.status["failures"]) == ("Failed", 1)
    assert "capacityFallback" not in d.status


def test_a_suspended_or_finished_run_moves_nothing_off_spot() -> None:
    suspended = taskrun({"attempt": 1, "phase": "Pending"}, capacity=FALLBACK, suspend=True)
    d = decide(suspended, [pending(1)], NODES, at(3600), CONFIG)
    assert (d.reschedule, d.stop) == ([], [("train-a1", "Suspended")])
    over = taskrun({"attempt": 1, "phase": "Pending", "startTime": iso(0)}, capacity=FALLBACK, activeDeadlineSeconds=60)
    d = decide(over, [pending(1)], NODES, at(3600), CONFIG)
    assert (d.reschedule, d.status["phase"]) == ([], "Failed")


def test_the_other_deadlines_do_not_push_the_fallback_or_the_progress_deadline_back() -> None:
    tr = taskrun(
        {"attempt": 1, "phase": "Pending", "startTime": iso(0)}, capacity=FALLBACK, activeDeadlineSeconds=86400
    )
    assert decide(tr, [pending(1)], NODES, at(10), CONFIG).requeue_after == 20.0
    tr = taskrun({"attempt": 1, "phase": "Running", "startTime": iso(0)}, progressDeadlineSeconds=60)
    tr["spec"]["activeDeadlineSeconds"] = 86400
    assert decide(tr, [started(1)], NODES, at(20), CONFIG, checkpoints=Stored()).requeue_after == 40.0


def test_after_no_spot_capacity_the_rest_of_the_run_stays_on_demand() -> None:
    status = {"attempt": 2, "accountedAttempt": 1, "phase": "Running", "capacityFallback": {"attempt": 1}}
    tr = taskrun(status, capacity=FALLBACK)
    d = decide(tr, [pod_of(2, "preempted", node="ondemand-1")], NODES, NOW, CONFIG)
    assert d.create is not None
    assert d.create["metadata"]["labels"]["spotrun.dev/capacity"] == "on-demand"


def test_a_pod_unschedulable_for_another_reason_or_without_a_fallback_is_left_waiting() -> None:
    for tr, pod in (
        (taskrun({"attempt": 1, "phase": "Pending"}, capacity=FALLBACK), pending(1, reason="SchedulingGated")),
        (taskrun({"attempt": 1, "phase": "Pending"}, capacity={"type": "spot"}), pending(1)),
    ):
        d = decide(tr, [pod], NODES, at(3600), CONFIG)
        assert (d.stop, d.create) == ([], None)


def test_a_pod_deleted_before_it_was_scheduled_is_counted_and_let_go() -> None:
    """Suspending a run whose pod found no node: the pod can never run nor end by itself."""
    tr = taskrun({"attempt": 1, "phase": "Pending"}, suspend=True)
    d = decide(tr, [deleted(pending(1), "Suspended")], NODES, NOW, CONFIG)
    assert d.status["accountedAttempt"] == 1
    assert d.status["attempts"][0]["outcome"] == "Stopped"
    assert d.release == ["train-a1"]
    assert d.status["phase"] == "Suspended"


def test_any_prefers_spot_nodes_and_goes_elsewhere_at_once() -> None:
    d = decide(taskrun(capacity={"type": "any"}), [], NODES, NOW, CONFIG)
    assert d.create is not None
    pod_spec = d.create["spec"]
    assert "nodeSelector" not in pod_spec
    assert pod_spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {
            "weight": 100,
            "preference": {"matchExpressions": [{"key": "spotrun.dev/capacity", "operator": "In", "values": ["spot"]}]},
        }
    ]
    assert {"key": "spotrun.dev/capacity", "operator": "Equal", "value": "spot", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]


def test_any_keeps_the_templates_own_affinity_and_adds_the_preference() -> None:
    own = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}
    tr = taskrun(capacity={"type": "any"})
    tr["spec"]["template"]["spec"]["affinity"] = own
    d = decide(tr, [], NODES, NOW, Config(checkpoint_prefix="s3://b/", profile_name="gke", profile=_gke()))
    assert d.create is not None
    affinity = d.create["spec"]["affinity"]
    assert affinity["podAntiAffinity"] == own["podAntiAffinity"]
    (preferred,) = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["preference"]["matchExpressions"] == [
        {"key": "cloud.google.com/gke-spot", "operator": "In", "values": ["true"]}
    ]
    assert tr["spec"]["template"]["spec"]["affinity"] == own, "the TaskRun's template is not changed"


def _gke() -> Obj:
    from spotrun_operator.config import PROFILES  # noqa: PLC0415

    return PROFILES["gke"]


# --- stalls ----------------------------------------------------------------------------------


def stalling(status: Obj | None = None) -> Obj:
    return taskrun({"attempt": 1, "phase": "Running", **(status or {})}, progressDeadlineSeconds=60)


def test_before_the_deadline_storage_is_not_read_and_the_pass_comes_back_at_it() -> None:
    stored = Stored()
    d = decide(stalling(), [started(1)], NODES, at(20), CONFIG, checkpoints=stored)
    assert (d.stop, stored.reads) == ([], 0)
    assert d.requeue_after == 40.0
    assert d.status["progressDeadline"] == iso(60)


def test_at_the_deadline_a_newer_commit_moves_it_on() -> None:
    stored = Stored(checkpoint(1, 4, iso(45)))
    d = decide(stalling(), [started(1)], NODES, at(61), CONFIG, checkpoints=stored)
    assert (d.stop, stored.reads) == ([], 1)
    assert d.status["progressDeadline"] == iso(105)
    assert d.requeue_after == 44.0
    assert d.status["checkpoint"]["id"] == "00001-00004"
    # The next passes know of that commit from status: no read until the new deadline.
    again = decide(apply(stalling(), d), [started(1)], NODES, at(90), CONFIG, checkpoints=stored)
    assert (again.stop, stored.reads) == ([], 1)


def test_a_task_that_commits_nothing_for_the_deadline_is_stopped_and_counted_a_failure() -> None:
    tr = stalling()
    stored = Stored(checkpoint(1, 1, iso(-100)))  # before this attempt's task started: no progress
    d = decide(tr, [started(1)], NODES, at(60), CONFIG, checkpoints=stored)
    assert d.stop == [("train-a1", "ProgressDeadlineExceeded")]
    assert any(e[:2] == ("Warning", "ProgressDeadlineExceeded") and "(60)" in e[2] for e in d.events)

    ended = deleted(pod_of(1, "real/deleted"), "ProgressDeadlineExceeded")
    later = decide(apply(tr, d), [ended], NODES, at(70), CONFIG, checkpoints=stored)
    st = later.status
    assert (st["failures"], st["interruptions"]) == (1, 0)
    assert (st["attempts"][0]["outcome"], st["attempts"][0]["reason"]) == ("Failed", "ProgressDeadlineExceeded")
    assert st["phase"] == "Backoff", "retried with backoff under retries"


def test_a_stopped_task_that_succeeds_within_its_grace_period_succeeds() -> None:
    tr = stalling()
    ended = deleted(pod_of(1, "succeeded"), "ProgressDeadlineExceeded")
    d = decide(tr, [ended], NODES, at(70), CONFIG)
    assert (d.status["phase"], d.status["failures"]) == ("Succeeded", 0)


def test_storage_that_cannot_be_read_stops_nothing_and_is_asked_again_soon() -> None:
    stored = Stored(broken=True)
    d = decide(stalling(), [started(1)], NODES, at(61), CONFIG, checkpoints=stored)
    assert d.stop == []
    assert d.requeue_after == healing.STORAGE_RETRY_SECONDS
    assert [e[1] for e in d.events] == ["ProgressUnknown"]
    again = decide(apply(stalling(), d), [started(1)], NODES, at(76), CONFIG, checkpoints=stored)
    assert (again.stop, again.events) == ([], []), "said once"
    back = decide(apply(stalling(), again), [started(1)], NODES, at(91), CONFIG, checkpoints=Stored())
    assert back.stop == [("train-a1", "ProgressDeadlineExceeded")]
    assert "progressUnreadable" not in back.status


def test_on_a_node_that_is_not_ready_the_deadline_stops_nothing() -> None:
    """Its kubelet is not heard (a reclaim without notice, a dead node): the task cannot commit, and
    what ends the attempt is an interruption."""
    stored = Stored()
    d = decide(stalling(), [started(1)], {**NODES, "spot-1": False}, at(61), CONFIG, checkpoints=stored)
    assert (d.stop, stored.reads) == ([], 0)


def test_a_stalled_pod_whose_node_went_meanwhile_is_an_interruption() -> None:
    ended = deleted(pod_of(1, "real/preempted"), "ProgressDeadlineExceeded")
    d = decide(stalling(), [ended], NODES, at(70), CONFIG)
    assert (d.status["failures"], d.status["interruptions"]) == (0, 1)


def test_the_deadline_is_forgotten_once_the_attempt_is_over() -> None:
    tr = stalling({"progressDeadline": iso(60), "progressUnreadable": True})
    d = decide(tr, [pod_of(1, "succeeded")], NODES, at(30), CONFIG)
    assert d.status["phase"] == "Succeeded"
    assert "progressDeadline" not in d.status
    assert "progressUnreadable" not in d.status
    backoff = decide(tr, [pod_of(1, "exit-3")], NODES, at(30), CONFIG)
    assert backoff.status["phase"] == "Backoff"
    assert "progressDeadline" not in backoff.status


def test_while_a_drain_waits_for_its_checkpoint_the_deadline_waits_too() -> None:
    """The drain stops the pod itself (a checkpoint, or its timeout): an interruption, not a stall."""
    facts = {"spot-1": {"ready": True, "taints": ["karpenter.sh/disrupted"]}}
    d = decide(stalling(), [started(1)], NODES, at(61), CONFIG, node_info=facts.get, checkpoints=Stored())
    assert d.stop == []
    assert d.status["drain"]["pod"] == "train-a1"


# --- out of memory ---------------------------------------------------------------------------


def oom_taskrun(status: Obj, **on_oom: Any) -> Obj:
    tr = taskrun(status, resources={"onOOMKilled": {"factor": 2, **on_oom}})
    tr["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"memory": "64Mi", "cpu": "100m"},
        "limits": {"memory": "64Mi"},
    }
    return tr


def oom_pod(attempt: int, limit: str = "64Mi") -> Obj:
    pod = pod_of(attempt, "real/oomkilled")
    pod["spec"]["containers"][0]["resources"] = {"requests": {"memory": limit}, "limits": {"memory": limit}}
    return pod


def test_after_an_oom_kill_the_next_attempt_gets_more_memory_and_it_counts_as_a_failure() -> None:
    tr = oom_taskrun({"attempt": 1, "phase": "Running"}, maxMemory="200Mi")
    d = decide(tr, [oom_pod(1)], NODES, NOW, CONFIG)
    st = d.status
    assert (st["failures"], st["oomKills"], st["phase"]) == (1, 1, "Backoff")
    assert (st["attempts"][0]["reason"], st["attempts"][0]["exitCode"]) == ("OOMKilled", 137)
    assert st["attempts"][0]["memory"] == {"main": {"requests": "64Mi", "limits": "64Mi"}}

    retry = decide(apply(tr, d), [oom_pod(1)], NODES, at(11), CONFIG)
    assert retry.create is not None
    (task,) = retry.create["spec"]["containers"]
    assert task["resources"] == {"requests": {"memory": "128Mi", "cpu": "100m"}, "limits": {"memory": "128Mi"}}
    assert retry.status["memory"] == {"task": {"requests": "128Mi", "limits": "128Mi"}}

    # The second kill: 64Mi x 2 x 2 = 256Mi, capped at maxMemory.
    tr2 = apply(tr, retry)
    tr2["status"].update(attempt=2, phase="Running")
    second = decide(tr2, [oom_pod(1), oom_pod(2, "128Mi")], NODES, at(20), CONFIG)
    assert (second.status["failures"], second.status["oomKills"]) == (2, 2)
    third = decide(apply(tr2, second), [oom_pod(1), oom_pod(2, "128Mi")], NODES, at(60), CONFIG)
    assert third.create is not None
    assert third.create["spec"]["containers"][0]["resources"]["limits"] == {"memory": "200Mi"}
    assert tr["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"memory": "64Mi"}


def test_the_memory_an_attempt_ran_with_is_recorded_from_the_operators_trimmed_cache() -> None:
    tr = oom_taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [trim_pod(oom_pod(1))], NODES, NOW, CONFIG)
    assert d.status["attempts"][0]["memory"] == {"main": {"requests": "64Mi", "limits": "64Mi"}}
    assert d.status["oomKills"] == 1


@pytest.mark.parametrize("kills", [1, 64, 260, 10_000])
def test_any_number_of_oom_kills_gives_a_pod_the_api_server_can_hold(kills: int) -> None:
    tr = oom_taskrun({"attempt": 1, "accountedAttempt": 1, "failures": 1, "oomKills": kills, "phase": "Backoff"})
    tr["spec"]["resources"]["onOOMKilled"]["factor"] = 16
    tr["spec"]["retries"] = 10_000
    d = decide(tr, [oom_pod(1)], NODES, at(3600), CONFIG)
    assert d.create is not None
    limit = d.create["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert memory.parse_quantity(limit) <= memory.MOST_BYTES


@pytest.mark.parametrize(
    ("on_oom", "fragment"),
    [({"factor": 2, "maxMemory": "1e99999999"}, "maxMemory"), ({"factor": 1}, "factor"), ({"factor": "x"}, "factor")],
)
def test_a_memory_policy_that_cannot_be_used_fails_the_run_saying_why(on_oom: Obj, fragment: str) -> None:
    """Stored before the CRD refused it, or past what the CRD checks: a clear failure, not a pass that raises."""
    tr = oom_taskrun({"attempt": 1, "accountedAttempt": 1, "failures": 1, "oomKills": 1, "phase": "Backoff"})
    tr["spec"]["resources"]["onOOMKilled"] = on_oom
    d = decide(tr, [oom_pod(1)], NODES, at(3600), CONFIG)
    assert (d.create, d.status["phase"]) == (None, "Failed")
    assert "spec.resources.onOOMKilled" in d.status["message"]
    assert fragment in d.status["message"]


def test_a_template_memory_that_is_no_quantity_fails_the_run_naming_it() -> None:
    tr = oom_taskrun({"attempt": 1, "accountedAttempt": 1, "failures": 1, "oomKills": 1, "phase": "Backoff"})
    tr["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    d = decide(tr, [oom_pod(1)], NODES, at(3600), CONFIG)
    assert (d.create, d.status["phase"]) == (None, "Failed")
    assert d.status["message"].startswith("spec.template.spec.containers[0].resources.limits.memory: 'lots'")


def test_pod_level_memory_grows_with_the_containers() -> None:
    tr = oom_taskrun({"attempt": 1, "accountedAttempt": 1, "failures": 1, "oomKills": 1, "phase": "Backoff"})
    tr["spec"]["template"]["spec"]["resources"] = {"limits": {"memory": "100Mi"}}
    d = decide(tr, [oom_pod(1)], NODES, at(3600), CONFIG)
    assert d.create is not None
    assert d.create["spec"]["resources"] == {"limits": {"memory": "200Mi"}}


def test_removing_the_memory_policy_forgets_the_memory_it_gave() -> None:
    tr = taskrun({"attempt": 1, "accountedAttempt": 1, "failures": 1, "oomKills": 1, "phase": "Backoff", "memory": {}})
    d = decide(tr, [oom_pod(1)], NODES, at(3600), CONFIG)
    assert d.create is not None
    assert "memory" not in d.status


def test_an_oom_kill_without_the_policy_retries_with_the_same_memory() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    tr["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "64Mi"}}
    d = decide(tr, [oom_pod(1)], NODES, NOW, CONFIG)
    retry = decide(apply(tr, d), [oom_pod(1)], NODES, at(11), CONFIG)
    assert retry.create is not None
    assert retry.create["spec"]["containers"][0]["resources"] == {"limits": {"memory": "64Mi"}}
    assert "memory" not in retry.status


def test_an_oom_kill_the_failure_policy_calls_an_interruption_grows_nothing() -> None:
    rule = {"action": "Interruption", "onExitCodes": {"operator": "In", "values": [137]}}
    tr = oom_taskrun({"attempt": 1, "phase": "Running"})
    tr["spec"]["failurePolicy"] = {"rules": [rule]}
    d = decide(tr, [oom_pod(1)], NODES, NOW, CONFIG)
    assert (d.status["interruptions"], d.status.get("oomKills", 0)) == (1, 0)
    assert d.create is not None
    assert d.create["spec"]["containers"][0]["resources"]["limits"] == {"memory": "64Mi"}


def test_the_captured_oom_pod_is_what_the_real_kubelet_wrote() -> None:
    body = json.loads((CAPTURED / "real" / "oomkilled.json").read_text())
    assert body["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
