"""`kubectl apply -k manifests/...` installs a working Spotrun: the operator runs as a pod, as its ServiceAccount."""

from __future__ import annotations

import base64
import json

import pytest

from localcluster.cluster import Cluster
from localcluster.kube import Client
from tests.integration.helpers import wait_for
from tests.integration.operator_fixtures import REPO, SECRET, create_taskrun, kubectl, steps_taskrun, wait_phase

pytestmark = pytest.mark.integration
OVERLAYS = ["gke", "eks", "karpenter", "aks"]


@pytest.mark.parametrize("profile", OVERLAYS)
def test_each_overlay_sets_its_capacity_profile(cluster: Cluster, profile: str) -> None:
    rendered = kubectl(cluster, "kustomize", str(REPO / "manifests" / "overlays" / profile)).stdout
    assert f"SPOTRUN_CAPACITY_PROFILE: {profile}" in rendered
    assert "kind: CustomResourceDefinition" in rendered


def test_apply_k_runs_the_operator_in_cluster(cluster: Cluster, kube: Client, namespace: str) -> None:
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
                (d := kube.get(deployment)).get("status", {}).get("updatedReplicas") == 1
                and d["status"].get("availableReplicas") == 1
                and d["status"].get("replicas") == 1
            ),
            120,
            "the operator Deployment to be available",
        )
        create_taskrun(kube, namespace, steps_taskrun("in-cluster", steps=3, step_seconds=0.1))
        final = wait_phase(kube, namespace, "in-cluster", "Succeeded", "Failed")
        assert final["phase"] == "Succeeded"
        assert final["checkpoint"]["uri"] == f"s3://{env['LOCALCLUSTER_BUCKET']}/in-cluster/{namespace}/in-cluster/"
        logs = kubectl(cluster, "-n", "spotrun-system", "logs", "deployment/spotrun-operator").stdout
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any("in-cluster" in line["message"] for line in lines)  # JSON logs, naming the TaskRun
        pod = kube.get(
            "/api/v1/namespaces/spotrun-system/pods", labelSelector="app.kubernetes.io/name=spotrun-operator"
        )
        assert pod["items"][0]["spec"]["serviceAccountName"] == "spotrun-operator"
    finally:
        # Leave the CRD and RBAC; stop the in-cluster operator so that it does not race other tests'.
        kubectl(cluster, "-n", "spotrun-system", "delete", "deployment", "spotrun-operator", "--wait=true")
