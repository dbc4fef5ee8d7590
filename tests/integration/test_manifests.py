"""`kubectl apply -k manifests/...` installs a working Spotrun: the operator runs as a pod, as its ServiceAccount."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import REPO, SECRET, create_taskrun, kubectl, steps_taskrun, wait_phase

pytestmark = pytest.mark.integration
OVERLAYS = ["gke", "eks", "karpenter", "aks"]
Obj = dict[str, Any]


@pytest.mark.parametrize("profile", OVERLAYS)
def test_each_overlay_sets_its_capacity_profile(cluster: Cluster, profile: str) -> None:
    rendered = kubectl(cluster, "kustomize", str(REPO / "manifests" / "overlays" / profile)).stdout
    assert f"SPOTRUN_CAPACITY_PROFILE: {profile}" in rendered
    assert "kind: CustomResourceDefinition" in rendered


def test_apply_k_runs_the_operator_in_cluster(
    cluster: Cluster, kube: Client, namespace: str, no_other_operator: None
) -> None:
    kubectl(cluster, "apply", "-k", str(REPO / "manifests" / "base"))
    env = cluster.env_vars()
    aws = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in aws.items()}
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": SECRET}, "data": encoded})
    secrets = "/api/v1/namespaces/spotrun-system/secrets"
    kubectl(cluster, "-n", "spotrun-system", "delete", "secret", "spotrun-operator-s3", "--ignore-not-found")
    kube.create(secrets, {"metadata": {"name": "spotrun-operator-s3"}, "data": encoded})
    kube.merge_patch(
        "/api/v1/namespaces/spotrun-system/configmaps/spotrun-operator",
        {
            "data": {
                "SPOTRUN_CHECKPOINT_PREFIX": f"s3://{env['LOCALCLUSTER_BUCKET']}/in-cluster/",
                "SPOTRUN_CHECKPOINT_SECRET": SECRET,
            }
        },
    )
    kubectl(cluster, "-n", "spotrun-system", "rollout", "restart", "deployment/spotrun-operator")
    try:
        deployment = "/apis/apps/v1/namespaces/spotrun-system/deployments/spotrun-operator"
        wait_for(
            lambda: (
                (d := kube.get(deployment)).get("status", {}).get("updatedReplicas") == 2
                and d["status"].get("availableReplicas") == 2
                and d["status"].get("replicas") == 2
            ),
            120,
            "the operator Deployment to be available",
        )
        # The replicas from before the restart ran with the ConfigMap before the patch: none of them
        # may still be the leader (one that is ending can still be) when the TaskRun comes.
        pods = "/api/v1/namespaces/spotrun-system/pods"
        lease_path = "/apis/coordination.k8s.io/v1/namespaces/spotrun-system/leases/spotrun-operator"

        def restarted_leader() -> bool:
            items = kube.get(pods, labelSelector="app.kubernetes.io/name=spotrun-operator")["items"]
            names = {p["metadata"]["name"] for p in items}
            holder = (kube.get(lease_path)["spec"].get("holderIdentity") or "").rsplit("_", 1)[0]
            return (
                len(items) == 2 and not any(p["metadata"].get("deletionTimestamp") for p in items) and holder in names
            )

        wait_for(restarted_leader, 120, "the old replicas to be gone and a new one to lead")
        create_taskrun(kube, namespace, steps_taskrun("in-cluster", steps=3, step_seconds=0.1))
        final = wait_phase(kube, namespace, "in-cluster", "Succeeded", "Failed")
        assert final["phase"] == "Succeeded", (final.get("message"), final.get("attempts"))
        assert final["checkpoint"]["uri"] == f"s3://{env['LOCALCLUSTER_BUCKET']}/in-cluster/{namespace}/in-cluster/"
        # The leader did it: the Lease names its pod (the standby's log only says it stands by).
        lease = kube.get("/apis/coordination.k8s.io/v1/namespaces/spotrun-system/leases/spotrun-operator")
        leader = lease["spec"]["holderIdentity"].rsplit("_", 1)[0]
        logs = kubectl(cluster, "-n", "spotrun-system", "logs", leader).stdout
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any("in-cluster" in line["message"] for line in lines)  # JSON logs, naming the TaskRun
        pod = kube.get(
            "/api/v1/namespaces/spotrun-system/pods", labelSelector="app.kubernetes.io/name=spotrun-operator"
        )
        assert pod["items"][0]["spec"]["serviceAccountName"] == "spotrun-operator"
    finally:
        # Leave the CRD and RBAC; stop the in-cluster operator so that it does not race other tests'.
        kubectl(cluster, "-n", "spotrun-system", "delete", "deployment", "spotrun-operator", "--wait=true")
        # Its pods outlive the Deployment by their shutdown: the next test's operator must not meet them.
        wait_for(
            lambda: (
                not kube.get(
                    "/api/v1/namespaces/spotrun-system/pods", labelSelector="app.kubernetes.io/name=spotrun-operator"
                )["items"]
            ),
            90,
            "the in-cluster operator's pods to be gone",
        )


def kustomized(cluster: Cluster, directory: str) -> list[Obj]:
    out = kubectl(cluster, "kustomize", str(REPO / "manifests" / directory)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def rules_for(obj: Obj, resource: str) -> list[Obj]:
    return [rule for rule in obj.get("rules", []) if resource in rule.get("resources", [])]


def test_the_namespaced_overlay_grants_pod_rights_only_in_the_watched_namespace(cluster: Cluster) -> None:
    objects = kustomized(cluster, "overlays/namespaced")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "spotrun-operator")
    watched = config["data"]["SPOTRUN_NAMESPACES"].split(",")
    assert watched
    assert all(watched)
    operator_role = next(
        o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "spotrun-operator"
    )
    for resource in ("pods", "taskruns", "events"):
        assert not rules_for(operator_role, resource), f"cluster-wide {resource} rights in the namespaced overlay"
    # The nodes' cache lists and watches (without watch it stays as it was at start).
    assert {"list", "watch"} <= set(rules_for(operator_role, "nodes")[0]["verbs"])
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "spotrun-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    assert all(rules_for(r, "pods") and rules_for(r, "taskruns/status") for r in roles)
    assert all({"create", "get"} <= set(rules_for(r, "services")[0]["verbs"]) for r in roles)  # gangs
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "spotrun-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    base = next(o for o in kustomized(cluster, "base") if o["kind"] == "ConfigMap")
    assert base["data"]["SPOTRUN_NAMESPACES"] == ""  # the knob, empty: the whole cluster


def test_the_manifests_aggregate_taskrun_rights_into_edit_admin_and_view(cluster: Cluster) -> None:
    objects = kustomized(cluster, "base")
    labelled = {
        label: o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ClusterRole"
        for label, value in o["metadata"].get("labels", {}).items()
        if label.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true"
    }
    assert set(labelled) == {f"rbac.authorization.k8s.io/aggregate-to-{r}" for r in ("edit", "admin", "view")}
    view = next(o for o in objects if o["metadata"]["name"] == labelled["rbac.authorization.k8s.io/aggregate-to-view"])
    assert set(rules_for(view, "taskruns")[0]["verbs"]) == {"get", "list", "watch"}


def test_the_operator_is_ready_only_while_its_watch_caches_are(cluster: Cluster) -> None:
    deployment = next(o for o in kustomized(cluster, "base") if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
