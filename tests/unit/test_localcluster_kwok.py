"""kwok nodes and the audit log without a cluster: Node objects, Stage documents, kwok's config, the audit parser."""

from __future__ import annotations

import collections
import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
from spotrun import _yaml

from localcluster import audit, kwok
from localcluster.cluster import ON_DEMAND_LABELS, SPOT_LABELS, SPOT_TAINT

Obj = dict[str, Any]


def stage(name: str) -> Obj:
    stages = {s["metadata"]["name"]: s for s in kwok.pod_stages() + kwok.node_stages()}
    return stages[name]


def selector(doc: Obj) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (e["jq"]["key"], e["jq"]["operator"], tuple(e["jq"].get("values", ())))
        for e in doc["spec"]["selector"]["matchExpressions"]
    ]


def templates(doc: Obj) -> list[str]:
    return [step["patch"]["template"] for step in doc["spec"]["steps"] if "patch" in step]


# ----- nodes --------------------------------------------------------------------------------------


def test_a_spot_kwok_node_is_labelled_and_tainted_as_the_clusters_spot_nodes() -> None:
    node = kwok.node_object("kwok-spot-1", SPOT_LABELS, [SPOT_TAINT], serial=1)
    labels = node["metadata"]["labels"]
    assert SPOT_LABELS.items() <= labels.items()
    assert labels[kwok.NODE_LABEL] == "true"
    assert labels["kubernetes.io/hostname"] == "kwok-spot-1"
    assert node["spec"]["taints"] == [SPOT_TAINT]
    assert node["status"]["capacity"] == node["status"]["allocatable"] == kwok.NODE_CAPACITY
    assert node["status"]["capacity"]["pods"] == "110"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    # No conditions: kwok writes them once it holds the node's Lease.
    assert "conditions" not in node["status"]


def test_an_on_demand_kwok_node_has_no_taint_and_its_own_resources() -> None:
    node = kwok.node_object("kwok-ondemand-1", ON_DEMAND_LABELS, [], serial=2, resources={"cpu": "4", "pods": "10"})
    assert ON_DEMAND_LABELS.items() <= node["metadata"]["labels"].items()
    assert node["spec"]["taints"] == []
    assert node["status"]["capacity"] == {"cpu": "4", "pods": "10"}


def test_each_kwok_node_has_its_own_address_and_pod_cidr() -> None:
    nodes = [kwok.node_object(f"n{i}", {}, [], serial=i) for i in (1, 2, 255, 256, 4000)]
    ips = [n["status"]["addresses"][0]["address"] for n in nodes]
    cidrs = [n["spec"]["podCIDR"] for n in nodes]
    assert len(set(ips)) == len(set(cidrs)) == len(nodes)
    assert ips[0] == "10.79.0.1"
    assert cidrs[:2] == ["10.128.1.0/24", "10.128.2.0/24"]
    assert all(n["spec"]["podCIDRs"] == [n["spec"]["podCIDR"]] for n in nodes)
    with pytest.raises(ValueError, match="serial"):
        kwok.node_object("n0", {}, [], serial=0)


def test_kwok_node_names_say_their_capacity() -> None:
    assert kwok.node_name("spot", 3) == "kwok-spot-3"
    assert kwok.node_name("on-demand", 1) == "kwok-ondemand-1"


# ----- Stages -------------------------------------------------------------------------------------


def test_no_stage_ever_touches_finalizers() -> None:
    # kwok's own pod-delete stage empties them, which no kubelet does: the Job controller and Spotrun
    # rely on their finalizer holding the pod until they counted it.
    for doc in kwok.pod_stages() + kwok.node_stages():
        assert all("finalizers" not in step for step in doc["spec"]["steps"]), doc["metadata"]["name"]
        assert "next" not in doc["spec"]
    assert "finalizers" not in json.dumps(kwok.config_documents("127.0.0.1:1"))


def test_only_an_ended_pod_being_deleted_is_deleted_and_only_once() -> None:
    deleting = [s for s in kwok.pod_stages() if any(step.get("delete") for step in s["spec"]["steps"])]
    assert [s["metadata"]["name"] for s in deleting] == ["localcluster-pod-delete"]
    assert selector(deleting[0]) == [
        (".metadata.deletionTimestamp", "Exists", ()),
        (".status.phase", "In", ("Succeeded", "Failed")),
        # The kubelet's final delete has grace 0; a pod held by a finalizer then no longer matches.
        ("(.metadata.deletionGracePeriodSeconds // 1) > 0", "In", ("true",)),
    ]
    assert deleting[0]["spec"]["steps"] == [{"delete": True}]


def test_a_scheduled_pod_starts_running_at_once() -> None:
    running = stage("localcluster-pod-running")
    assert selector(running) == [
        (".metadata.deletionTimestamp", "DoesNotExist", ()),
        (".status.phase", "In", ("Pending",)),
    ]
    assert "delay" not in running["spec"]
    (template,) = templates(running)
    for field in ("phase: Running", "startTime:", "podIP:", "hostIP:", "running:", "ready: true", "started: true"):
        assert field in template
    for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
        assert f'- type: {kind}\n  status: "True"' in template


def test_run_seconds_ends_a_pod_succeeded_or_failed_by_its_exit_code() -> None:
    succeeded, failed = stage("localcluster-pod-succeeded"), stage("localcluster-pod-failed")
    for doc in (succeeded, failed):
        keys = [key for key, _, _ in selector(doc)]
        assert f'.metadata.annotations["{kwok.RUN_SECONDS}"]' in keys
        delay = doc["spec"]["delay"]["durationFrom"]["jq"]["expression"]
        assert ".status.startTime" in delay  # from the start, not from the pod's last update
        assert kwok.RUN_SECONDS in delay
    assert (".spec.restartPolicy", "In", ("Never", "OnFailure")) in selector(succeeded)
    assert (".spec.restartPolicy", "In", ("Never",)) in selector(failed)  # OnFailure would restart it
    exit_code = f'((.metadata.annotations["{kwok.EXIT_CODE}"] // "0") | tonumber)'
    assert (f"{exit_code} == 0", "In", ("true",)) in selector(succeeded)
    assert (f"{exit_code} != 0", "In", ("true",)) in selector(failed)
    (ok,) = templates(succeeded)
    (bad,) = templates(failed)
    for field in ("phase: Succeeded", "exitCode: 0", "reason: Completed", "reason: PodCompleted"):
        assert field in ok
    for field in ("phase: Failed", "reason: Error", "reason: PodFailed"):
        assert field in bad
    assert f'index $annotations "{kwok.EXIT_CODE}" | atoi' in bad


def test_a_deleted_pod_is_terminated_by_sigterm_unless_it_had_ended() -> None:
    terminated = stage("localcluster-pod-terminated")
    assert selector(terminated) == [
        (".metadata.deletionTimestamp", "Exists", ()),
        (".status.phase", "NotIn", ("Succeeded", "Failed")),
    ]
    (template,) = templates(terminated)
    for field in ("exitCode: 143", "reason: Error", "phase: Failed"):
        assert field in template
    # The final delete follows at once, without waiting for the watch to bring the pod back.
    assert terminated["spec"]["immediateNextStage"] is True


def test_stage_templates_are_balanced() -> None:
    opening = re.compile(r"\{\{-?\s*(if|with|range)\b")
    for doc in kwok.pod_stages() + kwok.node_stages():
        for template in templates(doc):
            assert template.count("{{") == template.count("}}"), doc["metadata"]["name"]
            assert len(opening.findall(template)) == len(re.findall(r"\{\{-?\s*end\s*-?\}\}", template))
            assert "\t" not in template


def test_nodes_become_ready_with_a_kubelets_conditions() -> None:
    ready = stage("localcluster-node-ready")
    (template,) = templates(ready)
    for kind in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready"):
        assert f"- type: {kind}" in template
    assert "reason: KubeletReady" in template
    assert "phase: Running" in template
    heartbeat = stage("localcluster-node-heartbeat")
    assert heartbeat["spec"]["delay"]["durationMilliseconds"] >= 60_000  # the Lease is the heartbeat


def test_kwok_manages_only_kwok_nodes_and_gets_every_default_it_needs() -> None:
    options = kwok.configuration("127.0.0.1:9")["options"]
    assert options["manageNodesWithLabelSelector"] == f"{kwok.NODE_LABEL}=true"
    assert "manageAllNodes" not in options or options["manageAllNodes"] is False
    # With a config file kwok applies none of its defaults; a zero parallelism stops it at start.
    for key in ("podPlayStageParallelism", "nodePlayStageParallelism", "nodeLeaseParallelism"):
        assert options[key] > 0
    # Renewed every quarter of the duration, well inside the controller-manager's 10 s grace.
    assert options["nodeLeaseDurationSeconds"] / 4 < 10 / 2
    argv = kwok.argv("/bin/kwok", "/s/kwok.yaml", "/s/kubeconfig")
    assert {"--config=/s/kwok.yaml", "--kubeconfig=/s/kubeconfig"} <= set(argv)


def test_the_kwok_config_reads_back_as_written() -> None:
    yaml = pytest.importorskip("yaml")
    documents = kwok.config_documents("127.0.0.1:1234")
    text = kwok.config_text("127.0.0.1:1234")
    assert list(yaml.safe_load_all(text)) == documents
    assert "template: |" in text  # templates stay readable as literal blocks


def test_yaml_text_quotes_what_yaml_would_read_otherwise() -> None:
    yaml = pytest.importorskip("yaml")
    tricky: Obj = {
        "words": ["true", "no", "null", "On", "1", "1.5", "", "a: b", "- x", "#c", "plain-word", "v1"],
        "numbers": [0, 1.5, -3],
        "flags": [True, False, None],
        "text": "line one\nline two\n",
        "no-newline": "a\nb",
        "kept": "a\n\n",
        "trailing space": "a \nb",
        "empty": {},
        "none": [],
        "nested": [{"a": 1, "b": [{"c": "d"}]}],
    }
    assert yaml.safe_load(_yaml.dump_all([tricky])) == tricky


# ----- audit --------------------------------------------------------------------------------------


def test_audit_policy_logs_metadata_once_per_request_without_heartbeats() -> None:
    policy = audit.POLICY
    assert (policy["apiVersion"], policy["kind"]) == ("audit.k8s.io/v1", "Policy")
    assert set(policy["omitStages"]) == {"RequestReceived", "ResponseStarted"}
    *quiet, last = policy["rules"]
    assert last == {"level": "Metadata"}
    assert all(rule["level"] == "None" for rule in quiet)
    leases = next(r for r in quiet if "resources" in r and r["resources"][0]["resources"] == ["leases"])
    assert set(leases["namespaces"]) == {"kube-node-lease", "kube-system"}
    assert any("/healthz*" in r.get("nonResourceURLs", []) for r in quiet)
    assert "level: Metadata" in audit.policy_text()


def test_audit_flags_name_the_policy_and_the_log() -> None:
    flags = audit.apiserver_flags(Path("/s/policy.yaml"), Path("/s/logs/audit.log"))
    assert "--audit-policy-file=/s/policy.yaml" in flags
    assert "--audit-log-path=/s/logs/audit.log" in flags
    assert "--audit-log-format=json" in flags


OPERATOR = "system:serviceaccount:spotrun-system:spotrun-operator"


def event(n: int, verb: str, user: str, at: str, resource: str | None = "pods", **ref: str) -> str:
    body: Obj = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"id-{n}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/t/{resource}?watch=true" if resource else "/apis?timeout=32s",
        "verb": verb,
        "user": {"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]},
        "requestReceivedTimestamp": at,
        "stageTimestamp": at,
    }
    if resource:
        body["objectRef"] = {"resource": resource, "namespace": "t", "apiVersion": "v1", **ref}
    return json.dumps(body, separators=(",", ":"))


@pytest.fixture
def audit_log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    lines = [
        event(1, "create", OPERATOR, "2026-12-01T10:00:00.000001Z"),
        event(2, "watch", OPERATOR, "2026-12-01T10:00:01.5Z"),
        event(3, "patch", OPERATOR, "2026-12-01T10:00:02Z", subresource="status"),
        event(4, "get", OPERATOR, "2026-12-01T10:00:03Z", resource=None),
        event(5, "list", "system:serviceaccount:spotrun-system:other", "2026-12-01T10:00:03Z"),
        event(6, "list", f"{OPERATOR}-2", "2026-12-01T10:00:03Z"),  # a longer name, not this user
        event(1, "create", OPERATOR, "2026-12-01T10:00:00.000001Z"),  # the same request twice
        event(7, "delete", OPERATOR, "2026-12-01T10:00:09Z", resource="taskruns", apiGroup="spotrun.dev"),
        '{"kind":"Event","auditID":"id-8","user":{"username":"' + OPERATOR,  # being written
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_requests_counts_one_users_requests_by_verb_and_resource(audit_log: Path) -> None:
    counts = audit.requests(audit_log, OPERATOR)
    assert counts == collections.Counter(
        {
            ("create", "pods"): 1,
            ("watch", "pods"): 1,
            ("patch", "pods/status"): 1,
            ("get", "/apis"): 1,
            ("delete", "taskruns"): 1,
        }
    )
    assert counts.total() == 5
    assert audit.requests(audit_log, "nobody") == collections.Counter()


def test_requests_counts_only_the_window_asked_for(audit_log: Path) -> None:
    start = datetime.datetime(2026, 12, 1, 10, 0, 1, tzinfo=datetime.UTC)
    assert audit.requests(audit_log, OPERATOR, since=start).total() == 4  # the watch received at 10:00:01.5 on
    assert audit.requests(audit_log, OPERATOR, since=start.timestamp() + 1, until=start.timestamp() + 8).total() == 2
    assert audit.requests(audit_log, OPERATOR, until=start).total() == 1  # until is exclusive
    with pytest.raises(ValueError, match="time zone"):
        audit.requests(audit_log, OPERATOR, since=datetime.datetime(2026, 12, 1))
