"""TaskRun fields the CRD cannot check: one row per bad value, each refused by the pass that would
build its first pod, with a terminal status naming the field and what to write instead, and nothing
created (no pod, no gang Service, no PodDisruptionBudget)."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from typing import Any

import pytest
from spotrun_operator import podbuild, validate
from spotrun_operator.config import Config
from spotrun_operator.reconcile import Decision, decide
from spotrun_operator.status import changed

Obj = dict[str, Any]
NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=datetime.UTC)
CONFIG = Config(checkpoint_prefix="s3://bucket/runs/", checkpoint_secret="s3-creds")
NODES = {"spot-1": True, "ondemand-1": True}
TEMPLATE = "spec.template.spec"
C0 = f"{TEMPLATE}.containers[0]"
INVALID_TEMPLATE, INVALID_MEMORY, INVALID_SPEC = "InvalidPodTemplate", "InvalidMemoryPolicy", "InvalidSpec"


def container(name: str = "task", **fields: Any) -> Obj:
    return {"name": name, "image": "img", "command": ["python", "t.py"], **fields}


def taskrun(*containers: Obj, pod: Obj | None = None, **spec: Any) -> Obj:
    """A TaskRun that runs (see test_good_values_still_run) unless a row makes it bad."""
    return {
        "metadata": {"name": "train", "namespace": "ml", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
        "spec": {
            "template": {"spec": {"containers": list(containers or [container()]), **(pod or {})}},
            "retries": 2,
            "capacity": {"type": "spot"},
            **spec,
        },
        "status": {},
    }


def without_retries(tr: Obj) -> Obj:
    del tr["spec"]["retries"]
    return tr


def env(*names: str) -> list[Obj]:
    return [{"name": n, "value": "x"} for n in names]


def memory(**amounts: Any) -> Obj:
    """resources with these amounts: memory=("1Gi", "2Gi") is a request and a limit."""
    return {
        "requests": {k: v[0] for k, v in amounts.items() if v[0] is not None},
        "limits": {k: v[1] for k, v in amounts.items() if v[1] is not None},
    }


OOM = {"onOOMKilled": {"factor": 2, "maxMemory": "8Gi"}}
WITH_MEMORY = container(resources=memory(memory=("1Gi", "2Gi")))
DIRECTORY = {"mountPath": "/ckpt"}


def resolved(tr: Obj) -> str | None:
    """What the controller passes as resume_from: the source's URI, "" without one, None when the
    TaskRun it names is not found (as for every name these rows give)."""
    source = (tr["spec"].get("checkpoint") or {}).get("resumeFrom") or {}
    if source.get("uri"):
        return str(source["uri"])
    return None if source.get("taskRun") else ""


def condition(status: Obj, kind: str) -> Obj:
    found: Obj = next(c for c in status["conditions"] if c["type"] == kind)
    return found


def apply(tr: Obj, decision: Decision) -> Obj:
    following = copy.deepcopy(tr)
    following["status"] = copy.deepcopy(decision.status)
    return following


def created_nothing(d: Decision) -> bool:
    return d.pods == [] and d.create is None and d.service is None and d.budget is None


Row = tuple[Callable[[], Obj], str, str, str]  # (the TaskRun, reason, field, what the message says to write)
ROWS: dict[str, Row] = {
    # The pod template: open in the CRD (x-kubernetes-preserve-unknown-fields).
    "container name not a DNS label": (
        lambda: taskrun(container("Task_1")),
        INVALID_TEMPLATE,
        f"{C0}.name",
        "e.g. 'task'",
    ),
    "two containers of one name": (
        lambda: taskrun(container(), container()),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.containers[1].name",
        "give each its own name",
    ),
    "an init container named as directory mode's sync": (
        lambda: taskrun(pod={"initContainers": [container("spotrun-sync")]}, checkpoint=DIRECTORY),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.initContainers[0].name",
        "rename this one",
    ),
    "env not a list": (
        lambda: taskrun(container(env="A=1")),
        INVALID_TEMPLATE,
        f"{C0}.env",
        "write a list of {name, value} entries",
    ),
    "env entry without a name": (
        lambda: taskrun(container(env=[{"value": "x"}])),
        INVALID_TEMPLATE,
        f"{C0}.env[0].name",
        "give it the variable's name",
    ),
    "env SPOTRUN_ATTEMPT, the operator's": (
        lambda: taskrun(container(env=env("DEBUG", "SPOTRUN_ATTEMPT"))),
        INVALID_TEMPLATE,
        f"{C0}.env[1].name",
        "remove it",
    ),
    "env SPOTRUN_RESUME_FROM without resumeFrom": (
        lambda: taskrun(container(env=env("SPOTRUN_RESUME_FROM"))),
        INVALID_TEMPLATE,
        f"{C0}.env[0].name",
        "remove it",
    ),
    "env RANK in a gang": (
        lambda: taskrun(container(env=env("RANK")), replicas=2),
        INVALID_TEMPLATE,
        f"{C0}.env[0].name",
        "remove it",
    ),
    "a mount on the notice directory": (
        lambda: taskrun(container(volumeMounts=[{"name": "data", "mountPath": "/var/run/spotrun"}])),
        INVALID_TEMPLATE,
        f"{C0}.volumeMounts[0].mountPath",
        "mount this volume elsewhere",
    ),
    "a mount on checkpoint.mountPath": (
        lambda: taskrun(container(volumeMounts=[{"name": "data", "mountPath": "/ckpt/"}]), checkpoint=DIRECTORY),
        INVALID_TEMPLATE,
        f"{C0}.volumeMounts[0].mountPath",
        "mount this volume elsewhere",
    ),
    "a volume named as the notice volume": (
        lambda: taskrun(pod={"volumes": [{"name": "spotrun-notice", "emptyDir": {}}]}),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.volumes[0].name",
        "rename this one",
    ),
    "volumes not a list": (
        lambda: taskrun(pod={"volumes": {"name": "data"}}),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.volumes",
        "write a list of volumes",
    ),
    "nodeSelector not a map": (
        lambda: taskrun(pod={"nodeSelector": ["zone=a"]}),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.nodeSelector",
        "write a map of label to value",
    ),
    "initContainers not a list, in directory mode": (
        lambda: taskrun(pod={"initContainers": "setup"}, checkpoint=DIRECTORY),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.initContainers",
        "write a list of containers",
    ),
    "terminationGracePeriodSeconds not a number": (
        lambda: taskrun(pod={"terminationGracePeriodSeconds": "30s"}),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.terminationGracePeriodSeconds",
        "e.g. 30",
    ),
    "a gang's hostname": (
        lambda: taskrun(pod={"hostname": "worker"}, replicas=2),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.hostname",
        "remove it",
    ),
    # Resource quantities.
    "a memory limit that is no quantity": (
        lambda: taskrun(container(resources=memory(memory=(None, "lots")))),
        INVALID_TEMPLATE,
        f"{C0}.resources.limits.memory",
        "write a quantity such as 512Mi",
    ),
    "a negative cpu request": (
        lambda: taskrun(container(resources=memory(cpu=("-1", None)))),
        INVALID_TEMPLATE,
        f"{C0}.resources.requests.cpu",
        "write a quantity such as",
    ),
    "a request above its limit": (
        lambda: taskrun(container(resources=memory(memory=("2Gi", "1Gi")))),
        INVALID_TEMPLATE,
        f"{C0}.resources.requests.memory",
        "lower the request or raise limits.memory",
    ),
    "a pod-level limit that is no quantity": (
        lambda: taskrun(pod={"resources": {"limits": {"memory": "1 Gi"}}}),
        INVALID_TEMPLATE,
        f"{TEMPLATE}.resources.limits.memory",
        "write a quantity such as",
    ),
    "resources not an object": (
        lambda: taskrun(container(resources="2Gi")),
        INVALID_TEMPLATE,
        f"{C0}.resources",
        "write an object with requests and limits",
    ),
    # The failure policy: the container a rule names.
    "a rule's containerName that is no container": (
        lambda: taskrun(
            failurePolicy={
                "rules": [
                    {"action": "Fail", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3]}}
                ]
            }
        ),
        INVALID_SPEC,
        "spec.failurePolicy.rules[0].onExitCodes.containerName",
        "name one of them, or remove containerName",
    ),
    # The memory policy.
    "onOOMKilled with no memory to grow": (
        lambda: taskrun(resources=OOM),
        INVALID_MEMORY,
        "spec.resources.onOOMKilled",
        f"set {C0}.resources.limits.memory",
    ),
    "onOOMKilled with retries 0": (
        lambda: taskrun(WITH_MEMORY, resources=OOM, retries=0),
        INVALID_MEMORY,
        "spec.resources.onOOMKilled",
        "set spec.retries to 1 or more",
    ),
    "onOOMKilled with retries unset, the operator's default 0": (
        lambda: without_retries(taskrun(WITH_MEMORY, resources=OOM)),
        INVALID_MEMORY,
        "spec.resources.onOOMKilled",
        "set spec.retries to 1 or more",
    ),
    "onOOMKilled maxMemory that is no quantity (stored before the CRD's rule)": (
        lambda: taskrun(WITH_MEMORY, resources={"onOOMKilled": {"maxMemory": "lots"}}),
        INVALID_MEMORY,
        "spec.resources.onOOMKilled.maxMemory",
        "e.g. 64Gi",
    ),
    "onOOMKilled factor 1 (stored before the CRD's rule)": (
        lambda: taskrun(WITH_MEMORY, resources={"onOOMKilled": {"factor": 1}}),
        INVALID_MEMORY,
        "spec.resources.onOOMKilled.factor",
        "write e.g. 1.5",
    ),
    # Checkpoints.
    "checkpoint.uri of another scheme (stored before the CRD's pattern)": (
        lambda: taskrun(checkpoint={"uri": "gs://bucket/runs/"}),
        INVALID_SPEC,
        "spec.checkpoint.uri",
        "write s3://BUCKET/PREFIX",
    ),
    "checkpoint.uri of the operator's own disk": (
        lambda: taskrun(checkpoint={"uri": "file:///etc/"}),
        INVALID_SPEC,
        "spec.checkpoint.uri",
        "write s3://BUCKET/PREFIX",
    ),
    "secretRef name that no Secret can have": (
        lambda: taskrun(checkpoint={"secretRef": {"name": "S3_Creds"}}),
        INVALID_SPEC,
        "spec.checkpoint.secretRef.name",
        "e.g. s3-credentials",
    ),
    "checkpoint.mountPath on the notice directory": (
        lambda: taskrun(checkpoint={"mountPath": "/var/run/spotrun"}),
        INVALID_SPEC,
        "spec.checkpoint.mountPath",
        "choose another directory",
    ),
    "resumeFrom.taskRun in another namespace": (
        lambda: taskrun(checkpoint={"resumeFrom": {"taskRun": "other/train"}}),
        INVALID_SPEC,
        "spec.checkpoint.resumeFrom.taskRun",
        "as spec.checkpoint.resumeFrom.uri instead",
    ),
    "resumeFrom.taskRun that no TaskRun can have": (
        lambda: taskrun(checkpoint={"resumeFrom": {"taskRun": "Train_1"}}),
        INVALID_SPEC,
        "spec.checkpoint.resumeFrom.taskRun",
        "write the name of a TaskRun in namespace ml",
    ),
    "resumeFrom.uri without a bucket": (
        lambda: taskrun(checkpoint={"resumeFrom": {"uri": "s3:///runs/old/"}}),
        INVALID_SPEC,
        "spec.checkpoint.resumeFrom.uri",
        "write s3://BUCKET/PREFIX",
    ),
}


@pytest.mark.parametrize(("make", "reason", "field", "instead"), list(ROWS.values()), ids=list(ROWS))
def test_a_bad_field_fails_the_run_naming_it_and_creates_nothing(
    make: Callable[[], Obj], reason: str, field: str, instead: str
) -> None:
    tr = make()
    assert [p.path for p in validate.problems(tr, CONFIG)] == [field]  # this row's field, and no other
    d = decide(tr, [], NODES, NOW, CONFIG, resume_from=resolved(tr))
    assert created_nothing(d)
    st = d.status
    assert (st["phase"], st["attempt"], st.get("podName")) == ("Failed", 0, None)
    message = st["message"]
    assert message.startswith(f"{field}: ")
    assert instead in message
    assert "\n" not in message
    assert (condition(st, "Failed")["status"], condition(st, "Failed")["reason"]) == ("True", reason)
    assert condition(st, "Ready") | {"lastTransitionTime": ""} == {
        "type": "Ready",
        "status": "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "",
    }
    assert d.events == [("Warning", reason, message)]
    # Terminal: the next pass creates nothing, writes nothing and sets no timer (no retry loop).
    later = decide(apply(tr, d), [], NODES, NOW + datetime.timedelta(hours=1), CONFIG, resume_from=resolved(tr))
    assert created_nothing(later)
    assert not changed(d.status, later.status)
    assert later.requeue_after is None


def test_several_bad_fields_name_the_first_and_count_the_rest() -> None:
    tr = taskrun(container("Task_1", env=env("SPOTRUN_ATTEMPT")), checkpoint={"uri": "gs://b/p"})
    d = decide(tr, [], NODES, NOW, CONFIG)
    assert created_nothing(d)
    assert d.status["message"].startswith(f"{C0}.name: 'Task_1' is invalid")
    assert d.status["message"].endswith("(and 2 more)")


GOOD: dict[str, Callable[[], Obj]] = {
    "the SDK's own settings in env": lambda: taskrun(
        container(env=env("SPOTRUN_RESULT_PATH", "SPOTRUN_CHECKPOINT_IF_CORRUPT", "SPOTRUN_NOTICE_POLL_SECONDS"))
    ),
    "a gang's own MASTER_PORT": lambda: taskrun(container(env=env("MASTER_PORT")), replicas=2),
    "RANK in a single pod": lambda: taskrun(container(env=env("RANK"))),
    "containerName of an init container": lambda: taskrun(
        pod={"initContainers": [container("setup")]},
        failurePolicy={
            "rules": [{"action": "Fail", "onExitCodes": {"containerName": "setup", "operator": "In", "values": [3]}}]
        },
    ),
    "quantities in every spelling": lambda: taskrun(
        container(resources=memory(memory=("1.5Gi", "2G"), cpu=("500m", 1), ephemeral=("1e9", None)))
    ),
    "onOOMKilled with pod-level memory only": lambda: taskrun(
        pod={"resources": {"limits": {"memory": "4Gi"}}}, resources=OOM, retries=1
    ),
    "onOOMKilled with retries unset and an operator default": lambda: without_retries(
        taskrun(WITH_MEMORY, resources=OOM)
    ),
    "a template nodeSelector over the profile's": lambda: taskrun(
        pod={"nodeSelector": {"spotrun.dev/capacity": "spot"}}
    ),
    "a mount beside the notice directory": lambda: taskrun(
        container(volumeMounts=[{"name": "d", "mountPath": "/var/run/spotrun-data"}]), pod={"volumes": [{"name": "d"}]}
    ),
    "grace 0": lambda: taskrun(pod={"terminationGracePeriodSeconds": 0}),
    "a Secret and a source of dotted names": lambda: taskrun(
        checkpoint={
            "uri": "s3://bucket-1/x/",
            "secretRef": {"name": "s3.creds-v2"},
            "resumeFrom": {"taskRun": "old.run"},
        }
    ),
    "directory mode": lambda: taskrun(checkpoint={"mountPath": "/ckpt"}),
}


@pytest.mark.parametrize("make", list(GOOD.values()), ids=list(GOOD))
def test_good_values_still_run(make: Callable[[], Obj]) -> None:
    tr = make()
    config = Config(checkpoint_prefix="s3://bucket/runs/", default_retries=3)
    source = "s3://bucket/runs/ml/old.run/" if resolved(tr) is None else resolved(tr)
    d = decide(tr, [], NODES, NOW, config, resume_from=source)
    assert d.create is not None, d.status.get("message")
    assert d.status["phase"] == "Pending"


def test_the_names_refused_in_env_are_those_the_operator_sets() -> None:
    gang = taskrun(replicas=2)
    pod = podbuild.build_pod(gang, 1, "spot", CONFIG, resume_from="s3://b/old/", rank=0)
    given = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert {n for n in given if n.startswith("SPOTRUN_")} == set(podbuild.CONTRACT_ENV)
    assert set(podbuild.GANG_ENV) <= given


def test_a_spec_made_bad_while_it_ran_fails_at_the_next_attempt_and_drops_its_budget() -> None:
    tr = taskrun(container(env=env("SPOTRUN_ATTEMPT")))
    tr["status"] = {"attempt": 1, "phase": "Running", "podName": "train-a1", "disruptionBudget": "train"}
    d = decide(tr, [], NODES, NOW, CONFIG, listed=True)  # attempt 1's pod is gone: an interruption, to be replaced
    assert d.status["interruptions"] == 1
    assert created_nothing(d)
    assert d.delete_budget == "train"
    assert (d.status["phase"], condition(d.status, "Failed")["reason"]) == ("Failed", INVALID_TEMPLATE)


def test_a_live_pod_outlives_a_template_edited_to_a_bad_grace_period() -> None:
    tr = taskrun(pod={"terminationGracePeriodSeconds": "30s"})
    tr["status"] = {"attempt": 1, "phase": "Running", "podName": "train-a1"}
    pod = {
        "metadata": {
            "name": "train-a1",
            "namespace": "ml",
            "labels": {"spotrun.dev/taskrun": "train", "spotrun.dev/attempt": "1", "spotrun.dev/capacity": "spot"},
            "ownerReferences": [{"uid": "uid-1", "controller": True}],
        },
        "spec": {"nodeName": "spot-1"},
        "status": {"phase": "Running", "containerStatuses": [{"name": "task", "state": {"running": {}}}]},
    }
    d = decide(tr, [pod], NODES, NOW, CONFIG, node_info=lambda _: {"ready": True})
    assert d.status["phase"] == "Running"  # the template counts only when the next attempt is built


def test_a_resume_from_taskrun_not_there_yet_waits_saying_what_to_write() -> None:
    # Not a failure: the source may be applied after this run. The wait names the field and the way out.
    tr = taskrun(checkpoint={"resumeFrom": {"taskRun": "old"}})
    d = decide(tr, [], NODES, NOW, CONFIG, resume_from=None)
    assert created_nothing(d)
    assert d.status["phase"] == "Pending"
    assert d.status["message"].startswith("waiting for spec.checkpoint.resumeFrom.taskRun 'old': ")
    assert "spec.checkpoint.resumeFrom.uri" in d.status["message"]
    assert d.requeue_after == 10.0


ODD_VALUES = (None, 5, "x", [], {}, [5], ["x"], [{}], {"a": 5}, True, -1, 1.5)


@pytest.mark.parametrize(
    "where", ["containers", "initContainers", "volumes", "nodeSelector", "resources", "env", "volumeMounts"]
)
def test_no_json_value_in_the_template_crashes_a_pass(where: str) -> None:
    """Each either runs or fails the run with a problem: never a pass that raises, retried for ever."""
    for value in ODD_VALUES:
        for spec in ({}, {"replicas": 2}, {"checkpoint": DIRECTORY}, {"resources": OOM}):
            if where in ("env", "volumeMounts"):
                tr = taskrun(container(**{where: value}), **spec)
            else:
                tr = taskrun(container(resources=memory(memory=("1Gi", "1Gi"))), pod={where: value}, **spec)
            d = decide(tr, [], NODES, NOW, CONFIG)
            assert (d.create is None) == bool(validate.problems(tr, CONFIG)), (where, value, spec)
            assert d.create is not None or d.status["phase"] == "Failed"
