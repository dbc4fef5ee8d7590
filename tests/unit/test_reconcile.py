"""The reconcile decision, without a cluster: (TaskRun, pods, nodes, now) -> decision."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from spotrun_operator.config import Config
from spotrun_operator.reconcile import Decision, decide, refused, unseen_attempts
from spotrun_operator.status import changed

Obj = dict[str, Any]
NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.UTC)
CONFIG = Config(checkpoint_prefix="s3://bucket/runs/", checkpoint_secret="s3-creds")
CAPTURED = Path(__file__).resolve().parent / "pod_statuses"
NODES = {"spot-1": True, "spot-2": True, "ondemand-1": True}  # name -> Ready


def taskrun(status: Obj | None = None, **spec: Any) -> Obj:
    return {
        "metadata": {"name": "train", "namespace": "ml", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "task", "image": "img", "command": ["python", "t.py"]}]}},
            "retries": 2,
            "maxInterruptions": 20,
            "backoff": {"initialSeconds": 10, "factor": 2, "maxSeconds": 600},
            "capacity": {"type": "spot"},
            "checkpoint": {"keep": 3},
            **spec,
        },
        "status": status or {},
    }


def pod_of(attempt: int, captured: str, *, node: str = "spot-1", finalizer: bool = True) -> Obj:
    pod: Obj = json.loads((CAPTURED / f"{captured}.json").read_text())
    pod["metadata"].update(
        name=f"train-a{attempt}",
        namespace="ml",
        labels={"spotrun.dev/taskrun": "train", "spotrun.dev/attempt": str(attempt), "spotrun.dev/capacity": "spot"},
        ownerReferences=[{"uid": "uid-1", "controller": True}],
        finalizers=["spotrun.dev/accounting"] if finalizer else [],
    )
    pod["spec"]["nodeName"] = node
    return pod


def running(attempt: int, node: str = "spot-1") -> Obj:
    pod = pod_of(attempt, "exit-3", node=node)
    pod["status"] = {"phase": "Running", "containerStatuses": [{"name": "main", "state": {"running": {}}}]}
    pod["metadata"].pop("deletionTimestamp", None)
    return pod


def apply(tr: Obj, decision: Decision) -> Obj:
    """What the handler does with the decision's status: the next pass starts from it."""
    following = copy.deepcopy(tr)
    following["status"] = copy.deepcopy(decision.status)
    return following


def test_a_new_taskrun_gets_attempt_1_on_spot_with_the_contract() -> None:
    d = decide(taskrun(), [], NODES, NOW, CONFIG)
    assert d.create is not None
    pod = d.create
    assert pod["metadata"]["name"] == "train-a1"
    assert pod["metadata"]["ownerReferences"][0] == {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TaskRun",
        "name": "train",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert pod["metadata"]["finalizers"] == ["spotrun.dev/accounting"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["nodeSelector"] == {"spotrun.dev/capacity": "spot"}
    assert {"key": "spotrun.dev/capacity", "operator": "Equal", "value": "spot", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SPOTRUN_ATTEMPT"] == "1"
    assert env["SPOTRUN_CHECKPOINT_URI"] == "s3://bucket/runs/ml/train/"
    assert env["SPOTRUN_GRACE_SECONDS"] == "30"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert (d.status["phase"], d.status["attempt"], d.status["capacity"]) == ("Pending", 1, "spot")


def test_an_interruption_is_replaced_at_once_and_costs_no_retry() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [pod_of(1, "preempted")], NODES, NOW, CONFIG)
    assert (d.status["interruptions"], d.status["failures"]) == (1, 0)
    assert d.create is not None
    assert d.create["metadata"]["name"] == "train-a2"
    assert d.release == ["train-a1"]
    assert d.status["attempts"][0]["reason"] == "TerminationByKubelet"


def test_a_failure_waits_out_the_backoff_then_retries() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [pod_of(1, "exit-3")], NODES, NOW, CONFIG)
    assert (d.status["failures"], d.status["phase"], d.create) == (1, "Backoff", None)
    assert d.requeue_after == 10
    later = decide(
        apply(tr, d), [pod_of(1, "exit-3", finalizer=False)], NODES, NOW + datetime.timedelta(seconds=11), CONFIG
    )
    assert later.create is not None
    assert later.status["failures"] == 1  # counted once, not again
    assert later.create["metadata"]["name"] == "train-a2"


def test_used_up_retries_fail_the_run_saying_which_budget() -> None:
    tr = taskrun({"attempt": 3, "accountedAttempt": 2, "failures": 2, "phase": "Running"})
    d = decide(tr, [pod_of(3, "exit-3")], NODES, NOW, CONFIG)
    assert d.status["phase"] == "Failed"
    assert d.create is None
    assert "3 failures used up retries (2)" in d.status["message"]
    assert any(c["type"] == "Failed" and c["reason"] == "RetriesExhausted" for c in d.status["conditions"])


def test_never_two_live_pods_while_the_old_one_terminates() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    evicted = pod_of(1, "evicted")  # DisruptionTarget set, still running on a live node
    d = decide(tr, [evicted], NODES, NOW, CONFIG)
    assert d.status["interruptions"] == 0  # counted when it ends: it may yet succeed
    assert d.create is None
    assert "waiting for pod train-a1 to terminate" in d.status["message"]
    assert d.release == []  # its finalizer stays until it is terminal, so its end stays readable
    ended = decide(apply(tr, d), [pod_of(1, "real/evicted")], NODES, NOW, CONFIG)
    assert ended.status["interruptions"] == 1
    assert ended.status["attempts"][0]["reason"] == "EvictionByEvictionAPI"
    assert ended.create is not None


def test_a_success_in_the_grace_period_is_kept_not_rerun() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [pod_of(1, "evicted")], NODES, NOW, CONFIG)
    finished = pod_of(1, "evicted")  # the task saw the SIGTERM and returned its result
    finished["status"]["phase"] = "Succeeded"
    finished["status"]["containerStatuses"] = [
        {"name": "main", "state": {"terminated": {"exitCode": 0, "message": '{"result": 42}'}}}
    ]
    done = decide(apply(tr, d), [finished], NODES, NOW, CONFIG)
    assert (done.status["phase"], done.status["result"], done.status["interruptions"]) == ("Succeeded", 42, 0)
    assert done.create is None


def test_a_pod_on_a_not_ready_node_is_counted_and_replaced_without_waiting_for_it() -> None:
    # Its kubelet is dead: its grace period will never end. Fencing keeps a survivor from writing.
    tr = taskrun({"attempt": 1, "phase": "Running"})
    nodes = {**NODES, "spot-1": False}
    d = decide(tr, [pod_of(1, "killed")], nodes, NOW, CONFIG)
    assert d.status["interruptions"] == 1
    assert d.status["attempts"][0]["reason"] == "DeletionByTaintManager"
    assert d.force_delete == []  # its node exists: its process may still run, so it is not force-deleted
    assert d.create is not None
    assert d.create["metadata"]["name"] == "train-a2"
    stuck = decide(apply(tr, d), [pod_of(1, "killed"), running(2, "spot-2")], nodes, NOW, CONFIG)
    assert (stuck.status["interruptions"], stuck.status["podName"], stuck.create) == (1, "train-a2", None)


def test_a_pod_on_a_node_that_is_gone_is_force_deleted_and_replaced_once_it_is_gone() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    stuck = pod_of(1, "killed", node="gone-node")
    d = decide(tr, [stuck], NODES, NOW, CONFIG)
    assert d.force_delete == ["train-a1"]
    assert d.create is None  # not in the same pass: the old pod must be gone first (issue 9, item 15)
    assert d.status["interruptions"] == 1
    assert "waiting for pod train-a1 to be deleted" in d.status["message"]
    assert d.requeue_after is not None
    assert d.requeue_after <= 1
    still_there = decide(apply(tr, d), [stuck], NODES, NOW, CONFIG)
    assert (still_there.create, still_there.status["interruptions"]) == (None, 1)
    gone = decide(apply(tr, d), [], NODES, NOW, CONFIG)
    assert gone.create is not None
    assert gone.create["metadata"]["name"] == "train-a2"
    assert gone.status["interruptions"] == 1


def test_a_pass_after_a_crash_adopts_the_pod_it_created() -> None:
    # The operator created train-a2 and died before writing status.attempt = 2.
    tr = taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [pod_of(1, "preempted"), running(2, "spot-2")], NODES, NOW, CONFIG)
    assert d.create is None
    assert d.status["attempt"] == 2
    assert d.status["interruptions"] == 1
    assert d.status["phase"] == "Running"


def test_the_same_pass_twice_counts_once() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    pods = [pod_of(1, "preempted")]
    first = decide(tr, pods, NODES, NOW, CONFIG)
    second = decide(apply(tr, first), [*pods, running(2, "spot-2")], NODES, NOW, CONFIG)
    assert second.status["interruptions"] == 1
    assert second.create is None


def test_fallback_to_on_demand_after_n_interruptions() -> None:
    tr = taskrun(
        {"attempt": 2, "accountedAttempt": 1, "interruptions": 1},
        capacity={"type": "spot", "fallback": {"afterInterruptions": 2}},
    )
    d = decide(tr, [pod_of(2, "preempted")], NODES, NOW, CONFIG)
    assert d.create is not None
    assert d.create["spec"]["nodeSelector"] == {"spotrun.dev/capacity": "on-demand"}
    assert "tolerations" not in d.create["spec"]
    assert d.status["capacity"] == "on-demand"


def test_too_many_interruptions_fail_the_run() -> None:
    tr = taskrun({"attempt": 3, "accountedAttempt": 2, "interruptions": 2}, maxInterruptions=2)
    d = decide(tr, [pod_of(3, "preempted")], NODES, NOW, CONFIG)
    assert d.status["phase"] == "Failed"
    assert "exceeded maxInterruptions (2)" in d.status["message"]


def test_suspend_stops_the_pod_and_its_end_counts_nowhere() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"}, suspend=True)
    d = decide(tr, [running(1)], NODES, NOW, CONFIG)
    assert d.stop == [("train-a1", "Suspended")]
    assert d.status["phase"] == "Suspended"
    stopped = pod_of(1, "deleted")
    stopped["metadata"]["annotations"] = {"spotrun.dev/stopped-by": "Suspended"}
    after = decide(apply(tr, d), [stopped], NODES, NOW, CONFIG)
    assert (after.status["interruptions"], after.status["failures"]) == (0, 0)
    assert after.status["attempts"][0]["outcome"] == "Stopped"
    assert after.create is None
    resumed = apply(tr, after)
    resumed["spec"]["suspend"] = False
    assert decide(resumed, [stopped], NODES, NOW, CONFIG).create is not None


def test_the_deadline_fails_the_run_and_stops_the_pod() -> None:
    start = (NOW - datetime.timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tr = taskrun({"attempt": 1, "phase": "Running", "startTime": start}, activeDeadlineSeconds=60)
    d = decide(tr, [running(1)], NODES, NOW, CONFIG)
    assert d.status["phase"] == "Failed"
    assert d.stop == [("train-a1", "DeadlineExceeded")]


def test_the_deadline_does_not_run_while_suspended_and_restarts_on_resume() -> None:
    # As a batch/v1 Job: suspending stops the activeDeadlineSeconds timer, resuming starts it afresh.
    start = (NOW - datetime.timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tr = taskrun(
        {"attempt": 1, "accountedAttempt": 1, "phase": "Suspended", "startTime": start},
        activeDeadlineSeconds=60,
        suspend=True,
    )
    d = decide(tr, [], NODES, NOW, CONFIG)
    assert d.status["phase"] == "Suspended"
    assert "startTime" not in d.status
    resumed = apply(tr, d)
    resumed["spec"]["suspend"] = False
    later = NOW + datetime.timedelta(seconds=30)
    after = decide(resumed, [], NODES, later, CONFIG)
    assert after.create is not None
    assert after.status["phase"] == "Pending"
    assert after.status["startTime"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_backoff_status_names_when_the_retry_is_due_and_is_the_same_each_pass() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [pod_of(1, "exit-3")], NODES, NOW, CONFIG)
    due = (NOW + datetime.timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert d.status["retryAfter"] == due
    assert due in d.status["message"]
    waiting = apply(tr, d)
    passes = [
        decide(waiting, [pod_of(1, "exit-3")], NODES, NOW + datetime.timedelta(seconds=s), CONFIG) for s in (2, 4)
    ]
    # Nothing to write while it waits: every write would trigger another pass.
    assert not changed(waiting["status"], passes[0].status)
    assert not changed(passes[0].status, passes[1].status)
    assert passes[1].requeue_after == 6
    retried = decide(waiting, [pod_of(1, "exit-3")], NODES, NOW + datetime.timedelta(seconds=11), CONFIG)
    assert retried.create is not None
    assert "retryAfter" not in retried.status


def test_a_deleted_resume_from_source_never_freezes_the_run() -> None:
    source = {"checkpoint": {"resumeFrom": {"taskRun": "old"}}}
    # Resolved once: the source's URI is kept in status and used for every later attempt.
    tr = taskrun({}, **source)
    first = decide(tr, [], NODES, NOW, CONFIG, resume_from="s3://bucket/runs/ml/old/")
    assert first.status["checkpoint"]["resumeFrom"] == "s3://bucket/runs/ml/old/"
    after = apply(tr, first)
    # The source is gone (its TTL): the pass still counts the interruption and replaces the pod.
    d = decide(after, [pod_of(1, "preempted")], NODES, NOW, CONFIG, resume_from=None)
    assert d.status["interruptions"] == 1
    assert d.create is not None
    env = {e["name"]: e.get("value") for e in d.create["spec"]["containers"][0]["env"]}
    assert env["SPOTRUN_RESUME_FROM"] == "s3://bucket/runs/ml/old/"
    # Never resolved, and no checkpoint of its own: no pod, a condition saying why, passes go on.
    waiting = decide(taskrun({}, **source), [], NODES, NOW, CONFIG, resume_from=None)
    assert waiting.create is None
    assert waiting.requeue_after is not None
    condition = next(c for c in waiting.status["conditions"] if c["type"] == "Ready")
    assert condition["reason"] == "ResumeSourceMissing"
    assert "old" in waiting.status["message"]
    # Never resolved, but the run has a checkpoint of its own: the source no longer matters.
    own = taskrun({"attempt": 1, "accountedAttempt": 1, "checkpoint": {"id": "000001-000003"}}, **source)
    assert decide(own, [], NODES, NOW, CONFIG, resume_from=None).create is not None


def _pending(captured: str) -> Obj:
    pod = pod_of(1, captured)
    pod["metadata"].pop("deletionTimestamp", None)
    return pod


def test_a_pending_pod_shows_why_it_does_not_start() -> None:
    unschedulable = _pending("real/err-image-never-pull")
    unschedulable["spec"].pop("nodeName")
    unschedulable["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    }
    cases = [
        (unschedulable, "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        (_pending("real/err-image-never-pull"), "ErrImageNeverPull", 'image "ghcr.io/spotrun/not-imported:1" is not'),
        (_pending("real/create-container-config-error"), "CreateContainerConfigError", 'secret "absent" not found'),
    ]
    for pod, reason, message in cases:
        tr = taskrun({"attempt": 1, "phase": "Pending"})
        d = decide(tr, [pod], NODES, NOW, CONFIG)
        assert d.status["phase"] == "Pending"
        assert message in d.status["message"], d.status["message"]
        ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", reason)


def test_a_recreated_taskrun_waits_until_the_pods_of_its_namesake_are_gone() -> None:
    # `train` deleted and created again: the old run's pod (another owner UID) is still terminating
    # under the name the new run's first attempt would take. It is never adopted.
    old = running(3)
    old["metadata"]["ownerReferences"] = [
        {"apiVersion": "spotrun.dev/v1alpha1", "kind": "TaskRun", "name": "train", "uid": "uid-0", "controller": True}
    ]
    old["metadata"]["name"] = "train-a1"
    old["metadata"]["deletionTimestamp"] = "2026-11-27T12:00:30Z"
    d = decide(taskrun(), [old], NODES, NOW, CONFIG)
    assert d.create is None
    assert (d.status["attempt"], d.status["interruptions"]) == (0, 0)
    assert "waiting for pod train-a1 of an earlier TaskRun named train to be gone" in d.status["message"]
    assert d.stop == []  # already being deleted
    left = copy.deepcopy(old)
    left["metadata"].pop("deletionTimestamp")
    orphaned = decide(taskrun(), [left], NODES, NOW, CONFIG)
    # Its owner is gone; the garbage collector may miss it when the name is taken again at once.
    assert orphaned.stop == [("train-a1", "OwnerGone")]
    assert orphaned.release == ["train-a1"]
    assert orphaned.create is None
    assert d.requeue_after is not None
    gone = decide(apply(taskrun(), d), [], NODES, NOW, CONFIG)
    assert gone.create is not None
    assert gone.create["metadata"]["name"] == "train-a1"


QUOTA = 'pods "train-a1" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, limited: pods=0'


def test_a_refused_pod_is_a_condition_and_an_event_retried_with_backoff() -> None:
    tr = taskrun()
    d = refused(tr, decide(tr, [], NODES, NOW, CONFIG), 403, QUOTA, NOW)
    st = d.status
    # No attempt started: nothing to count, and the next pass does not mistake it for a vanished pod.
    assert (st["attempt"], st["interruptions"], st["failures"], st["phase"]) == (0, 0, 0, "Pending")
    assert "startTime" not in st
    assert QUOTA in st["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodRefused")
    assert d.events == [("Warning", "PodRefused", st["message"])]
    assert st["podRefusal"]["retryAfter"] == "2026-11-27T12:00:02Z"
    # Before the retry is due: nothing is created, nothing changes (no hot loop, no writes).
    waiting = apply(tr, d)
    early = decide(waiting, [], NODES, NOW + datetime.timedelta(seconds=1), CONFIG)
    assert early.create is None
    assert not changed(waiting["status"], early.status)
    assert early.requeue_after == 1
    # Refused again: the wait doubles, and the same message posts no second Event.
    due = NOW + datetime.timedelta(seconds=2)
    again = refused(waiting, decide(waiting, [], NODES, due, CONFIG), 403, QUOTA, due)
    assert again.status["podRefusal"]["count"] == 2
    assert again.status["podRefusal"]["retryAfter"] == "2026-11-27T12:00:06Z"
    assert again.events == []
    # Once the quota allows it, the pod is created and the refusal is forgotten.
    later = NOW + datetime.timedelta(seconds=7)
    created = decide(apply(waiting, again), [], NODES, later, CONFIG)
    assert created.create is not None
    assert "podRefusal" not in created.status


def test_an_invalid_pod_template_fails_the_run_with_the_api_servers_message() -> None:
    tr = taskrun()
    message = 'Pod "train-a1" is invalid: spec.containers[0].name: Invalid value: "Task": a lowercase RFC 1123 label'
    d = refused(tr, decide(tr, [], NODES, NOW, CONFIG), 422, message, NOW)
    assert d.status["phase"] == "Failed"
    assert message in d.status["message"]
    failed = next(c for c in d.status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidPodTemplate")


def test_success_reports_the_result_and_finishes() -> None:
    tr = taskrun({"attempt": 1, "phase": "Running"})
    done = pod_of(1, "succeeded")
    done["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = json.dumps({"result": {"loss": 0.1}})
    d = decide(tr, [done], NODES, NOW, CONFIG)
    assert d.status["phase"] == "Succeeded"
    assert d.status["result"] == {"loss": 0.1}
    assert d.status["completionTime"] == "2026-11-27T12:00:00Z"
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in d.status["conditions"])


def test_ttl_deletes_the_finished_run() -> None:
    tr = taskrun({"phase": "Succeeded", "completionTime": "2026-11-27T11:00:00Z"}, ttlSecondsAfterFinished=60)
    assert decide(tr, [], NODES, NOW, CONFIG).delete_taskrun
    fresh = taskrun({"phase": "Succeeded", "completionTime": "2026-11-27T11:59:30Z"}, ttlSecondsAfterFinished=60)
    d = decide(fresh, [], NODES, NOW, CONFIG)
    assert not d.delete_taskrun
    assert d.requeue_after == 30


def test_directory_mode_adds_restore_and_a_native_sync_sidecar() -> None:
    tr = taskrun(
        checkpoint={"mountPath": "/ckpt", "syncIntervalSeconds": 15, "keep": 3},
    )
    d = decide(tr, [], NODES, NOW, CONFIG, resume_from="s3://bucket/runs/ml/old/")
    assert d.create is not None
    spec = d.create["spec"]
    restore, sync = spec["initContainers"]
    assert restore["command"] == ["spotrun", "restore", "/ckpt"]
    assert (sync["command"], sync["restartPolicy"]) == (["spotrun", "sync", "/ckpt", "--interval", "15"], "Always")
    assert {"name": "spotrun-checkpoint", "emptyDir": {}} in spec["volumes"]
    assert {"name": "spotrun-checkpoint", "mountPath": "/ckpt"} in spec["containers"][0]["volumeMounts"]
    env = {e["name"]: e["value"] for e in sync["env"]}
    assert env["SPOTRUN_RESUME_FROM"] == "s3://bucket/runs/ml/old/"


def test_the_template_overrides_the_profile_placement() -> None:
    tr = taskrun()
    tr["spec"]["template"]["spec"]["nodeSelector"] = {"spotrun.dev/capacity": "spot", "zone": "a"}
    d = decide(tr, [], NODES, NOW, CONFIG)
    assert d.create is not None
    assert d.create["spec"]["nodeSelector"] == {"spotrun.dev/capacity": "spot", "zone": "a"}


def test_unset_budgets_take_the_operators_defaults() -> None:
    tr = taskrun({"attempt": 2, "accountedAttempt": 1, "failures": 1, "phase": "Running"})
    del tr["spec"]["retries"]
    d = decide(tr, [pod_of(2, "exit-3")], NODES, NOW, Config(default_retries=1))
    assert d.status["phase"] == "Failed"
    assert "used up retries (1)" in d.status["message"]
    assert decide(tr, [pod_of(2, "exit-3")], NODES, NOW, Config(default_retries=5)).status["phase"] == "Backoff"


def test_an_attempt_not_yet_counted_without_its_pod_in_the_cache_is_looked_up_live() -> None:
    assert unseen_attempts(taskrun(), []) == []  # nothing created yet
    created = taskrun({"attempt": 1, "accountedAttempt": 0})
    assert unseen_attempts(created, []) == [(1, 0)]  # created, not seen yet (or gone)
    assert unseen_attempts(created, [running(1)]) == []
    counted = taskrun({"attempt": 2, "accountedAttempt": 1})
    assert unseen_attempts(counted, [running(2)]) == []  # attempt 1 is counted: its pod may be gone
    foreign = running(2)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "an-earlier-taskrun-of-this-name"
    assert unseen_attempts(counted, [foreign]) == [(2, 0)]


def test_each_attempt_records_the_checkpoint_it_started_from() -> None:
    class Stored:  # storage holds one checkpoint of attempt 1
        def latest(self) -> Obj:
            return {"id": "00001-00004", "attempt": 1, "step": 4, "time": "2026-11-27T11:59:00+00:00", "size": 1}

        def newest_of(self, attempt: int) -> Obj:
            return self.latest()

    tr = taskrun({"attempt": 1, "phase": "Running"})
    d = decide(tr, [pod_of(1, "preempted")], NODES, NOW, CONFIG, checkpoints=Stored())
    assert d.create is not None
    assert d.status["startCheckpoint"] == {"attempt": 2, "id": "00001-00004"}
    later = apply(tr, d)
    later["status"]["phase"] = "Running"
    pods = [pod_of(1, "preempted", finalizer=False), pod_of(2, "succeeded")]
    ended = decide(later, pods, NODES, NOW, CONFIG, checkpoints=Stored())
    first, second = ended.status["attempts"]
    assert "resumedFrom" not in first
    assert second["resumedFrom"] == "00001-00004"


def test_an_attempt_that_found_no_intact_checkpoint_shows_as_a_condition_until_a_later_one_commits() -> None:
    record = {"attempt": 2, "message": "every committed checkpoint in s3://b/p failed verification (1: 00001-00004)"}

    class Stored:  # attempt 2 found attempt 1's only checkpoint corrupt and started over
        def __init__(self, unrestorable: Obj | None) -> None:
            self.unrestorable = unrestorable

        def latest(self) -> Obj:
            newest = {"id": "00001-00004", "attempt": 1, "step": 4, "time": "2026-11-27T11:59:00+00:00", "size": 1}
            return {**newest, "unrestorable": self.unrestorable} if self.unrestorable else newest

        def newest_of(self, attempt: int) -> Obj:
            return self.latest()

    tr = taskrun({"attempt": 2, "phase": "Running"})
    pods = [pod_of(1, "preempted", finalizer=False), pod_of(2, "preempted")]
    d = decide(tr, pods, NODES, NOW, CONFIG, checkpoints=Stored(record))
    (condition,) = [c for c in d.status["conditions"] if c["type"] == "CheckpointsCorrupt"]
    assert (condition["status"], condition["reason"]) == ("True", "NoIntactCheckpoint")
    assert condition["message"].startswith("attempt 2: every committed checkpoint")
    assert ("Warning", "NoIntactCheckpoint", condition["message"]) in d.events
    assert d.status["checkpoint"]["unrestorable"] == record
    again = decide(apply(tr, d), pods, NODES, NOW, CONFIG, checkpoints=Stored(record), listed=True)
    assert not [e for e in again.events if e[1] == "NoIntactCheckpoint"]  # an Event only when it flips
    cleared = decide(apply(tr, d), pods, NODES, NOW, CONFIG, checkpoints=Stored(None), listed=True)
    (condition,) = [c for c in cleared.status["conditions"] if c["type"] == "CheckpointsCorrupt"]
    assert condition["status"] == "False"


def rejected(attempt: int, node: str, captured: str = "upstream/unexpected-admission-error") -> Obj:
    """Attempt `attempt`'s pod, refused by the kubelet of `node` at admission (never started)."""
    return pod_of(attempt, captured, node=node)


@pytest.mark.parametrize(
    ("in_a_row", "wait"),
    [(1, None), (2, 5), (3, 10), (4, 20), (9, 300), (40, 300)],  # the first at once, then doubling, capped
)
def test_interruptions_in_a_row_of_attempts_that_never_started_back_off(in_a_row: int, wait: int | None) -> None:
    before = {"attempt": in_a_row, "accountedAttempt": in_a_row - 1, "interruptionsInARow": in_a_row - 1}
    tr = taskrun({**before, "phase": "Pending", "interruptions": in_a_row - 1}, maxInterruptions=100)
    d = decide(tr, [rejected(in_a_row, f"spot-{in_a_row}")], NODES, NOW, CONFIG)
    assert (d.status["interruptions"], d.status["interruptionsInARow"]) == (in_a_row, in_a_row)
    if wait is None:
        assert d.create is not None
        return
    assert d.create is None
    assert d.status["phase"] == "Backoff"
    assert d.status["retryAfter"] == (NOW + datetime.timedelta(seconds=wait)).isoformat().replace("+00:00", "Z")
    assert f"attempt {in_a_row} was interrupted before its task started, {in_a_row} in a row" in d.status["message"]
    assert d.requeue_after == wait
    assert ("Normal", "BackoffLimitNotReached", d.status["message"]) in d.events
    due = decide(apply(tr, d), [], NODES, NOW + datetime.timedelta(seconds=wait), CONFIG)
    assert due.create is not None


def test_an_interruption_of_a_task_that_ran_is_replaced_at_once_and_ends_the_row() -> None:
    tr = taskrun(
        {"attempt": 5, "accountedAttempt": 4, "phase": "Running", "interruptions": 4, "interruptionsInARow": 4}
    )
    d = decide(tr, [pod_of(5, "preempted")], NODES, NOW, CONFIG)
    assert d.status["interruptions"] == 5
    assert "interruptionsInARow" not in d.status
    assert d.create is not None


def test_a_node_that_refused_a_pod_at_admission_is_avoided_by_the_next_attempts_for_a_while() -> None:
    late = NOW + datetime.timedelta(minutes=35)  # spot-1's 30 min are over, spot-2's not
    tr = taskrun({"attempt": 1, "phase": "Pending"})
    d = decide(tr, [rejected(1, "spot-1")], NODES, NOW, CONFIG)
    assert d.status["avoidNodes"] == [{"node": "spot-1", "until": "2026-11-27T12:30:00Z"}]
    (term,) = d.pods[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["spot-1"]} in term["matchExpressions"]
    # The next one refused on another node: both avoided, each until its own time.
    later = NOW + datetime.timedelta(minutes=20)
    again = decide(apply(tr, d), [rejected(2, "spot-2", "real/outofcpu")], NODES, later, CONFIG)
    assert [e["node"] for e in again.status["avoidNodes"]] == ["spot-1", "spot-2"]
    assert again.status["phase"] == "Backoff"  # the second in a row
    after = decide(apply(tr, again), [], NODES, later + datetime.timedelta(seconds=5), CONFIG)
    assert _avoided(after) == ["spot-1", "spot-2"]
    # Past its time a node is tried again, and left out of status.
    avoided = again.status["avoidNodes"]
    past = decide(taskrun({"attempt": 2, "accountedAttempt": 2, "avoidNodes": avoided}), [], NODES, late, CONFIG)
    assert [e["node"] for e in past.status["avoidNodes"]] == ["spot-2"]
    assert _avoided(past) == ["spot-2"]


def _avoided(d: Decision) -> list[str]:
    affinity = (d.pods[0]["spec"].get("affinity") or {}).get("nodeAffinity") or {}
    terms = (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    found = [e for t in terms for e in t.get("matchExpressions") or [] if e["key"] == "kubernetes.io/hostname"]
    return [v for e in found for v in e["values"]]


def test_the_avoided_nodes_are_bounded_and_kept_in_every_term_of_the_templates_own_affinity() -> None:
    own = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, {}]}
    template = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": own}}}
    tr = taskrun({"attempt": 1, "phase": "Pending"})
    tr["spec"]["template"]["spec"].update(copy.deepcopy(template))
    avoid = [{"node": f"n{i}", "until": "2026-11-27T13:00:00Z"} for i in range(8)]
    tr["status"]["avoidNodes"] = avoid
    d = decide(tr, [rejected(1, "spot-1")], NODES, NOW, CONFIG)
    assert [e["node"] for e in d.status["avoidNodes"]] == [*(f"n{i}" for i in range(1, 8)), "spot-1"]
    terms = d.pods[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 2
    for term in terms:
        assert term["matchExpressions"][-1]["values"] == [*(f"n{i}" for i in range(1, 8)), "spot-1"]
    assert tr["spec"]["template"]["spec"]["affinity"] == template["affinity"]  # the template is not changed


def test_a_failure_or_preemption_avoids_no_node() -> None:
    for pod in (pod_of(1, "exit-3"), pod_of(1, "preempted")):
        d = decide(taskrun({"attempt": 1, "phase": "Running"}), [pod], NODES, NOW, CONFIG)
        assert "avoidNodes" not in d.status


def memory_pressure_evicted(attempt: int) -> Obj:
    pod = pod_of(attempt, "upstream/evicted-node-memory-pressure")
    pod["spec"]["containers"] = [{"name": "task", "resources": {"requests": {"memory": "1Gi"}}}]
    return pod


@pytest.mark.parametrize(
    ("on_oom", "failures", "interruptions", "oom_kills"),
    [({"factor": 2}, 1, 0, 1), (None, 0, 1, 0)],
)
def test_a_memory_pressure_eviction_over_the_request_is_an_oom_kill_under_the_memory_policy(
    on_oom: Obj | None, failures: int, interruptions: int, oom_kills: int
) -> None:
    resources = {"onOOMKilled": on_oom} if on_oom else {}
    tr = taskrun({"attempt": 1, "phase": "Running"}, resources=resources)
    tr["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"memory": "1Gi"}}
    d = decide(tr, [memory_pressure_evicted(1)], NODES, NOW, CONFIG)
    st = d.status
    assert (st["failures"], st["interruptions"], st.get("oomKills", 0)) == (failures, interruptions, oom_kills)
    if on_oom is None:
        assert d.create is not None  # an interruption: replaced at once, with the same memory
        assert d.create["spec"]["containers"][0]["resources"]["requests"]["memory"] == "1Gi"
        return
    assert st["attempts"][0]["reason"] == "Evicted"
    assert st["phase"] == "Backoff"
    retry = decide(apply(tr, d), [memory_pressure_evicted(1)], NODES, NOW + datetime.timedelta(seconds=10), CONFIG)
    assert retry.create is not None
    assert retry.create["spec"]["containers"][0]["resources"]["requests"]["memory"] == "2Gi"
