"""Bad TaskRuns are refused at `kubectl apply`, with a message that names the field and the fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client
from tests.integration.operator_fixtures import CRD, kubectl

pytestmark = pytest.mark.integration

Obj = dict[str, Any]


def good() -> Obj:
    return {
        "apiVersion": "spotrun.dev/v1alpha1",
        "kind": "TaskRun",
        "metadata": {"name": "t"},
        "spec": {"template": {"spec": {"containers": [{"name": "task", "image": "python", "command": ["true"]}]}}},
    }


def with_spec(**changes: Any) -> Obj:
    body = good()
    body["spec"].update(copy.deepcopy(changes))
    return body


def with_pod(**changes: Any) -> Obj:
    body = good()
    body["spec"]["template"]["spec"].update(changes)
    return body


BAD: list[tuple[str, Obj, list[str]]] = [
    (
        "no template",
        {"apiVersion": "spotrun.dev/v1alpha1", "kind": "TaskRun", "metadata": {"name": "t"}, "spec": {}},
        ["spec.template", "Required"],
    ),
    ("no containers", with_pod(containers=[]), ["spec.template.spec.containers", "at least 1"]),
    ("restartPolicy Always", with_pod(restartPolicy="Always"), ["spec.template.spec.restartPolicy", "Never"]),
    ("negative retries", with_spec(retries=-1), ["spec.retries", "greater than or equal to 0"]),
    ("negative maxInterruptions", with_spec(maxInterruptions=-5), ["spec.maxInterruptions"]),
    (
        "backoff max below initial",
        with_spec(backoff={"initialSeconds": 60, "maxSeconds": 10}),
        ["backoff.maxSeconds must be at least backoff.initialSeconds"],
    ),
    ("unknown capacity", with_spec(capacity={"type": "cheap"}), ["spec.capacity.type", "spot", "on-demand", "any"]),
    (
        "fallback without spot",
        with_spec(capacity={"type": "on-demand", "fallback": {"afterInterruptions": 2}}),
        ["spec.capacity.fallback", "capacity.fallback applies to capacity.type spot"],
    ),
    (
        "pending fallback with any",
        with_spec(capacity={"type": "any", "fallback": {"afterPendingSeconds": 60}}),
        ["spec.capacity.fallback", "go on-demand when spot has no room"],
    ),
    (
        "empty fallback",
        with_spec(capacity={"type": "spot", "fallback": {}}),
        ["spec.capacity.fallback", "needs afterInterruptions or afterPendingSeconds"],
    ),
    (
        "pending fallback zero",
        with_spec(capacity={"fallback": {"afterPendingSeconds": 0}}),
        ["spec.capacity.fallback.afterPendingSeconds", "greater than or equal to 1"],
    ),
    ("progress deadline zero", with_spec(progressDeadlineSeconds=0), ["spec.progressDeadlineSeconds"]),
    (
        "OOM factor 1",
        with_spec(resources={"onOOMKilled": {"factor": 1}}),
        ["spec.resources.onOOMKilled.factor", "greater than 1"],
    ),
    (
        "OOM maxMemory not a quantity",
        with_spec(resources={"onOOMKilled": {"maxMemory": "lots"}}),
        ["spec.resources.onOOMKilled.maxMemory", "should match"],
    ),
    (
        "OOM maxMemory negative",
        with_spec(resources={"onOOMKilled": {"maxMemory": "-1Gi"}}),
        ["spec.resources.onOOMKilled.maxMemory"],
    ),
    (
        "OOM maxMemory zero as a quantity",
        with_spec(resources={"onOOMKilled": {"maxMemory": "0Gi"}}),
        ["spec.resources.onOOMKilled.maxMemory", "should match"],
    ),
    (
        "OOM maxMemory beyond reason",
        with_spec(resources={"onOOMKilled": {"maxMemory": "1e99999999"}}),
        ["spec.resources.onOOMKilled.maxMemory", "should match"],
    ),
    (
        "OOM maxMemory zero",
        with_spec(resources={"onOOMKilled": {"maxMemory": 0}}),
        ["spec.resources.onOOMKilled.maxMemory", "greater than or equal to 1"],
    ),
    (
        "failurePolicy action",
        with_spec(failurePolicy={"rules": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}]}),
        ["spec.failurePolicy.rules[0].action", "Retry", "Fail", "Interruption"],
    ),
    (
        "exit code 0 with In",
        with_spec(failurePolicy={"rules": [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [0, 1]}}]}),
        ["cannot contain 0 with operator In"],
    ),
    (
        "exit code out of range",
        with_spec(failurePolicy={"rules": [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [300]}}]}),
        ["values[0]", "less than or equal to 255"],
    ),
    ("checkpoint uri not s3", with_spec(checkpoint={"uri": "gs://bucket/x"}), ["spec.checkpoint.uri", "s3://"]),
    (
        "resumeFrom both",
        with_spec(checkpoint={"resumeFrom": {"taskRun": "a", "uri": "s3://b/c"}}),
        ["exactly one of taskRun or uri"],
    ),
    (
        "relative mountPath",
        with_spec(checkpoint={"mountPath": "data"}),
        ["checkpoint.mountPath must be an absolute directory"],
    ),
    ("keep zero", with_spec(checkpoint={"keep": 0}), ["spec.checkpoint.keep", "greater than or equal to 1"]),
    ("deadline zero", with_spec(activeDeadlineSeconds=0), ["spec.activeDeadlineSeconds"]),
    ("replicas zero", with_spec(replicas=0), ["spec.replicas", "greater than or equal to 1"]),
    ("replicas too many", with_spec(replicas=129), ["spec.replicas", "less than or equal to 128"]),
    (
        "a gang in directory mode",
        with_spec(replicas=2, checkpoint={"mountPath": "/data"}),
        ["spec.checkpoint.mountPath", "directory mode) is for one pod"],
    ),
]


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    kubectl(cluster, "apply", "-f", str(CRD))
    kubectl(cluster, "wait", "--for=condition=Established", "crd/taskruns.spotrun.dev", "--timeout=60s")


@pytest.mark.parametrize(("case", "body", "fragments"), BAD, ids=[case for case, _, _ in BAD])
def test_a_bad_taskrun_is_refused_with_a_clear_message(
    crd: None, kube: Client, namespace: str, case: str, body: Obj, fragments: list[str]
) -> None:
    with pytest.raises(ApiError) as refused:
        kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)
    assert refused.value.status == 422
    for fragment in fragments:
        assert fragment in str(refused.value), f"{case}: {fragment!r} not in {refused.value}"


def test_a_good_taskrun_is_accepted_with_defaults(crd: None, kube: Client, namespace: str) -> None:
    created = kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", good())
    spec = created["spec"]
    assert "retries" not in spec  # the operator's default applies (SPOTRUN_DEFAULT_RETRIES)
    assert spec["suspend"] is False
    assert spec["backoff"] == {"initialSeconds": 10, "factor": 2, "maxSeconds": 600}
    assert spec["capacity"] == {"type": "spot"}
    assert spec["checkpoint"]["keep"] == 3
    assert spec["replicas"] == 1


def test_a_gangs_replicas_cannot_change(crd: None, kube: Client, namespace: str) -> None:
    body = with_spec(replicas=2)
    body["metadata"]["name"] = "gang"
    kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)
    with pytest.raises(ApiError) as refused:
        kube.merge_patch(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns/gang", {"spec": {"replicas": 3}})
    assert refused.value.status == 422
    assert "spec.replicas" in str(refused.value)
    assert "replicas cannot change once set" in str(refused.value)


def test_the_self_healing_fields_are_accepted(crd: None, kube: Client, namespace: str) -> None:
    body = with_spec(
        capacity={"type": "any", "fallback": {"afterInterruptions": 3}},
        progressDeadlineSeconds=600,
        resources={"onOOMKilled": {"maxMemory": "64Gi"}},
    )
    body["metadata"]["name"] = "healing"
    spec = kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)["spec"]
    assert spec["resources"]["onOOMKilled"] == {"factor": 1.5, "maxMemory": "64Gi"}
    spot = with_spec(
        capacity={"fallback": {"afterPendingSeconds": 120}}, resources={"onOOMKilled": {"maxMemory": 2**30}}
    )
    for accepted in ("0.5Gi", "1500M", "1e10", "100"):
        fine = with_spec(resources={"onOOMKilled": {"maxMemory": accepted}})
        fine["metadata"]["name"] = f"max-{accepted.lower().replace('.', '-')}"
        kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", fine)
    spot["metadata"]["name"] = "healing-spot"
    spec = kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", spot)["spec"]
    assert spec["capacity"] == {"type": "spot", "fallback": {"afterPendingSeconds": 120}}


def test_kubectl_explain_teaches_the_fields(crd: None, cluster: Cluster) -> None:
    explained = kubectl(cluster, "explain", "taskrun.spec.checkpoint").stdout
    assert "resumeFrom" in explained
    assert "Directory mode" in explained


def test_kubectl_get_shows_the_columns(crd: None, cluster: Cluster, kube: Client, namespace: str) -> None:
    kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", good())
    header = kubectl(cluster, "-n", namespace, "get", "taskruns.spotrun.dev").stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "ATTEMPT", "FAILURES", "INTERRUPTIONS", "CAPACITY", "CHECKPOINT", "AGE"]
    assert "t" in kubectl(cluster, "-n", namespace, "get", "spotrun").stdout  # the category


def with_template_metadata(**metadata: Any) -> Obj:
    body = good()
    body["spec"]["template"]["metadata"] = copy.deepcopy(metadata)
    return body


@pytest.mark.parametrize(
    ("field", "key"),
    [
        ("labels", "spotrun.dev/taskrun"),
        ("labels", "spotrun.dev/attempt"),
        ("annotations", "spotrun.dev/stopped-by"),
        ("annotations", "spotrun.dev/anything"),
    ],
)
def test_a_template_with_spotrun_owned_metadata_is_refused(
    crd: None, kube: Client, namespace: str, field: str, key: str
) -> None:
    body = with_template_metadata(**{field: {"team": "ml", key: "x"}})
    with pytest.raises(ApiError) as refused:
        kube.create(f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", body)
    assert refused.value.status == 422
    assert f"spec.template.metadata.{field}" in str(refused.value)
    assert "spotrun.dev/ keys are the operator's" in str(refused.value)


def test_a_template_with_its_own_labels_and_annotations_is_accepted(crd: None, kube: Client, namespace: str) -> None:
    metadata = {
        "labels": {"team": "ml", "example.com/spotrun.dev": "x", "app.kubernetes.io/name": "train"},
        "annotations": {"note": "spotrun.dev/ in a value is fine", "sub.spotrun.dev/key": "y"},
    }
    created = kube.create(
        f"/apis/spotrun.dev/v1alpha1/namespaces/{namespace}/taskruns", with_template_metadata(**metadata)
    )
    assert created["spec"]["template"]["metadata"] == metadata
