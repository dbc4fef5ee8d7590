"""The Helm chart: lint, template, its CRD identical to manifests', and a real install on the local cluster."""

from __future__ import annotations

import base64
import os
import subprocess
from typing import Any

import pytest
import yaml

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import REPO, SECRET, create_taskrun, kubectl, steps_taskrun, wait_phase

pytestmark = pytest.mark.integration
CHART = REPO / "charts" / "spotrun"
Obj = dict[str, Any]


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cluster.env_vars(), "HELM_CACHE_HOME": str(cluster.dir / "helm")}
    return subprocess.run(
        [str(cluster.dir / "bin" / "helm"), *args], env=env, capture_output=True, text=True, timeout=300, check=check
    )


def test_the_charts_crd_is_byte_identical_to_the_manifests() -> None:
    chart_crd = (CHART / "crds" / "taskruns.spotrun.dev.yaml").read_bytes()
    assert chart_crd == (REPO / "manifests" / "crd" / "taskruns.spotrun.dev.yaml").read_bytes()


def test_helm_lint_and_template(cluster: Cluster) -> None:
    lint = helm(cluster, "lint", str(CHART), "--strict", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = helm(cluster, "template", "t", str(CHART), "--set", "capacityProfile=karpenter").stdout
    assert 'SPOTRUN_CAPACITY_PROFILE: "karpenter"' in rendered
    assert "ServiceMonitor" not in rendered
    monitored = helm(cluster, "template", "t", str(CHART), "--set", "metrics.serviceMonitor.enabled=true").stdout
    assert "kind: ServiceMonitor" in monitored
    refused = helm(cluster, "template", "t", str(CHART), "--set", "capacityProfile=cheap", check=False)
    assert refused.returncode != 0
    assert "capacityProfile must be one of generic, gke, eks, karpenter, aks" in refused.stderr


def test_helm_install_runs_the_operator_in_cluster(
    cluster: Cluster, kube: Client, namespace: str, no_other_operator: None
) -> None:
    env = cluster.env_vars()
    aws = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    data = {k: base64.b64encode(v.encode()).decode() for k, v in aws.items()}
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": SECRET}, "data": data})
    release_ns = f"{namespace}-spotrun"
    kube.create("/api/v1/namespaces", {"metadata": {"name": release_ns}})
    kube.create(f"/api/v1/namespaces/{release_ns}/secrets", {"metadata": {"name": "operator-s3"}, "data": data})
    try:
        helm(
            cluster,
            "install",
            "spotrun",
            str(CHART),
            "--namespace",
            release_ns,
            "--set",
            f"checkpoint.prefix=s3://{env['LOCALCLUSTER_BUCKET']}/helm/",
            "--set",
            f"checkpoint.secret={SECRET}",
            "--set",
            "operatorS3Secret=operator-s3",
            "--set",
            f"watchNamespaces={{{namespace}}}",
        )
        deployment = f"/apis/apps/v1/namespaces/{release_ns}/deployments/spotrun-operator"
        # Two replicas by default: one leads (its pod's name holds the Lease), one stands by.
        wait_for(lambda: kube.get(deployment).get("status", {}).get("availableReplicas") == 2, 120, "the operator")
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{release_ns}/leases/spotrun-operator"
        leader = wait_for(lambda: kube.get(lease)["spec"].get("holderIdentity"), 60, "a leader")
        replicas = [p["metadata"]["name"] for p in kube.get(f"/api/v1/namespaces/{release_ns}/pods")["items"]]
        assert any(leader.startswith(f"{name}_") for name in replicas), (leader, replicas)
        assert kube.get(f"/apis/policy/v1/namespaces/{release_ns}/poddisruptionbudgets/spotrun-operator")
        create_taskrun(kube, namespace, steps_taskrun("by-helm", steps=3, step_seconds=0.1))
        final = wait_phase(kube, namespace, "by-helm", "Succeeded", "Failed")
        assert final["phase"] == "Succeeded"
        assert final["checkpoint"]["uri"].startswith(f"s3://{env['LOCALCLUSTER_BUCKET']}/helm/")
        assert final["checkpoint"]["attempt"] == 1  # the operator read the manifest with its own secret
        pods = kube.get(f"/api/v1/namespaces/{release_ns}/pods")["items"]
        assert pods[0]["spec"]["serviceAccountName"] == "spotrun-operator"
    finally:
        helm(cluster, "uninstall", "spotrun", "--namespace", release_ns, "--wait", check=False)
        kubectl(cluster, "delete", "namespace", release_ns, "--wait=false", check=False)


def rendered_objects(cluster: Cluster, *values: str) -> list[Obj]:
    """`helm template` of the chart, parsed: one dict per object."""
    args = [arg for value in values for arg in ("--set", value)]
    out = helm(cluster, "template", "t", str(CHART), "--namespace", "spotrun-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def rules_for(obj: Obj, resource: str) -> list[Obj]:
    return [rule for rule in obj.get("rules", []) if resource in rule.get("resources", [])]


def test_watching_namespaces_grants_pod_rights_only_in_them(cluster: Cluster) -> None:
    objects = rendered_objects(cluster, "watchNamespaces={team-a,team-b}")
    operator_role = next(
        o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].startswith("spotrun-operator")
    )
    for resource in ("pods", "taskruns", "taskruns/status", "events"):
        assert not rules_for(operator_role, resource), f"cluster-wide {resource} rights while watching namespaces"
    assert rules_for(operator_role, "nodes")
    assert rules_for(operator_role, "namespaces")
    roles = {
        o["metadata"]["namespace"]: o
        for o in objects
        if o["kind"] == "Role" and o["metadata"]["name"] == "spotrun-operator"
    }
    assert set(roles) == {"team-a", "team-b"}
    for role in roles.values():
        assert {"create", "delete", "patch", "watch"} <= set(rules_for(role, "pods")[0]["verbs"])
        assert rules_for(role, "taskruns")
        assert rules_for(role, "taskruns/status")
        assert rules_for(role, "events")
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "spotrun-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "spotrun-operator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "spotrun-operator", "namespace": "spotrun-system"}
        ]
    refused = helm(cluster, "template", "t", str(CHART), "--set", "watchNamespaces={team-*}", check=False)
    assert refused.returncode != 0
    assert "watchNamespaces" in refused.stderr


def test_watching_every_namespace_keeps_one_cluster_role(cluster: Cluster) -> None:
    objects = rendered_objects(cluster)
    roles = [
        o
        for o in objects
        if o["kind"] in ("Role", "RoleBinding") and "helm.sh/hook" not in o["metadata"].get("annotations", {})
    ]
    # Only the leader Lease's, in the release namespace, and only for Leases.
    assert {(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in roles} == {
        ("Role", "spotrun-operator-leader", "spotrun-system"),
        ("RoleBinding", "spotrun-operator-leader", "spotrun-system"),
    }
    leader = next(o for o in roles if o["kind"] == "Role")
    assert {resource for rule in leader["rules"] for resource in rule["resources"]} == {"leases"}
    operator_role = next(
        o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].startswith("spotrun-operator")
    )
    assert rules_for(operator_role, "pods")
    assert rules_for(operator_role, "taskruns")


def test_namespace_edit_admin_and_view_users_get_taskrun_rights(cluster: Cluster) -> None:
    objects = rendered_objects(cluster)
    aggregated = {
        label: o
        for o in objects
        if o["kind"] == "ClusterRole"
        for label, value in o["metadata"].get("labels", {}).items()
        if label.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true"
    }
    assert set(aggregated) == {f"rbac.authorization.k8s.io/aggregate-to-{r}" for r in ("edit", "admin", "view")}
    edit = aggregated["rbac.authorization.k8s.io/aggregate-to-edit"]
    assert edit is aggregated["rbac.authorization.k8s.io/aggregate-to-admin"]
    assert {"create", "delete", "get", "list", "patch", "update", "watch"} <= set(
        rules_for(edit, "taskruns")[0]["verbs"]
    )
    view = aggregated["rbac.authorization.k8s.io/aggregate-to-view"]
    assert set(rules_for(view, "taskruns")[0]["verbs"]) == {"get", "list", "watch"}
    assert not rules_for(edit, "taskruns/status") or "update" not in rules_for(edit, "taskruns/status")[0]["verbs"]


def test_uninstall_runs_a_pre_delete_cleanup_job_as_the_operator(cluster: Cluster) -> None:
    objects = rendered_objects(cluster, "watchNamespaces={team-a}", "image.tag=9.9.9")
    hooks = [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "pre-delete"]
    job = next(o for o in hooks if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "spotrun-operator"
    assert pod["containers"][0]["image"] == "ghcr.io/spotrun/spotrun:9.9.9"
    assert pod["containers"][0]["args"][0] == "uninstall-cleanup"
    # Its pod must not match the operator's selector, or it would wait for itself to go.
    operator = next(o for o in objects if o["kind"] == "Deployment")
    selector = operator["spec"]["selector"]["matchLabels"].items()
    assert not selector <= job["spec"]["template"]["metadata"]["labels"].items()
    # The hook's own rights exist before the Job starts (lower weight) and go when it succeeds.
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hooks}
    assert weights["Role"] < weights["Job"]
    assert weights["RoleBinding"] < weights["Job"]
    assert all("hook-succeeded" in o["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for o in hooks)
    assert not [o for o in objects if o["kind"] == "Job" and o not in hooks]
    disabled = rendered_objects(cluster, "uninstallCleanup.enabled=false")
    assert not [o for o in disabled if o["kind"] == "Job"]


def test_the_charts_operator_is_ready_only_while_its_watch_caches_are(cluster: Cluster) -> None:
    deployment = next(o for o in rendered_objects(cluster) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
